"""`semid assign` on a large synthetic catalog, end to end, and in-process prefix look-ups on the index it wrote.

    python benchmarks/assign_speed.py                         # the full figure: 1,000,000 x 384
    python benchmarks/assign_speed.py --items 20000           # a quick smoke run
    python benchmarks/assign_speed.py --checkpoint ckpt/      # use an existing checkpoint (its input dim)

Set-up (not measured): a seeded, clustered synthetic catalog (categories > sub-categories on the
sphere, Zipf-like popularity, 5 % near-duplicates; the structure of semid.model.data.synthetic) is generated
and written to a temporary Parquet file in chunks of 100k rows (one row group each), so generation
never holds the whole catalog in memory. Without --checkpoint a default-architecture RQ-VAE is
trained for 4 epochs on the first 20k rows (the speed of assign does not depend on the weights).

Measured:

* `semid assign --checkpoint CK --catalog FILE --index DIR --quiet --json`, run as a subprocess
  (the venv's `semid`): wall-clock seconds from spawn to exit (interpreter start-up and imports
  included), items/s, and the subprocess's peak RSS (ru_maxrss from os.wait4 on that child only),
  plus the summary it prints (collision rate, fallback items, ...).
  Bars: <= 60 s and peak RSS <= 2 GB for the catalog size run.
* `SemanticIdIndex.open(DIR)` in this process: seconds (3 opens; the first and the best).
* In-process look-ups on that index for --queries random prefixes of length 1, 2 and 3 taken from
  indexed items: `prefix_count(prefix)`, `prefix_items(prefix, limit=10)` and `children(prefix)`
  (also the root), each call timed with time.perf_counter_ns after a warm-up: p50/p99/mean in
  microseconds. Bar: p50 <= 50 us for prefix_count and prefix_items.

Writes benchmarks/results/assign_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import markdown_table, write_results  # noqa: E402
from tests.servers import semid_command  # noqa: E402

BAR_SECONDS = 60.0
BAR_RSS_MB = 2048.0
BAR_QUERY_P50_US = 50.0
CHUNK_ROWS = 100_000
TRAIN_ROWS = 20_000
TRAIN_EPOCHS = 4
WARMUP_CALLS = 500
QUERY_COLUMNS = ["call", "prefix_len", "calls", "mean_items", "p50_us", "p99_us", "mean_us", "bar", "met"]


# --- set-up helpers (also used by service_speed.py) --------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered_chunks(
    items: int, dim: int, *, seed: int = 0, chunk_rows: int = CHUNK_ROWS, first_id: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (item_ids int64, embeddings float32 unit-norm) chunks of a seeded clustered catalog.

    24 categories x 12 sub-categories on the sphere with Zipf-like popularity and 5 % near-duplicates
    within each chunk. Each chunk has its own seed, so memory stays at one chunk.
    """
    rng = np.random.default_rng(seed)
    cats, subs = 24, 12
    centres = _unit(rng.standard_normal((cats, dim)))
    sub_centres = _unit(centres[:, None, :] + 0.6 * _unit(rng.standard_normal((cats, subs, dim))))
    sub_centres = sub_centres.reshape(cats * subs, dim).astype(np.float32)
    weights = 1.0 / np.arange(1, cats * subs + 1) ** 0.6
    weights /= weights.sum()
    for chunk, start in enumerate(range(0, items, chunk_rows)):
        n = min(chunk_rows, items - start)
        r = np.random.default_rng([seed, chunk + 1])
        emb = sub_centres[r.choice(cats * subs, size=n, p=weights)]
        emb += 0.45 * _unit(r.standard_normal((n, dim), dtype=np.float32))
        n_near = n // 20
        if n_near and n > 1:
            src = r.integers(0, n, size=n_near)
            dst = r.choice(n, size=n_near, replace=False)
            emb[dst] = emb[src] + 0.01 * _unit(r.standard_normal((n_near, dim), dtype=np.float32))
        ids = np.arange(first_id + start, first_id + start + n, dtype=np.int64)
        yield ids, _unit(emb).astype(np.float32)


