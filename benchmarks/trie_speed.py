"""SemanticIdTrie on a 1M-item catalog: batched allowed-token masks, build time and memory, against a
dict-of-dicts trie in the same run.

    python benchmarks/trie_speed.py                      # the record: 1,000,000 items
    python benchmarks/trie_speed.py --items 20000        # a quick smoke run (set SEMID_BENCH_RESULTS)

Set-up (not measured): seeded synthetic IDs shaped like semid's (3 levels x 256 codes + a dedup digit of
256): level-1 codes Zipf-skewed (s = 1.1 over a random permutation of the codes), each deeper code drawn
from its own skewed distribution permuted per parent prefix, so popular prefixes are crowded; items
sharing a base code get dedup digits 0, 1, 2 ... in order (items beyond 256 in one bucket are dropped
and replaced by fresh draws).

Measured (time.perf_counter, after one warm-up call):

* build: `SemanticIdTrie.from_semantic_ids(sids, item_ids, sizes)` and the dict-of-dicts trie
  (`{c1: {c2: {c3: {d: item}}}}`), seconds; memory held after the build and peak during it, by
  tracemalloc (a second build under tracing; numpy reports its buffers to tracemalloc).
* `allowed_next_batch` on batches of 256 beams at every depth 0..4 (prefixes of real IDs, so every
  beam is live; depth 4 is a complete ID, whose mask is the end token): prefixes/s over --batches
  batches per depth (the median of 3 passes), numpy in/out and torch in/out. Bar: >= 1,000,000
  prefixes/s at every depth.
  The dict-of-dicts trie answers the same batches with a per-beam Python loop (fewer batches); the
  masks of both are compared on every batch it answers.
* `items_of` on batches of 256 full IDs, IDs/s; `save`/`load`, seconds and file size.

Writes benchmarks/results/trie_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import markdown_table, write_results  # noqa: E402
from semid.service.generation.trie import SemanticIdTrie  # noqa: E402

LEVELS, K = 3, 256
SIZES = (K,) * (LEVELS + 1)
BEAMS = 256
BAR_PREFIXES_PER_S = 1_000_000
COLUMNS = ["trie", "input", "depth", "batches", "prefixes_per_s", "us_per_batch", "mean_allowed", "bar", "met"]


# --- synthetic catalog -----------------------------------------------------------------------------------------


def skewed_codes(rng: np.random.Generator, n: int, parent: np.ndarray, s: float) -> np.ndarray:
    """A Zipf(s)-ranked code per row, the rank -> code order permuted per parent prefix."""
    weights = 1.0 / np.arange(1, K + 1) ** s
    ranks = rng.choice(K, size=n, p=weights / weights.sum())
    salt = (parent * 0x9E3779B1 + 0x7F4A7C15) % (1 << 31)  # a per-parent offset and stride (odd: a permutation)
    return (salt % K + ranks * (2 * (salt // K % (K // 2)) + 1)) % K


def synthetic_ids(items: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((0, LEVELS + 1), dtype=np.int64)
    while out.shape[0] < items:
        n = int((items - out.shape[0]) * 1.05) + 1000
        base = np.zeros((n, LEVELS), dtype=np.int64)
        key = np.zeros(n, dtype=np.int64)
        for level, s in enumerate((1.1, 0.9, 0.7)):
            base[:, level] = skewed_codes(rng, n, key, s)
            key = key * K + base[:, level]
        base = np.vstack([out[:, :LEVELS], base])
        key = np.zeros(base.shape[0], dtype=np.int64)
        for level in range(LEVELS):
            key = key * K + base[:, level]
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        run_start = np.r_[0, np.flatnonzero(sorted_key[1:] != sorted_key[:-1]) + 1]
        rank = np.arange(key.shape[0]) - np.repeat(run_start, np.diff(np.r_[run_start, key.shape[0]]))
        dedup = np.empty_like(rank)
        dedup[order] = rank
        keep = dedup < K
        out = np.c_[base, dedup][keep]
    return out[:items]


# --- the dict-of-dicts baseline --------------------------------------------------------------------------------


def dict_trie(sids: np.ndarray, items: np.ndarray) -> dict:
    root: dict = {}
    for sid, item in zip(sids.tolist(), items.tolist(), strict=True):
        node = root
        for code in sid[:-1]:
            node = node.setdefault(code, {})
        node[sid[-1]] = item
    return root


def dict_allowed_batch(root: dict, prefixes: np.ndarray, width: int) -> np.ndarray:
    mask = np.zeros((prefixes.shape[0], K + 1), dtype=bool)
    for row, prefix in enumerate(prefixes.tolist()):
        node = root
        for code in prefix:
            node = node.get(code) if isinstance(node, dict) else None
            if node is None:
                break
        if node is None:
            continue
        if len(prefix) == width:
            mask[row, K] = True
        else:
            mask[row, list(node)] = True
    return mask


# --- measurements ----------------------------------------------------------------------------------------------


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def traced(fn, *args) -> tuple[float, float]:
    """(MB held after ``fn`` returns, peak MB during it), by tracemalloc; the result is dropped after."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    value = fn(*args)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del value
    gc.collect()
    return (held - base) / 1e6, (peak - base) / 1e6


