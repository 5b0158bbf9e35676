"""Crafted trie and vocab files (issue 22, items 3 and 4): what loading them costs, this tree against an older one.

    python benchmarks/hostile_files.py --old-tree /tmp/old-files    # a checkout of the old commit (git worktree add)
    python benchmarks/hostile_files.py                              # this tree only

Each file is written once (not measured), then loaded in a fresh subprocess per tree: the subprocess imports
semid (this tree's, or the old tree's through PYTHONPATH), records its peak RSS so far (ru_maxrss), loads the file
with ``SemanticIdTrie.load`` / ``SemanticIdVocab.load``, and reports the seconds taken (time.perf_counter), its
peak RSS after the load, and what the load raised. Cases (the findings of issue 22):

* ``trie_16000_positions``: a ~1 KB .npz of 16,000 positions of size 1, one ID.
* ``trie_huge_items``: a ~1 MB .npz whose ``items`` member declares 3 strings of 80M characters (deflated zeros).
* ``trie_1gb_keys``: a ~1 MB .npz whose ``keys`` member declares 2**27 int64 keys (1 GB of deflated zeros).
* ``trie_sizes_2_31``: one position of 2**31 + 5 codes (the old tree stored its codes as int32).
* ``vocab_4m_codes``: a 150-byte vocab JSON declaring ``codebook_sizes: [4194304]`` and no tokens.

Writes benchmarks/results/hostile_files.{md,json}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_results  # noqa: E402

HUGE_ITEMS = ("items", "<U80000000", 3)  # 3 x 320 MB of zeros
HUGE_KEYS = ("keys", "<i8", 1 << 27)  # 1 GB of zeros
LOAD = """
import json, resource, sys, time
kind, path = sys.argv[1], sys.argv[2]
if kind == "trie":
    from semid.service.generation.trie import SemanticIdTrie as Loader
else:
    from semid.service.generation.vocab import SemanticIdVocab as Loader
import semid.service.generation.trie as module
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    Loader.load(path)
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "base_rss_mb": base / 1024, "peak_rss_mb": peak / 1024, "error": error,
                  "module": module.__file__}))
"""


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _trie(path: Path, *, sizes, keys=None, items=None, big: tuple[str, str, int] | None = None) -> Path:
    """A trie .npz; ``big`` = (member, dtype, n): a deflated member of n zero values, streamed."""
    members = {"format": np.array("semid-trie"), "version": np.array(1), "sizes": np.asarray(sizes, dtype=np.int64)}
    if keys is not None:
        members["keys"] = np.asarray(keys, dtype=np.int64)
    if items is not None:
        members["items"] = np.asarray(items)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, arr in members.items():
            zf.writestr(f"{key}.npy", _npy(arr))
        if big is not None:
            key, dtype, n = big
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": (n,)})
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                f.write(header.getvalue())
                left, chunk = n * np.dtype(dtype).itemsize, bytes(16 << 20)
                while left:
                    f.write(chunk[: min(left, len(chunk))])
                    left -= min(left, len(chunk))
    return path


def make_cases(root: Path) -> dict[str, tuple[str, Path]]:
    size = (1 << 31) + 5
    vocab = {
        "format": "semid-vocab",
        "version": 1,
        "layout": {"codebook_sizes": [4194304], "dedup_size": 1},
        "offset": 0,
        "size": 4194305,
        "special_tokens": {},
        "tokens": [],
    }
    (root / "vocab.json").write_text(json.dumps(vocab))
    return {
        "trie_16000_positions": ("trie", _trie(root / "wide.npz", sizes=[1] * 16000, keys=[0], items=[0])),
        "trie_huge_items": (
            "trie",
            _trie(root / "items.npz", sizes=[4, 4], keys=[0, 1, 2], big=("items", "<U80000000", 3)),
        ),
        "trie_1gb_keys": (
            "trie",
            _trie(root / "keys.npz", sizes=[1 << 20, 1 << 20], items=[], big=("keys", "<i8", 1 << 27)),
        ),
        "trie_sizes_2_31": ("trie", _trie(root / "sizes.npz", sizes=[size], keys=[size - 1], items=[0])),
        "vocab_4m_codes": ("vocab", root / "vocab.json"),
    }


def shim(tree: Path, root: Path) -> Path:
    """A PYTHONPATH directory whose ``semid.model`` / ``semid.service`` are ``tree``'s (ahead of the installed ones)."""
    pkg = root / "shim" / "semid"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in ("model", "service"):
        (pkg / name).symlink_to(tree.resolve() / name)
    return pkg.parent


def load(kind: str, path: Path, pythonpath: Path | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    out = subprocess.run(
        [sys.executable, "-c", LOAD, kind, str(path)], capture_output=True, text=True, env=env, timeout=1800
    )
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-tree", type=Path, help="a checkout of an older semid to measure side by side")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = make_cases(root)
        trees = {"this": None}
        if args.old_tree is not None:
            trees = {"old": shim(args.old_tree, root), **trees}
        for case, (kind, path) in cases.items():
            for tree, pythonpath in trees.items():
                result = load(kind, path, pythonpath)
                error = result.get("error")
                rows.append(
                    {
                        "case": case,
                        "file_bytes": path.stat().st_size,
                        "tree": tree,
                        "seconds": round(result.get("seconds", float("nan")), 3),
                        "peak_rss_mb": round(result.get("peak_rss_mb", float("nan"))),
                        "rss_after_imports_mb": round(result.get("base_rss_mb", float("nan"))),
                        "outcome": "loaded" if error is None else error[:160].replace("|", "/"),
                        "module": result.get("module"),
                    }
                )
                print(rows[-1], flush=True)
    load_average = os.getloadavg()
    columns = ["case", "file_bytes", "tree", "seconds", "peak_rss_mb", "rss_after_imports_mb", "outcome"]
    markdown = (
        f"Load average at the end: {load_average[0]:.2f} {load_average[1]:.2f} {load_average[2]:.2f} "
        f"(2 cores shared with other jobs).\n\n"
        "Each load ran in a fresh subprocess; peak RSS is the subprocess's ru_maxrss after the load (its RSS after "
        "importing semid is given beside it). `old`: the tree given by --old-tree; `this`: this checkout.\n\n"
        + markdown_table(rows, columns)
    )
    path = write_results(
        "hostile_files", {"old_tree": str(args.old_tree), "load_average": load_average, "rows": rows}, markdown
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