def arrow_table(ids: np.ndarray, emb: np.ndarray) -> pa.Table:
    """item_id int64 + embedding fixed_size_list<float32>, the catalog format."""
    flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), pa.float32())
    return pa.table(
        {"item_id": pa.array(ids, pa.int64()), "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])}
    )


def write_catalog_chunked(path: Path, items: int, dim: int, *, seed: int = 0, keep_rows: int = 0) -> np.ndarray:
    """Write the catalog to Parquet one chunk (row group) at a time; returns its first keep_rows embeddings."""
    kept: list[np.ndarray] = []
    have = 0
    schema = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])
    with pq.ParquetWriter(path, schema) as writer:
        for ids, emb in clustered_chunks(items, dim, seed=seed):
            writer.write_table(arrow_table(ids, emb), row_group_size=len(ids))
            if have < keep_rows:
                kept.append(emb[: keep_rows - have].copy())
                have += kept[-1].shape[0]
    return np.concatenate(kept) if kept else np.zeros((0, dim), dtype=np.float32)


def quick_checkpoint(embeddings: np.ndarray, out: Path, *, epochs: int = TRAIN_EPOCHS, anchors: bool = True) -> Path:
    """Train a default-architecture RQ-VAE briefly (weights' quality is irrelevant to speed). ``anchors``
    False: no first-level anchors (as a catalog of more than ``first_level_anchors`` items gets)."""
    from semid.model.config import SemidConfig
    from semid.model.training.job import train_tokenizer

    data = SemidConfig().to_dict()
    data["model"]["input_dim"] = int(embeddings.shape[1])
    if not anchors:
        data["model"]["first_level_anchors"] = 0
    t = data["train"]
    t.update(
        epochs=epochs,
        warmup_epochs=min(t["warmup_epochs"], epochs),
        beta_warmup_epochs=min(t["beta_warmup_epochs"], epochs),
        ae_warmup_epochs=min(t["ae_warmup_epochs"], epochs - 1),
    )
    train_tokenizer(embeddings, SemidConfig.from_dict(data), out)
    return out


def checkpoint_input_dim(path: Path) -> int:
    from semid.model.training.checkpoint import load_checkpoint

    return int(load_checkpoint(path).config.model.input_dim)


# --- measurements ------------------------------------------------------------------------------------------------


def run_assign(cmd: list[str], workdir: Path, timeout: float) -> dict:
    """Run the assign subprocess; wall seconds, exit code, its own peak RSS (os.wait4), stdout/stderr."""
    out_path, err_path = workdir / "assign.stdout", workdir / "assign.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.send_signal(signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                raise SystemExit(f"semid assign did not finish within {timeout:g} s; killed")
            time.sleep(0.02)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "seconds": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
        "user_cpu_s": usage.ru_utime,
        "system_cpu_s": usage.ru_stime,
        "stdout": out_path.read_text(errors="replace"),
        "stderr": err_path.read_text(errors="replace"),
    }


def time_calls(fn: Callable[[tuple[int, ...]], object], prefixes: list[tuple[int, ...]]) -> np.ndarray:
    """Nanoseconds of fn(prefix) for each prefix, after a warm-up."""
    for p in prefixes[:WARMUP_CALLS]:
        fn(p)
    out = np.empty(len(prefixes), dtype=np.int64)
    clock = time.perf_counter_ns
    for i, p in enumerate(prefixes):
        t0 = clock()
        fn(p)
        out[i] = clock() - t0
    return out