def mask_rate(fn, batches: list, rounds: int = 3) -> tuple[float, float, object]:
    """(prefixes/s, us per batch, the last result) of ``fn`` over ``batches``: the median of ``rounds`` passes
    (the machine is shared; one pass can be slowed by a neighbour)."""
    fn(batches[0])  # warm-up
    passes = []
    for _ in range(rounds):
        start = time.perf_counter()
        for batch in batches:
            last = fn(batch)
        passes.append(time.perf_counter() - start)
    seconds = float(np.median(passes))
    return len(batches) * BEAMS / seconds, seconds / len(batches) * 1e6, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=400, help="batches of 256 beams per depth (arrays)")
    parser.add_argument("--dict-batches", type=int, default=20, help="batches per depth for the dict trie")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-dict", action="store_true", help="leave out the dict-of-dicts baseline")
    args = parser.parse_args()
    import torch

    load_before = os.getloadavg()  # the machine may be shared: its load is part of the record
    sids = synthetic_ids(args.items, args.seed)
    item_ids = np.arange(sids.shape[0], dtype=np.int64) * 3 + 1_000_000
    base_keys = np.unique(sids[:, :LEVELS], axis=0, return_counts=True)[1]
    catalog = {
        "items": int(sids.shape[0]),
        "layout": f"{LEVELS} x {K} + dedup {K}",
        "distinct_level1": int(np.unique(sids[:, 0]).shape[0]),
        "distinct_base_codes": int(base_keys.shape[0]),
        "largest_bucket": int(base_keys.max()),
        "collision_rate": round(1 - base_keys.shape[0] / sids.shape[0], 4),
        "top_level1_share": round(float(np.bincount(sids[:, 0], minlength=K).max() / sids.shape[0]), 4),
    }
    print(f"catalog: {catalog}", flush=True)

    trie, build_s = timed(SemanticIdTrie.from_semantic_ids, sids, item_ids, SIZES)
    held_mb, peak_mb = traced(lambda: SemanticIdTrie.from_semantic_ids(sids, item_ids, sizes=SIZES))
    build_rows = [
        {
            "trie": "SemanticIdTrie (arrays)",
            "build_s": build_s,
            "held_mb": held_mb,
            "peak_mb": peak_mb,
            "nbytes_mb": trie.nbytes() / 1e6,
        }
    ]
    print(f"arrays: build {build_s:.2f}s, held {held_mb:.1f} MB, peak {peak_mb:.1f} MB", flush=True)
    root = None
    if not args.skip_dict:
        root, dict_build_s = timed(dict_trie, sids, item_ids)
        dict_held, dict_peak = traced(dict_trie, sids, item_ids)
        build_rows.append(
            {"trie": "dict of dicts", "build_s": dict_build_s, "held_mb": dict_held, "peak_mb": dict_peak}
        )
        print(f"dicts: build {dict_build_s:.2f}s, held {dict_held:.1f} MB, peak {dict_peak:.1f} MB", flush=True)

    rng = np.random.default_rng(args.seed + 1)
    rows = []
    for depth in range(LEVELS + 2):
        batches = [sids[rng.integers(0, sids.shape[0], BEAMS), :depth].copy() for _ in range(args.batches)]
        tensors = [torch.from_numpy(b) for b in batches]
        for name, data, fn in (
            ("numpy", batches, trie.allowed_next_batch),
            ("torch", tensors, trie.allowed_next_batch),
        ):
            rate, us, last = mask_rate(fn, data)
            allowed = np.asarray(last).sum(axis=1)
            assert allowed.min() >= 1, "a live beam got an empty set"
            rows.append(
                {
                    "trie": "arrays",
                    "input": name,
                    "depth": depth,
                    "batches": len(data),
                    "prefixes_per_s": rate,
                    "us_per_batch": us,
                    "mean_allowed": float(allowed.mean()),
                    "bar": BAR_PREFIXES_PER_S,
                    "met": rate >= BAR_PREFIXES_PER_S,
                }  # fmt: skip
            )
            print(f"depth {depth} {name}: {rate:,.0f} prefixes/s ({us:.0f} us per batch)", flush=True)
        if root is not None:
            few = batches[: args.dict_batches]
            rate, us, _ = mask_rate(lambda b: dict_allowed_batch(root, b, LEVELS + 1), few)
            for batch in few:  # the two tries agree on every batch the dict trie answered
                assert np.array_equal(dict_allowed_batch(root, batch, LEVELS + 1), trie.allowed_next_batch(batch))
            rows.append(
                {
                    "trie": "dict of dicts",
                    "input": "numpy",
                    "depth": depth,
                    "batches": len(few),
                    "prefixes_per_s": rate,
                    "us_per_batch": us,
                    "bar": "",
                    "met": "",
                }  # fmt: skip
            )
            print(f"depth {depth} dicts: {rate:,.0f} prefixes/s", flush=True)

    picks = [rng.integers(0, sids.shape[0], BEAMS) for _ in range(args.batches)]
    items_rate, _, _ = mask_rate(trie.items_of, [sids[p] for p in picks])
    assert np.array_equal(trie.items_of(sids[picks[0]]), item_ids[picks[0]])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trie.npz"
        _, save_s = timed(trie.save, path)
        loaded, load_s = timed(SemanticIdTrie.load, path)
        file_mb = path.stat().st_size / 1e6
    assert len(loaded) == len(trie)
    files = {"save_s": save_s, "load_s": load_s, "file_mb": file_mb, "items_of_ids_per_s": items_rate}
    print(f"files: {files}", flush=True)

    array_rows = [r for r in rows if r["trie"] == "arrays"]
    slowest = min(array_rows, key=lambda r: r["prefixes_per_s"])
    dict_rows = {r["depth"]: r["prefixes_per_s"] for r in rows if r["trie"] == "dict of dicts"}
    numpy_rows = {r["depth"]: r["prefixes_per_s"] for r in array_rows if r["input"] == "numpy"}
    speedup = {d: numpy_rows[d] / dict_rows[d] for d in dict_rows}
    met = all(r["met"] for r in array_rows)
    summary = (
        f"Slowest `allowed_next_batch` case: {slowest['prefixes_per_s']:,.0f} prefixes/s "
        f"(depth {slowest['depth']}, {slowest['input']} input); the bar of {BAR_PREFIXES_PER_S:,} prefixes/s is "
        f"{'met' if met else 'NOT met'} at every depth and input."
    )
    if speedup:
        summary += (
            f" Against the dict-of-dicts trie (per-beam Python loop), the arrays are "
            f"{min(speedup.values()):.0f}x to {max(speedup.values()):.0f}x faster per batch."
        )
    markdown = "\n\n".join(
        [
            f"Catalog: {catalog}",
            f"Load average (1, 5, 15 min) at start {load_before}, at end {os.getloadavg()} on {os.cpu_count()} CPUs.",
            summary,
            "## Build and memory\n\n"
            + markdown_table(build_rows, ["trie", "build_s", "held_mb", "peak_mb", "nbytes_mb"]),
            f"## allowed_next_batch, {BEAMS} beams per batch\n\n" + markdown_table(rows, COLUMNS),
            "## Files and item look-up\n\n" + markdown_table([files], list(files)),
        ]
    )
    out = write_results(
        "trie_speed",
        {
            "catalog": catalog,
            "build": build_rows,
            "allowed_next_batch": rows,
            "files": files,
            "summary": summary,
            "bar_met": met,
        },  # fmt: skip
        markdown,
    )
    print(summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
