"""`semid assign` and the index at 10M items (issue 12, "Training and assignment at 10M").

    python benchmarks/index_10m.py prepare --items 10000000            # once: catalog + checkpoint
    python benchmarks/index_10m.py run --items 10000000 --torch-threads 2
    python benchmarks/index_10m.py run --items 200000 --data /tmp/small   # a quick smoke run

``prepare`` (not measured) writes, under ``--data`` (default /tmp/h2/data10m), the seeded clustered
catalog of assign_speed.py (``items`` x 384 float32, 100k-row row groups, streamed: one chunk in
memory) and a default-architecture RQ-VAE trained for 3 epochs on its first 50,000 rows (more than
16,384, so the checkpoint has no first-level anchors, which are for small catalogs). Both are reused
when present.

``run`` measures, against these bars:

- `semid assign --quiet --json` into a fresh index, as a subprocess: wall clock from spawn to exit
  (imports included) and the peak RSS of the process, sampled with psutil every 0.2 s (and
  ``ru_maxrss`` of the child, which cannot miss a peak); bars 600 s and 4,096 MB;
- opening the index (``SemanticIdIndex.open``) in a fresh process, timed around the call (imports
  excluded), median of 3 processes; bar 3 s;
- in-process prefix queries (``IndexSnapshot.prefix_rows``, limit 100, on prefixes of length 1..3
  drawn from the index's own IDs), p50 over 2,000 calls each; bar 50 us;
- `semid serve` on the index: seconds from spawn until ``/healthz`` answers 200 (and ``/readyz``);
  bar 10 s;
- `semid check`'s wall clock (it reads every file and verifies every checksum: no bar).

Writes benchmarks/results/index_10m.{md,json} (``SEMID_BENCH_RESULTS`` elsewhere). The machine's
2 cores are shared with other engineers' runs: the load average before and after each step is
recorded, and timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.assign_speed import quick_checkpoint, semid_command, write_catalog_chunked  # noqa: E402
from benchmarks.common import RESULTS, markdown_table, write_results  # noqa: E402

DEFAULT_DATA = Path("/tmp/h2/data10m")
DIM = 384
TRAIN_ROWS = 50_000
TRAIN_EPOCHS = 3
SAMPLE_SECONDS = 0.2
BARS = {"assign_seconds": 600.0, "assign_peak_rss_mb": 4096.0, "open_seconds": 3.0, "prefix_p50_us": 50.0}
BAR_SERVE_READY_S = 10.0
QUERY_CALLS = 2_000


def catalog_path(data: Path, items: int) -> Path:
    return data / f"catalog-{items}.parquet"


def prepare(data: Path, items: int) -> None:
    data.mkdir(parents=True, exist_ok=True)
    catalog, checkpoint = catalog_path(data, items), data / "checkpoint"
    kept = None
    if not catalog.is_file():
        partial = catalog.with_suffix(".partial")
        start = time.perf_counter()
        kept = write_catalog_chunked(partial, items, DIM, keep_rows=TRAIN_ROWS)
        partial.rename(catalog)
        print(f"wrote {catalog} ({catalog.stat().st_size / 2**30:.1f} GiB) in {time.perf_counter() - start:.0f} s")
    if not (checkpoint / "config.json").is_file():
        if kept is None:
            import pyarrow.parquet as pq

            with pq.ParquetFile(catalog) as pf:
                table = pf.read_row_groups(list(range(min(pf.num_row_groups, 1))), columns=["embedding"])
            flat = table.column("embedding").combine_chunks().flatten().to_numpy()
            kept = flat.reshape(-1, DIM)[:TRAIN_ROWS].astype(np.float32)
            if kept.shape[0] < TRAIN_ROWS:
                raise SystemExit("the first row group holds fewer than 50,000 rows")
        start = time.perf_counter()
        quick_checkpoint(kept, checkpoint, epochs=TRAIN_EPOCHS)
        print(f"trained {checkpoint} on {kept.shape[0]} rows in {time.perf_counter() - start:.0f} s")


def load() -> float:
    return round(os.getloadavg()[0], 2)


class PeakRss:
    """Peak RSS of one process, sampled in a thread every SAMPLE_SECONDS (with a timeline)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.timeline = pid, 0, []
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
            while not self._stop.is_set():
                rss = proc.memory_info().rss
                self.peak = max(self.peak, rss)
                self.timeline.append((round(time.perf_counter() - self._start, 1), round(rss / 2**20)))
                self._stop.wait(SAMPLE_SECONDS)
        except psutil.Error:
            return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak / 2**20)