def latency_row(call: str, length: int, ns: np.ndarray, mean_items: float, bar: bool) -> dict:
    us = ns / 1000.0
    p50 = float(np.percentile(us, 50))
    return {
        "call": call,
        "prefix_len": length,
        "calls": int(ns.shape[0]),
        "mean_items": round(mean_items, 1),
        "p50_us": round(p50, 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
        "mean_us": round(float(us.mean()), 2),
        "bar": f"p50 <= {BAR_QUERY_P50_US:g} us" if bar else "",
        "met": (p50 <= BAR_QUERY_P50_US) if bar else "",
    }


def query_latency(index_dir: Path, queries: int, seed: int) -> tuple[dict, list[dict]]:
    from semid.service.api.pages import prefix_page
    from semid.service.index.handle import SemanticIdIndex

    opens = []
    index = None
    for _ in range(3):
        index = None  # let the previous handle go before the next open
        t0 = time.perf_counter()
        index = SemanticIdIndex.open(index_dir)
        opens.append(time.perf_counter() - t0)
    assert index is not None
    open_info = {
        "items": len(index),
        "segments": len(index.segments),
        "open_seconds_first": round(opens[0], 3),
        "open_seconds_best": round(min(opens), 3),
        "open_seconds_all": [round(s, 3) for s in opens],
    }
    levels = index.layout.levels
    rng = np.random.default_rng(seed + 17)
    rows = rng.integers(0, len(index), size=queries)
    sids = index.state.semantic_ids[rows]
    results = []
    for length in range(1, levels + 1):
        prefixes = [tuple(int(c) for c in s[:length]) for s in sids]
        counts = [index.snapshot.prefix_count(p) for p in prefixes]
        mean_count = float(np.mean(counts))
        page = float(np.mean([min(c, 10) for c in counts]))
        snap = index.snapshot
        results.append(latency_row("prefix_count", length, time_calls(snap.prefix_count, prefixes), mean_count, True))
        ns = time_calls(lambda p, snap=snap: prefix_page(snap, p, limit=10, cursor=None), prefixes)
        results.append(latency_row("prefix_items(limit=10)", length, ns, page, True))
        kids = float(np.mean([len(index.snapshot.children(p)) for p in prefixes[:1000]]))
        results.append(latency_row("children", length, time_calls(index.snapshot.children, prefixes), kids, False))
    root = [()] * min(queries, 1000)
    kids = len(index.snapshot.children(()))
    results.insert(0, latency_row("children", 0, time_calls(index.snapshot.children, root), kids, False))
    return open_info, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000, help="catalog size (default 1000000)")
    ap.add_argument("--dim", type=int, default=384, help="embedding dimension (default 384; --checkpoint's wins)")
    ap.add_argument("--checkpoint", help="checkpoint directory (default: train a throwaway default RQ-VAE)")
    ap.add_argument("--queries", type=int, default=10_000, help="prefixes per prefix length (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic catalog (default 0)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="kill semid assign after this many seconds")
    ap.add_argument("--workdir", help="where the temporary catalog and index go (default: the system temp dir)")
    args = ap.parse_args()
    if args.items < 2 or args.dim < 2 or args.queries < 1:
        ap.error("--items and --dim must be >= 2, --queries >= 1")

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="semid-assign-speed-", dir=args.workdir))
    try:
        dim = checkpoint_input_dim(Path(args.checkpoint)) if args.checkpoint else args.dim
        catalog = tmp / "catalog.parquet"
        t0 = time.perf_counter()
        train_rows = 0 if args.checkpoint else min(TRAIN_ROWS, args.items)
        train_emb = write_catalog_chunked(catalog, args.items, dim, seed=args.seed, keep_rows=train_rows)
        gen_s = time.perf_counter() - t0
        print(f"catalog: {args.items} x {dim} in {gen_s:.1f} s ({catalog.stat().st_size / 2**20:.0f} MiB)")
        if args.checkpoint:
            ckpt, train_s = Path(args.checkpoint), 0.0
        else:
            t0 = time.perf_counter()
            ckpt = quick_checkpoint(train_emb, tmp / "checkpoint")
            train_s = time.perf_counter() - t0
            print(f"checkpoint: trained in {train_s:.1f} s")
        del train_emb

        index_dir = tmp / "index"
        cmd = [*semid_command(), "assign", "--checkpoint", str(ckpt), "--catalog", str(catalog)]
        cmd += ["--index", str(index_dir), "--quiet", "--json"]
        run = run_assign(cmd, tmp, args.timeout)
        if run["returncode"] != 0:
            raise SystemExit(f"semid assign failed (exit {run['returncode']}):\n{run['stderr'][-4000:]}")
        summary = json.loads(run["stdout"].strip().splitlines()[-1])
        print(f"assign: {run['seconds']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MB")

        open_info, queries = query_latency(index_dir, args.queries, args.seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    seconds = run["seconds"]
    met_time = seconds <= BAR_SECONDS
    met_rss = run["peak_rss_mb"] <= BAR_RSS_MB
    row = {
        "items": args.items,
        "dim": dim,
        "seconds": round(seconds, 2),
        "items_per_s": int(round(args.items / seconds)),
        "assign_seconds_reported": summary.get("seconds"),
        "cpu_s": round(run["user_cpu_s"] + run["system_cpu_s"], 1),
        "peak_rss_mb": round(run["peak_rss_mb"], 1),
        "base_collision_rate": summary.get("base_collision_rate"),
        "largest_bucket": summary.get("largest_bucket"),
        "fallback_items": summary.get("fallback_items"),
        "met_seconds": met_time,
        "met_rss": met_rss,
    }
    query_bar = [q for q in queries if q["bar"]]
    data = {
        "assign": row,
        "bars": {
            "seconds": {"bar": f"<= {BAR_SECONDS:g} s", "value": round(seconds, 2), "met": met_time},
            "peak_rss": {"bar": f"<= {BAR_RSS_MB:g} MB", "value": round(run["peak_rss_mb"], 1), "met": met_rss},
            "prefix_query_p50": {
                "bar": f"p50 <= {BAR_QUERY_P50_US:g} us (prefix_count and prefix_items(limit=10), each prefix length)",
                "met": all(q["met"] for q in query_bar),
            },
        },
        "assign_command": " ".join(cmd).replace(str(tmp), "$TMP"),
        "assign_summary": summary,
        "assign_user_cpu_s": round(run["user_cpu_s"], 2),
        "assign_system_cpu_s": round(run["system_cpu_s"], 2),
        "checkpoint": args.checkpoint or f"throwaway default RQ-VAE ({train_rows} rows, {TRAIN_EPOCHS} epochs)",
        "catalog": {
            "items": args.items,
            "dim": dim,
            "seed": args.seed,
            "chunk_rows": CHUNK_ROWS,
            "generation_seconds": round(gen_s, 2),
            "train_seconds": round(train_s, 2),
        },
        "index_open": open_info,
        "queries_per_length": args.queries,
        "query_latency": queries,
        "torch_threads_parent": torch.get_num_threads(),
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "load_average_end": os.getloadavg(),
    }
    md = markdown_table(
        [row],
        [
            "items",
            "dim",
            "seconds",
            "items_per_s",
            "assign_seconds_reported",
            "cpu_s",
            "peak_rss_mb",
            "base_collision_rate",
            "largest_bucket",
            "fallback_items",
            "met_seconds",
            "met_rss",
        ],
    )
    md += (
        f"\n\nseconds: wall clock of `semid assign ... --quiet --json` as a subprocess, spawn to exit (interpreter "
        f"start-up and imports included; assign_seconds_reported is assign's own timer). peak_rss_mb: ru_maxrss of "
        f"that subprocess (os.wait4). Catalog generation ({gen_s:.1f} s) and checkpoint training ({train_s:.1f} s) "
        f"are not measured. Bars: <= {BAR_SECONDS:g} s: {'met' if met_time else 'not met'}; peak RSS <= "
        f"{BAR_RSS_MB:g} MB: {'met' if met_rss else 'not met'}.\n\n"
        f"Assign summary: `{json.dumps(summary)}`\n\n"
        f"`SemanticIdIndex.open`: {open_info['items']} items in {open_info['segments']} segment(s), first "
        f"{open_info['open_seconds_first']} s, best of 3 {open_info['open_seconds_best']} s.\n\n"
        f"In-process look-ups, {args.queries} random prefixes per length drawn from indexed items, one "
        f"time.perf_counter_ns pair per call after {WARMUP_CALLS} warm-up calls (children of the root: "
        f"{min(args.queries, 1000)} calls). mean_items: items under the prefix (prefix_count), items returned "
        f"(prefix_items) or children listed (children).\n\n"
    )
    md += markdown_table(queries, QUERY_COLUMNS)
    md += f"\n\nbar in-process prefix query p50 <= {BAR_QUERY_P50_US:g} us: " + "; ".join(
        f"{q['call']} len {q['prefix_len']}: {q['p50_us']} us ({'met' if q['met'] else 'not met'})" for q in query_bar
    )
    path = write_results("assign_speed", data, md)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
