"""Proxy figures of the ID levers: what each setting does to collisions, per-level perplexity and neighbour share.

    python benchmarks/id_lever_proxies.py --catalog ../shared/data/amazon-scientific/items.parquet \\
        --interactions ../shared/data/amazon-scientific/interactions.csv --threads 1

For each setting (the settings of ``benchmarks/generative_retrieval.py``'s semid rows: defaults, ``--interactions``,
the LETTER-style terms together and one at a time, the adaptive codebook size, residual k-means at 256 codes and
at the adaptive size) it runs ``semid train``, ``semid
assign`` and ``semid export`` and scores the exported IDs with ``../shared/tools/score_ids.py`` (the reference
scorer: base collisions, largest bucket, per-level utilisation of 256 codes and perplexity, and the share of each
item's 10 nearest embedding neighbours sharing its first d codes). The interactions are the whole file here (no
user is scored); the downstream rows train on it minus the scored pairs. Writes
OUT/id_lever_proxies.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import markdown_table, write_results  # noqa: E402
from benchmarks.generative_retrieval import LETTER, adaptive_codes  # noqa: E402

SCORER = Path(__file__).resolve().parents[2] / "shared" / "tools" / "score_ids.py"
COLUMNS = [
    "setting",
    "base_collision_rate",
    "largest_bucket",
    "perplexity_l1",
    "perplexity_l2",
    "perplexity_l3",
    "nn_share_d1",
    "nn_share_d2",
    "nn_share_d3",
    "train_s",
]


def settings(items: int, interactions: str) -> dict[str, list[str]]:
    """Setting name -> `semid train` flags (the benchmark row each mirrors in brackets)."""
    letter = [f"--{k.replace('_', '-')}={v}" for k, v in LETTER.items()]
    return {
        "defaults [semid-rqvae]": [],
        "interactions [semid-rqvae-interactions]": ["--interactions", interactions],
        "interactions + letter [semid-rqvae-letter]": ["--interactions", interactions, *letter],
        "interactions + collab_align only": ["--interactions", interactions, letter[0]],
        "code_diversity only": [letter[1]],
        f"adaptive, {adaptive_codes(items)} codes [semid-rqvae-adaptive]": [f"--codebook-size={adaptive_codes(items)}"],
        "rqkmeans [semid-rqkmeans]": ["--tokenizer=rqkmeans"],
        "rqkmeans, levels 2 and 3 balanced [semid-rqkmeans-balanced]": [
            "--tokenizer=rqkmeans",
            "--kmeans-balance-from=2",
        ],
        f"rqkmeans, adaptive {adaptive_codes(items)} codes [semid-rqkmeans-adaptive]": [
            "--tokenizer=rqkmeans",
            f"--codebook-size={adaptive_codes(items)}",
        ],
    }


def _run(args: list[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: {' '.join(args[:4])} ... failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def run_setting(catalog: str, flags: list[str], work: Path, threads: int) -> dict:
    semid = [sys.executable, "-m", "semid.service.cli"]
    ckpt, index, ids = str(work / "ckpt"), ["--index", str(work / "index")], str(work / "ids.parquet")
    start = time.perf_counter()
    _run([*semid, "train", "--catalog", catalog, "--out", ckpt, "--quiet", "--threads", str(threads), *flags], threads)
    train_s = time.perf_counter() - start
    _run([*semid, "assign", "--checkpoint", ckpt, "--catalog", catalog, *index], threads)
    _run([*semid, "export", *index, "--out", ids], threads)
    scored = _run([sys.executable, str(SCORER), catalog, ids], threads)
    return {**json.loads(scored), "train_s": round(train_s, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--interactions", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", help="comma-separated setting names, or their [bracketed] row names (default: all)")
    ap.add_argument("--name", default="id_lever_proxies")
    args = ap.parse_args(argv)
    items = pq.ParquetFile(args.catalog).metadata.num_rows
    wanted = settings(items, args.interactions)
    if args.only:
        only = args.only.split(",")
        wanted = {k: v for k, v in wanted.items() if k in only or any(f"[{o}]" in k for o in only)}
    load_start = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for name, flags in wanted.items():
        with tempfile.TemporaryDirectory(prefix="semid-proxy-") as tmp:
            row = {
                "setting": name,
                "flags": " ".join(flags),
                **run_setting(args.catalog, flags, Path(tmp), args.threads),
            }
        print(json.dumps(row), flush=True)
        rows.append(row)
    load_end = [round(v, 2) for v in os.getloadavg()]
    md = [
        f"Catalog `{args.catalog}` ({items} items); interactions `{args.interactions}` (the whole file). "
        f"Each setting: `semid train --threads {args.threads}` with the flags below, `semid assign`, `semid export`, "
        f"scored by `{SCORER.name}` (utilisation out of 256 codes; nn_share_dN: share of an item's 10 nearest "
        "embedding neighbours sharing its first N codes, 2,000 seeded items). Seed 0. "
        f"Load average {load_start} at start, {load_end} at end (train_s is wall time on a shared machine).",
        "",
        markdown_table(rows, COLUMNS),
        "",
        markdown_table(rows, ["setting", "flags"]),
    ]
    data = {"catalog": args.catalog, "interactions": args.interactions, "items": items, "rows": rows}
    data["load_average"] = {"start": load_start, "end": load_end}
    print(write_results(args.name, data, "\n".join(md)))
    return data


if __name__ == "__main__":
    main()
