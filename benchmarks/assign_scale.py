"""`semid assign --engine ray` (local Ray on this machine) against the single-machine engine.

    python benchmarks/assign_scale.py                          # 1,000,000 x 384
    python benchmarks/assign_scale.py --items 1000000 5000000  # both sizes, one after the other
    python benchmarks/assign_scale.py --items 20000            # a quick smoke run

Set-up (not measured): the seeded clustered catalog of assign_speed.py written to a temporary
Parquet file in 100k-row row groups, and (without --checkpoint) its default-architecture RQ-VAE
trained for 4 epochs on the first 20k rows.

Measured, per catalog size, for each engine: `semid assign ... --quiet --json` as a subprocess
(wall clock from spawn to exit, imports and for Ray the start of the local Ray instance included),
items/s, and the peak RSS of every process of the run: the `semid` process (for Ray, the driver) and
all its descendants (for Ray: GCS, raylet, the encoding and resolving workers, ...), sampled with
psutil every 0.2 s (peaks shorter than that can be missed). RSS counts shared pages (torch's
libraries, Ray's object store) in every process that maps them, so the sum over processes is an upper
bound of the memory used, not the memory used. Then `semid export` of both indexes: the files must
be byte-identical (the engine's contract); the result records whether they are.

Writes benchmarks/results/assign_scale.{md,json}. Timings are noisy on a shared machine: the load
average before and after each run is recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.assign_speed import TRAIN_ROWS, quick_checkpoint, semid_command, write_catalog_chunked  # noqa: E402
from benchmarks.common import markdown_table, write_results  # noqa: E402

SAMPLE_SECONDS = 0.2
COLUMNS = [
    "items",
    "engine",
    "workers",
    "seconds",
    "items_per_s",
    "processes",
    "driver_peak_rss_mb",
    "largest_other_peak_rss_mb",
    "sum_of_peaks_mb",
    "fallback_items",
    "load_before",
    "load_after",
]


class TreeMemory:
    """Peak RSS of a process and each of its descendants, sampled in a thread until ``stop``."""

    def __init__(self, pid: int) -> None:
        self.root = pid
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.root)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    name = _label(proc)  # every time: a Ray worker renames itself once it holds a task or actor
                except psutil.Error:
                    continue
                old_name, old_rss = self.peaks.get(proc.pid, ("", 0))
                keep = name if name.startswith("ray::") or not old_name else old_name
                self.peaks[proc.pid] = (keep, max(rss, old_rss))
            self._stop.wait(SAMPLE_SECONDS)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        peaks = [(name, rss / 2**20) for pid, (name, rss) in self.peaks.items() if pid != self.root]
        by_name: dict[str, float] = {}
        for name, mb in peaks:
            by_name[name] = max(by_name.get(name, 0.0), mb)
        return {
            "processes": 1 + len(peaks),
            "driver_peak_rss_mb": round(self.peaks.get(self.root, ("", 0))[1] / 2**20),
            "largest_other_peak_rss_mb": round(max((mb for _, mb in peaks), default=0.0)),
            "sum_of_peaks_mb": round(sum(rss for _, rss in self.peaks.values()) / 2**20),
            "peak_rss_mb_by_process_kind": {k: round(v) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])},
        }


def _label(proc: psutil.Process) -> str:
    """A short name for a process kind: Ray names its workers in the command line (ray::ActorName)."""
    cmd = proc.cmdline()
    line = " ".join(cmd)
    if "ray::" in line:
        return line[line.index("ray::") :].split()[0][:60]
    scripts = [Path(part).name for part in cmd[1:] if part.endswith(".py")]
    return f"{proc.name()} {scripts[0]}" if scripts else proc.name()


def run_assign(args: list[str], env: dict) -> dict:
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen([*semid_command(), "assign", *args, "--quiet", "--json"], stdout=subprocess.PIPE, env=env)
    memory = TreeMemory(proc.pid)
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    row = memory.stop()
    if proc.returncode != 0:
        raise SystemExit(f"assign failed ({proc.returncode}): {' '.join(args)}")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "seconds": round(seconds, 1),
        "items_per_s": round(summary["items"] / seconds),
        "fallback_items": summary["fallback_items"],
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        **row,
        "summary": summary,
    }


def export_sha(index: Path, out: Path) -> str:
    subprocess.run([*semid_command(), "export", "--index", str(index), "--out", str(out)], check=True)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--workers", type=int, default=None, help="Ray encoding actors (default: the CPUs)")
    parser.add_argument("--checkpoint", type=Path, help="an existing checkpoint (its input dim must be --dim)")
    parser.add_argument("--workdir", type=Path, help="where catalogs and indexes go (default: a temp dir)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows, notes = [], []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        for items in args.items:
            catalog = work / f"catalog-{items}.parquet"
            kept = write_catalog_chunked(catalog, items, args.dim, keep_rows=TRAIN_ROWS)
            checkpoint = args.checkpoint or work / "ckpt"
            if not checkpoint.exists():
                quick_checkpoint(kept, checkpoint)
            common = ["--checkpoint", str(checkpoint), "--catalog", str(catalog)]
            local = run_assign([*common, "--index", str(work / f"local-{items}")], env)
            ray_args = ["--engine", "ray"] + (["--workers", str(args.workers)] if args.workers else [])
            ray = run_assign([*common, "--index", str(work / f"ray-{items}"), *ray_args], env)
            rows.append({"items": items, "engine": "local", "workers": 1, **local})
            rows.append({"items": items, "engine": "ray (local)", "workers": args.workers or os.cpu_count(), **ray})
            same = export_sha(work / f"local-{items}", work / "l.parquet") == export_sha(
                work / f"ray-{items}", work / "r.parquet"
            )
            notes.append(f"{items:,} items: `semid export` of both indexes byte-identical: {same}.")
            for path in (catalog, work / f"local-{items}", work / f"ray-{items}"):
                subprocess.run(["rm", "-rf", str(path)], check=True)
    table = markdown_table(rows, COLUMNS)
    kinds = "\n".join(
        f"- {r['items']:,} {r['engine']}: " + ", ".join(f"{k} {v}" for k, v in r["peak_rss_mb_by_process_kind"].items())
        for r in rows
    )
    text = (
        f"{table}\n\n"
        + "\n".join(notes)
        + "\n\nPeak RSS (MB) per process kind (largest process of each kind; the driver is the `semid` row above):\n\n"
        + kinds
        + "\n\nseconds: wall clock of the `semid assign` subprocess from spawn to exit (for Ray: starting the local "
        "Ray instance included). Memory: psutil samples every "
        f"{SAMPLE_SECONDS} s of the subprocess and all its descendants; RSS counts shared pages (libraries, Ray's "
        "object store) in each process that maps them, so sum_of_peaks_mb over-counts. load_before/after: 1-minute "
        "load average; the machine's 2 cores are shared with other engineers' runs, so timings are noisy.\n"
    )
    path = write_results("assign_scale", {"rows": rows, "notes": notes}, text)
    print(path.read_text())


if __name__ == "__main__":
    main()
