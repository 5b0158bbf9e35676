"""`semid train` with its defaults on a 1M-item catalog: wall clock (bar: <= 30 min) and held-out quality.

    python benchmarks/train_scale.py                         # 1M training items + 20k held out, x 384
    python benchmarks/train_scale.py --items 20000 --heldout 2000   # a quick smoke run

Set-up (not timed): a seeded synthetic catalog (semid.model.data.synthetic) of --items + --heldout items;
a seeded share of it (semid.service.evaluation.holdout.split_rows) is held out and the rest written
to Parquet. Timed: `semid -v train --catalog <parquet> --out <dir> --quiet` as a subprocess with no
other flag, so every default applies (the epoch budget train.epoch_samples, the approximate k-NN
graph above train.graph_exact_items, the graph on up to train.graph_max_items items). Its peak RSS
is ru_maxrss of the child; the graph build time is read from its log.

Then every item (trained and held out) is encoded with the checkpoint, and
``holdout.subset_figures`` gives the figures of the held-out items and of the trained ones
(collisions among the subset, per-level perplexity, neighbour prefix share of 2,000 sampled items
against their exact 10 nearest items in the whole catalog).

The machine is shared: the load average before and after the run, and its mean and maximum over the
run (1-minute figure sampled every 30 s), are recorded (timings are noisy).
Writes benchmarks/results/train_scale.{md,json} (or under SEMID_BENCH_RESULTS).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.assign_speed import semid_command  # noqa: E402
from benchmarks.common import markdown_table, write_results  # noqa: E402
from semid.model.data.catalog import Catalog  # noqa: E402
from semid.model.data.synthetic import synthetic_catalog, write_catalog  # noqa: E402
from semid.model.training.checkpoint import load_checkpoint  # noqa: E402
from semid.service.evaluation.holdout import split_rows, subset_figures  # noqa: E402

BAR_SECONDS = 30 * 60
FIGURES = ["items", "nn_share_d1", "nn_lift_d1", "nn_share_d2", "base_collision_rate", "collides_with_catalog"]
FIGURES += ["perplexity_l1", "perplexity_l2", "perplexity_l3", "util_l1"]
GRAPH_LOG = re.compile(r"graph targets for level 1 built in ([0-9.]+) s")
HNSW_LOG = re.compile(r"k-NN graph: \d+ items (inserted|searched|assigned|joined) in ([0-9.]+) s")  # knn, knn_cells


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


class LoadSampler:
    """The 1-minute load average every ``every`` seconds while a run lasts (the machine is shared)."""

    def __init__(self, every: float = 30.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(every):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {}
        return {"load_mean": round(sum(self.samples) / len(self.samples), 2), "load_max": round(max(self.samples), 2)}


def encode_all(checkpoint: Path, embeddings: np.ndarray, batch: int = 65536) -> np.ndarray:
    tokenizer = load_checkpoint(checkpoint).tokenizer.eval()
    with torch.inference_mode():
        return np.concatenate(
            [
                tokenizer.encode(torch.from_numpy(embeddings[s : s + batch])).codes.numpy()
                for s in range(0, len(embeddings), batch)
            ]
        )


def partial(args: argparse.Namespace, out: Path, err: subprocess.TimeoutExpired, seconds: float, load: str) -> None:
    """Record how far a run stopped by --timeout got: the graph build time and the epochs saved for --resume."""
    stderr = err.stderr.decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
    graph = GRAPH_LOG.search(stderr)
    resume = out / "resume.json"
    history = json.loads(resume.read_text()).get("history", []) if resume.is_file() else []
    run = {
        "items": args.items,
        "completed": False,
        "stopped_after_s": round(seconds, 1),
        "graph_build_s": float(graph.group(1)) if graph else None,
        **{f"knn_{m.group(1)}_s": float(m.group(2)) for m in HNSW_LOG.finditer(stderr)},
        "epochs_done": len(history),
        "epoch_seconds": [row.get("seconds") for row in history],
        "load_before": load,
        "load_after": load_average(),
        "bar_s": BAR_SECONDS,
        "met": False,
    }
    markdown = "\n\n".join(
        [
            markdown_table([run], list(run)),
            f"Stopped by --timeout {args.timeout:g} s before `semid train` finished (60 epochs by default): no "
            "quality figures. graph_build_s is read from the run's log, the epochs from its resume state. The "
            "machine (2 cores) is shared with other engineers' runs: the load averages are 1/5/15-minute figures.",
        ]
    )
    path = write_results(args.name, {"run": run}, markdown)
    print(path.read_text())  # noqa: T201


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=1_000_000, help="training items")
    ap.add_argument("--heldout", type=int, default=20_000, help="held-out items (never trained on)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="train_scale")
    ap.add_argument(
        "--timeout", type=float, default=0, help="stop `semid train` after this many seconds and record how far it got"
    )
    args = ap.parse_args()

    start = time.perf_counter()
    catalog = synthetic_catalog(items=args.items + args.heldout, dim=args.dim, seed=args.seed)
    fit, held = split_rows(len(catalog.item_ids), args.heldout / (args.items + args.heldout), args.seed)
    setup_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="semid-train-scale-") as tmp:
        parquet = write_catalog(
            Catalog(item_ids=catalog.item_ids[fit], embeddings=catalog.embeddings[fit], columns=None),
            Path(tmp) / "train.parquet",
        )
        out = Path(tmp) / "checkpoint"
        cmd = [*semid_command(), "-v", "train", "--catalog", str(parquet), "--out", str(out), "--quiet"]
        load_before = load_average()
        start = time.perf_counter()
        try:
            with LoadSampler() as load:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout or None)
        except subprocess.TimeoutExpired as err:
            partial(args, out, err, time.perf_counter() - start, load_before)
            return
        train_s = time.perf_counter() - start
        load_after = load_average()
        if proc.returncode != 0:
            raise SystemExit(f"semid train failed ({proc.returncode}): {proc.stderr[-2000:]}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        graph_s = [float(s) for s in GRAPH_LOG.findall(proc.stderr)]  # a sample's graph first, above the threshold
        metrics = json.loads((out / "metrics.json").read_text())
        config = json.loads((out / "config.json").read_text())
        start = time.perf_counter()
        codes = encode_all(out, catalog.embeddings)
        encode_s = time.perf_counter() - start
    sizes = (config["model"]["codebook_size"],) * config["model"]["levels"]
    rows = []
    for name, subset in (("heldout", held), ("train", fit)):
        figures = subset_figures(catalog.embeddings, codes, subset, sizes, seed=args.seed)["summary"]
        rows.append({"subset": name, **{key: figures.get(key) for key in FIGURES}})
    run = {
        "items": args.items,
        "heldout": args.heldout,
        "dim": args.dim,
        "train_command": "semid -v train --catalog <parquet> --out <dir> --quiet",
        "wall_s": round(train_s, 1),
        "train_seconds_in_metrics": metrics.get("train_seconds"),
        "graph_build_s": round(sum(graph_s), 1) if graph_s else None,
        "graph_builds": len(graph_s),
        **{f"knn_{m.group(1)}_s": float(m.group(2)) for m in HNSW_LOG.finditer(proc.stderr)},
        "epochs": len(metrics.get("epochs", [])),
        "epoch_seconds_total": round(sum(row.get("seconds", 0) for row in metrics.get("epochs", [])), 1),
        "graph_targets_used": (metrics.get("graph_targets") or {}).get("use"),
        "epoch_samples": config["train"].get("epoch_samples"),
        "peak_rss_mb": round(peak_mb),
        "encode_all_s": round(encode_s, 1),
        "setup_s": round(setup_s, 1),
        "load_before": load_before,
        "load_after": load_after,
        **load.summary(),
        "bar_s": BAR_SECONDS,
        "met": train_s <= BAR_SECONDS,
    }
    head = ["items", "wall_s", "graph_build_s", "graph_builds", "graph_targets_used", "epochs", "epoch_seconds_total"]
    head += ["epoch_samples", "peak_rss_mb", "load_before", "load_after", "load_mean", "load_max"]
    markdown = "\n\n".join(
        [
            markdown_table([run], head + ["bar_s", "met"]),
            "Held-out quality (items never trained on) and trained items, neighbours searched in the whole catalog:",
            markdown_table(rows, ["subset", *FIGURES]),
            "Seconds per epoch: " + ", ".join(str(round(row.get("seconds", 0))) for row in metrics.get("epochs", [])),
            f"Graph targets decision (semid.model.first_level.adaptive): `{json.dumps(metrics.get('graph_targets'))}`",
            f"Final training figures (metrics.json, every trained item): "
            f"`{json.dumps({k: v for k, v in metrics.get('final', {}).items() if not k.startswith('dead')})}`",
            "wall_s: `semid train` with default settings as a subprocess (Parquet read included, catalog "
            "generation excluded). graph_build_s: the graph-target builds in its log (graph_builds: 2 when the "
            "decision was measured on a sample's exact graph before the full one, semid.model.training.train). "
            "The machine (2 cores) is shared with other engineers' runs: the load "
            "averages above are 1/5/15-minute figures before and after; timings are noisy.",
        ]
    )
    path = write_results(args.name, {"run": run, "quality": rows, "final": metrics.get("final")}, markdown)
    print(path.read_text())  # noqa: T201


if __name__ == "__main__":
    main()