def run_assign(checkpoint: Path, catalog: Path, index: Path, env: dict) -> dict:
    before = load()
    start = time.perf_counter()
    cmd = [*semid_command(), "assign", "--checkpoint", str(checkpoint), "--catalog", str(catalog)]
    cmd += ["--index", str(index), "--quiet", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    memory = PeakRss(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    peak = memory.stop()
    if proc.returncode != 0:
        raise SystemExit(f"assign failed ({proc.returncode}): {err.decode()[-2000:]}")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    timeline = memory.timeline[:: max(1, len(memory.timeline) // 60)]
    return {
        "command": " ".join(cmd),
        "seconds": round(seconds, 1),
        "items_per_s": round(summary["items"] / seconds),
        "peak_rss_mb": peak,
        "children_ru_maxrss_mb": round(children_maxrss),
        "summary": summary,
        "rss_timeline_s_mb": timeline,
        "load_before": before,
        "load_after": load(),
    }


_OPEN_AND_QUERY = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from semid.service.index.handle import SemanticIdIndex
t1 = time.perf_counter()
index = SemanticIdIndex.open(sys.argv[1])
t2 = time.perf_counter()
out = {"import_s": t1 - t0, "open_s": t2 - t1, "items": len(index)}
if sys.argv[2] == "query":
    snap = index.snapshot
    rng = np.random.default_rng(0)
    state = snap.state
    rows = rng.integers(0, state.rows, size=int(sys.argv[3]))
    sids = state.semantic_ids[rows]
    for length in (1, 2, 3):
        prefixes = [tuple(int(c) for c in s[:length]) for s in sids]
        for p in prefixes[:200]:
            snap.prefix_rows(p, limit=100)
        ns = []
        for p in prefixes:
            a = time.perf_counter_ns()
            snap.prefix_rows(p, limit=100)
            ns.append(time.perf_counter_ns() - a)
        ns = np.array(ns) / 1000
        out[f"prefix{length}_p50_us"] = float(np.percentile(ns, 50))
        out[f"prefix{length}_p99_us"] = float(np.percentile(ns, 99))
    q = np.random.default_rng(1).standard_normal((4, snap.vector_dim)).astype(np.float32)
    a = time.perf_counter()
    snap.nearest(q, 10)
    out["knn_4_queries_first_s"] = time.perf_counter() - a
    a = time.perf_counter()
    snap.nearest(q, 10)
    out["knn_4_queries_again_s"] = time.perf_counter() - a
import resource
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def open_index(index: Path, mode: str, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _OPEN_AND_QUERY, str(index), mode, str(QUERY_CALLS)],
        check=True,
        capture_output=True,
        env=env,
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_ready(index: Path, env: dict) -> dict:
    import httpx

    port = _free_port()
    before = load()
    start = time.perf_counter()
    server = subprocess.Popen(
        [*semid_command(), "serve", "--index", str(index), "--port", str(port), "--log-level", "error"],
        env={**env, "SEMID_API_KEY": "bench"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out: dict = {"load_before": before}
    try:
        for path in ("/healthz", "/readyz"):
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"semid serve exited with {server.returncode}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - start > 300:
                    raise SystemExit("semid serve not ready after 300 s")
                time.sleep(0.05)
            out[path.strip("/") + "_s"] = round(time.perf_counter() - start, 2)
        out["server_rss_mb"] = round(psutil.Process(server.pid).memory_info().rss / 2**20)
    finally:
        server.terminate()
        server.wait(timeout=30)
    out["load_after"] = load()
    return out


def run_check(index: Path, env: dict) -> dict:
    before = load()
    start = time.perf_counter()
    done = subprocess.run([*semid_command(), "check", "--index", str(index)], capture_output=True, env=env)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "returncode": done.returncode,
        "last_line": done.stdout.decode().strip().splitlines()[-1:] or done.stderr.decode().strip().splitlines()[-1:],
        "load_before": before,
        "load_after": load(),
    }


def run(data: Path, items: int, torch_threads: int, index: Path | None, skip_check: bool, reuse: bool) -> None:
    catalog, checkpoint = catalog_path(data, items), data / "checkpoint"
    if not catalog.is_file() or not (checkpoint / "config.json").is_file():
        raise SystemExit(f"run `prepare --items {items} --data {data}` first")
    index = index or data / f"index-{items}"
    name = "index_10m" if items >= 10_000_000 else f"index_{items}"
    threads = str(torch_threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if reuse:  # re-measure open/query/serve on the index of the previous run (its assign figures kept)
        assign = json.loads((RESULTS / f"{name}.json").read_text())["assign"]
        assign["reused_from_previous_run"] = True
    else:
        if index.exists():
            subprocess.run(["rm", "-rf", str(index)], check=True)
        assign = run_assign(checkpoint, catalog, index, env)
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    opens = [open_index(index, "open", one_thread) for _ in range(3)]
    query = open_index(index, "query", one_thread)
    serve = serve_ready(index, one_thread)
    check = None if skip_check else run_check(index, one_thread)
    open_s = float(np.median([o["open_s"] for o in opens]))
    figures = {
        "assign_seconds": assign["seconds"],
        "assign_peak_rss_mb": max(assign["peak_rss_mb"], assign["children_ru_maxrss_mb"]),
        "open_seconds": round(open_s, 3),
        "prefix_p50_us": round(max(query[f"prefix{n}_p50_us"] for n in (1, 2, 3)), 2),
    }
    rows = [
        {"figure": name, "value": value, "bar": BARS[name], "met": value <= BARS[name]}
        for name, value in figures.items()
    ]
    ready = serve["healthz_s"]
    rows.append(
        {"figure": "serve_healthz_s", "value": ready, "bar": BAR_SERVE_READY_S, "met": ready <= BAR_SERVE_READY_S}
    )
    rows.append({"figure": "serve_readyz_s", "value": serve["readyz_s"], "bar": "", "met": ""})
    if check is not None:
        rows.append({"figure": "check_seconds", "value": check["seconds"], "bar": "", "met": ""})
    data_out = {
        "items": items,
        "torch_threads": torch_threads,
        "uptime_before": uptime,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "figures": rows,
        "assign": assign,
        "opens": opens,
        "query": query,
        "serve": serve,
        "check": check,
        "index_bytes": {p.name: p.stat().st_size for p in sorted(index.rglob("*")) if p.is_file()},
    }
    s = assign["summary"]
    text = (
        f"{items:,} x {DIM} synthetic items (seeded clustered catalog, {catalog.stat().st_size / 2**30:.1f} GiB "
        f"Parquet), checkpoint trained on its first {TRAIN_ROWS:,} rows for {TRAIN_EPOCHS} epochs; assign with "
        f"{torch_threads} torch thread(s).\n\n"
        + markdown_table(rows, ["figure", "value", "bar", "met"])
        + f"\n\nassign: {s['new_items']:,} new items, {s['fallback_items']:,} needed the fallback, base collision "
        f"rate {100 * s['base_collision_rate']:.3f} %, largest bucket {s['largest_bucket']}; peak RSS sampled "
        f"{assign['peak_rss_mb']} MB, ru_maxrss {assign['children_ru_maxrss_mb']} MB; load {assign['load_before']} "
        f"-> {assign['load_after']}.\n"
        f"open (median of 3 fresh processes, imports excluded): {[round(o['open_s'], 3) for o in opens]} s; "
        f"process RSS after open {round(opens[0]['rss_mb'])} MB.\n"
        f"prefix queries ({QUERY_CALLS} calls per length, limit 100): "
        + ", ".join(
            f"length {n}: p50 {query[f'prefix{n}_p50_us']:.1f} us / p99 {query[f'prefix{n}_p99_us']:.1f} us"
            for n in (1, 2, 3)
        )
        + f"; exact k-NN of 4 queries (k=10) over the memory-mapped vectors: {query['knn_4_queries_first_s']:.2f} s "
        f"cold, {query['knn_4_queries_again_s']:.2f} s warm.\n"
        f"serve: /healthz 200 after {serve['healthz_s']} s, /readyz after {serve['readyz_s']} s, server RSS "
        f"{serve['server_rss_mb']} MB (load {serve['load_before']} -> {serve['load_after']}).\n"
        + (f"check: {check['seconds']} s, exit {check['returncode']}, {check['last_line']}.\n" if check else "")
        + f"\nuptime before: `{uptime}`; after: `{data_out['uptime_after']}`. The 2 cores are shared with other "
        "engineers' runs, so timings are noisy.\n"
    )
    if reuse:
        text += "\nThe assign figures are those of the previous run (`--reuse-index`); the rest was re-measured.\n"
    path = write_results(name, data_out, text)
    print(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "run"])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--index", type=Path, help="where the index goes (default: under --data)")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--reuse-index", action="store_true", help="keep the last run's index and assign figures")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.data, args.items)
    else:
        run(args.data, args.items, args.torch_threads, args.index, args.skip_check, args.reuse_index)


if __name__ == "__main__":
    main()
