"""Training time on a shared machine: today's thread settings vs semid's, side by side under one competing load.

    python benchmarks/train_under_load.py                           # quickstart-sized + goodbooks-10k, 2 busy procs
    python benchmarks/train_under_load.py --busy 2 --epochs 8 --catalogs quickstart,goodbooks
    python benchmarks/train_under_load.py --variants torch-default,semid --repeats 2

The script starts ``--busy`` processes that spin on the CPU (a competing job) and keeps them running while it
trains the same catalog and config once per variant, each in a fresh Python process (OpenMP reads its wait
policy when the library loads, so a variant's environment must be set before torch and faiss are imported):

- ``torch-default``: what `semid train` did up to 0.7.0: torch's own thread count (every CPU) and OpenMP's
  default busy-waiting.
- ``passive``: torch's thread count, OMP_WAIT_POLICY=PASSIVE (threads sleep instead of spinning at a barrier).
- ``one-thread``: torch.set_num_threads(1), OpenMP's default waiting.
- ``semid``: semid.model.training.cpu_threads as the CLI applies it (passive waiting; threads from the CPUs this process
  may use minus the load average).

Variants alternate in order within each repeat, so a change in the outside load hits both. The load average is
recorded before and after every run. Catalogs: ``quickstart`` (the quickstart's synthetic 10,000 x 128) and
``goodbooks`` (../shared/data/goodbooks-10k, skipped when absent). Writes benchmarks/results/train_under_load.*.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED_DATA, markdown_table, write_results  # noqa: E402

GOODBOOKS = SHARED_DATA / "goodbooks-10k" / "items.parquet"
VARIANTS = ("torch-default", "passive", "one-thread", "semid")
COLUMNS = [
    "catalog",
    "variant",
    "repeat",
    "threads",
    "wait_policy",
    "wall_s",
    "train_s",
    "epoch_s_median",
    "epoch_s_max",
    "load_before",
    "load_after",
]


def _spin() -> None:  # pragma: no cover - runs in the competing processes
    x = 0
    while True:
        x += 1


def _worker(variant: str, catalog: str, epochs: int, out: str) -> dict:
    """One training run in this (fresh) process, with the variant's thread settings."""
    env_before = dict(os.environ)
    if variant == "passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    elif variant == "semid":
        from semid.model.training.cpu_threads import quiet_waiting

        quiet_waiting()
    import numpy as np
    import torch

    from semid.model.config import SemidConfig
    from semid.model.training.job import train_tokenizer

    if variant == "one-thread":
        torch.set_num_threads(1)
    if catalog == "quickstart":
        from semid.model.data.synthetic import synthetic_catalog

        embeddings = synthetic_catalog(items=10_000, dim=128, seed=0).embeddings
    else:
        from semid.model.data.catalog import read_catalog

        embeddings = read_catalog(str(GOODBOOKS)).embeddings
    config = SemidConfig().with_overrides("train", epochs=epochs, seed=0)
    if variant in ("torch-default", "passive", "one-thread"):
        import semid.model.training.job as job

        job.apply_threads = lambda requested: torch.get_num_threads()  # keep this variant's own setting
    start = time.perf_counter()
    _, metrics = train_tokenizer(np.ascontiguousarray(embeddings), config, out)
    wall = time.perf_counter() - start
    seconds = sorted(e["seconds"] for e in metrics["epochs"])
    return {
        "threads": torch.get_num_threads(),
        "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "wall_s": round(wall, 1),
        "train_s": metrics["train_seconds"],
        "epoch_s_median": round(seconds[len(seconds) // 2], 2),
        "epoch_s_max": round(seconds[-1], 2),
        "epochs": len(seconds),
        "base_collision_rate": metrics["final"]["base_collision_rate"],
        "env_changed": sorted(k for k in os.environ if env_before.get(k) != os.environ[k]),
    }


def _run(variant: str, catalog: str, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--worker", variant, "--catalogs", catalog, "--epochs", str(epochs)]
        cmd += ["--out", str(Path(tmp) / "ck")]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "SEMID_THREADS")}
        load_before = os.getloadavg()[0]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{variant} on {catalog} failed:\n{done.stderr[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "variant": variant,
        "catalog": catalog,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        **row,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", type=int, default=2, help="competing processes spinning on the CPU")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (the quickstart trains 20)")
    p.add_argument("--catalogs", default="quickstart,goodbooks")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--name", default="train_under_load")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.catalogs, args.epochs, args.out)))
        return
    catalogs = [c for c in args.catalogs.split(",") if c != "goodbooks" or GOODBOOKS.is_file()]
    variants = args.variants.split(",")
    busy = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for proc in busy:
        proc.start()
    rows = []
    try:
        for catalog in catalogs:
            for repeat in range(args.repeats):
                for variant in variants:
                    row = {**_run(variant, catalog, args.epochs), "repeat": repeat}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        for proc in busy:
            proc.terminate()
    md = (
        f"Competing load: {args.busy} processes spinning on the CPU for the whole run (started by the script), on top "
        f"of whatever else the machine ran (load_before / load_after: 1-minute load average around each run, the "
        f"busy processes included). Config: SemidConfig() with epochs={args.epochs}, seed 0. Each run is a fresh "
        f"process; variants alternate.\n\n" + markdown_table(rows, COLUMNS)
    )
    path = write_results(args.name, {"busy": args.busy, "epochs": args.epochs, "rows": rows}, md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
