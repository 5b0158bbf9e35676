"""`semid serve` with one worker and with `--workers 2`, side by side in one run, on a real server (loopback).

    python benchmarks/serve_workers.py                    # MovieLens index with anchors, 3 rounds
    python benchmarks/serve_workers.py --rounds 1 --requests 4 --duration 3   # a quick smoke run

Set-up (not timed): the MovieLens items (../shared/data, 9,742 x 384) train a default-architecture
RQ-VAE briefly (benchmarks.assign_speed.quick_checkpoint; a catalog of at most 16,384 items keeps its
first-level anchors, so encoding runs the anchors' vote) and semid.service.assign.assign_catalog builds
the index. --checkpoint/--index reuse ones already built. The body: 1,024 new items like the catalog's
(catalog rows plus seeded noise, unit length), serialised once with json.dumps.

Each round starts `semid serve` with 1 worker (no flag), then with `--workers 2` (order swapped every
other round so load on the shared machine hits both alike), and measures against that server:

* encode, 1 client and 2 clients: each client a thread with its own keep-alive httpx.Client sending the
  pre-serialised 1,024-row body --requests times after one warm-up; items/s = all clients' items over
  the wall time.
* prefix look-ups: `wrk -t2 -c16 -d{duration}s` over GET /v1/prefixes/{prefix}?limit=10 with random
  prefixes (length 1..3) of indexed items (a Lua script picks one per request): requests/s, p50/p99.
  Then the same wrk phase against a server of the same worker count started with SEMID_FAST_READS=false
  (every look-up through FastAPI's routing, as before service/api/fast_reads.py): before and after, one run.
* memory of each worker: /proc/PID/smaps_rollup (RSS, PSS, shared and private pages), and /proc/PID/smaps
  summed by what is mapped: segment vector files (`*.vectors`, memory-mapped, shareable), other index files,
  shared libraries, and anonymous memory (the model, the index's arrays, Arrow buffers: private to a worker).

After the rounds, the 1,024-row encode's steps are timed one by one in this process with one torch thread (what
each of 2 workers gets on 2 cores), on the same index and body, --stages times each: decode_encode_body (bound,
parse, validation), the anchors' vote alone, encode_items (the vote, the model's other levels, look-ups of known
items), the response (result dicts, EncodeResponse validation, JSON). Their sum is set against the time per
request the 1-worker, 1-client phase measured; the rest is HTTP (the 8.6 MB body over the socket, ASGI).

Every phase records the 1-minute load average before it. The machine is shared: figures are as measured.
Writes benchmarks/results/serve_workers.{md,json} (or under SEMID_BENCH_RESULTS).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, markdown_table, write_results  # noqa: E402

HOST = "127.0.0.1"
ROWS = 1024
READY_TIMEOUT_S = 600.0
WRK_SCRIPT = """
local paths = {%s}
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def loadavg() -> float:
    return os.getloadavg()[0]


def semid_command() -> list[str]:
    exe = Path(sys.executable).parent / "semid"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "semid.service.cli"]


class Server:
    def __init__(self, index: Path, workers: int, log: Path, **env_extra: str) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.cmd = [
            *semid_command(),
            "serve",
            "--index",
            str(index),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        if workers > 1:
            self.cmd += ["--workers", str(workers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEMID_")} | env_extra
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.log = log
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"semid serve exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.pids = self._worker_pids(workers)

    def _worker_pids(self, workers: int) -> list[int]:
        if workers == 1:
            return [self.proc.pid]
        pids: set[int] = set()
        for _ in range(200):
            pids.add(httpx.get(f"{self.base}/readyz", timeout=10).json()["pid"])
            if len(pids) == workers:
                break
        return sorted(pids)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def build(workdir: Path, checkpoint: Path | None, index: Path | None) -> tuple[Path, np.ndarray]:
    import pyarrow.parquet as pq

    from benchmarks.assign_speed import quick_checkpoint
    from semid.service.assign import assign_catalog

    if not MOVIELENS.is_file():
        raise SystemExit(f"needs the MovieLens items at {MOVIELENS} (../shared/data)")
    embeddings = np.asarray(pq.read_table(MOVIELENS, columns=["embedding"]).column(0).to_pylist(), np.float32)
    if index is None:
        checkpoint = checkpoint or quick_checkpoint(embeddings, workdir / "checkpoint", epochs=2)
        index = workdir / "index"
        assign_catalog(checkpoint=checkpoint, catalog=MOVIELENS, index_dir=index)
    return index, embeddings


def body_bytes(embeddings: np.ndarray) -> bytes:
    rng = np.random.default_rng(0)
    x = embeddings[rng.choice(len(embeddings), ROWS, replace=False)] + 0.02 * rng.standard_normal((ROWS, 384))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return json.dumps({"embeddings": x.tolist()}).encode()


def encode_phase(server: Server, body: bytes, clients: int, requests: int) -> dict:
    headers = {"content-type": "application/json"}
    errors: list[str] = []

    def run(barrier: threading.Barrier) -> None:
        with httpx.Client(base_url=server.base, timeout=300) as client:
            client.post("/v1/encode", content=body, headers=headers)  # warm-up
            barrier.wait()
            for _ in range(requests):
                r = client.post("/v1/encode", content=body, headers=headers)
                if r.status_code != 200:
                    errors.append(r.text[:200])

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=run, args=(barrier,)) for _ in range(clients)]
    load = loadavg()
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": clients * requests,
        "seconds": wall,
        "items_per_s": clients * requests * ROWS / wall,
        "errors": len(errors),
        "load_1m": load,
    }


def prefix_paths(index: Path, count: int = 2000) -> list[str]:
    from semid.service.index.handle import SemanticIdIndex

    snap = SemanticIdIndex.open(index, read_only=True).snapshot
    rng = np.random.default_rng(1)
    sids = snap.state.semantic_ids
    rows = rng.integers(0, len(sids), count)
    lengths = rng.integers(1, 4, count)
    prefixes = ["-".join(str(int(c)) for c in sids[r][:n]) for r, n in zip(rows, lengths, strict=True)]
    return [f"/v1/prefixes/{p}?limit=10" for p in prefixes]


def wrk_phase(server: Server, script: Path, duration: int) -> dict:
    load = loadavg()
    cmd = ["wrk", "-t2", "-c16", f"-d{duration}s", "--latency", "-s", str(script), server.base]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(p: str) -> float | None:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        if m is None:
            return None
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "requests_per_s": rps,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(0) if errors else "",
        "load_1m": load,
        "command": " ".join(cmd[:-1]) + " URL",
    }


def memory(pids: list[int]) -> list[dict]:
    rows = []
    for pid in pids:
        fields = {}
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
        rows.append(
            {
                "pid": pid,
                "rss_mb": fields.get("Rss"),
                "pss_mb": fields.get("Pss"),
                "shared_mb": fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0),
                "private_mb": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
            }
        )
    return rows


def memory_by_mapping(pid: int) -> dict[str, dict[str, float]]:
    """RSS and PSS (MB) of one process, summed per kind of mapping (from /proc/PID/smaps)."""
    out: dict[str, dict[str, float]] = {}
    kind = "anonymous"
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
                path = head[5] if len(head) > 5 else ""
                if path.endswith(".vectors"):
                    kind = "segment vector files (mmap)"
                elif ".so" in Path(path).name:
                    kind = "shared libraries"
                elif path.startswith("/") and not path.startswith("/dev/"):
                    kind = "other files (index, Python)"
                else:
                    kind = "anonymous (model, index arrays, Arrow buffers)"
                continue
            if head and head[0] in ("Rss:", "Pss:"):
                entry = out.setdefault(kind, {"rss_mb": 0.0, "pss_mb": 0.0})
                entry[head[0].rstrip(":").lower() + "_mb"] += int(head[1]) / 1024
    return out


def stages(index: Path, body: bytes, repeat: int) -> list[dict]:
    """The 1,024-row JSON encode's steps one by one, in this process, one torch thread (see the docstring)."""
    import torch
    from pydantic import TypeAdapter

    from semid.service.api import bodies
    from semid.service.api.schemas import EncodeResponse
    from semid.service.api.settings import ServiceSettings
    from semid.service.api.state import ServiceState
    from semid.service.placement import encode_items

    torch.set_num_threads(1)
    state = ServiceState.load(ServiceSettings(index_dir=index))
    tok = state.encoder.tokenizer
    x = bodies.decode_encode_body(state, body, False, False).embeddings
    target = tok.normalizer(torch.from_numpy(x))
    out = encode_items(state.index, state.encoder, x)
    token = state.index.layout.token
    response = TypeAdapter(EncodeResponse)

    def respond() -> bytes:
        results = [
            {"base_code": b, "semantic_id": s, "token": token(s) if s else None, "item_id": None, "existing": e}
            for b, s, e in zip(out.base_codes.tolist(), out.semantic_ids, out.existing, strict=True)
        ]
        return response.dump_json(response.validate_python({"results": results, "segment": out.segment}))

    steps = {
        "parse + validate (decode_encode_body)": lambda: bodies.decode_encode_body(state, body, False, False),
        "anchors' vote (inside encode_items)": (
            (lambda: tok.anchors.vote(target, tok.quantizer.codebooks[0])) if tok.anchors is not None else None
        ),
        "encode_items (vote + other levels + look-ups)": lambda: encode_items(state.index, state.encoder, x),
        "serialise (result dicts + EncodeResponse + JSON)": respond,
    }
    samples: dict[str, list[float]] = {name: [] for name, fn in steps.items() if fn is not None}
    load = loadavg()
    for _ in range(repeat):
        for name in samples:
            start = time.perf_counter()
            steps[name]()
            samples[name].append(time.perf_counter() - start)
    return [
        {"step": name, "median_ms": 1e3 * statistics.median(v), "best_ms": 1e3 * min(v), "load_1m": load}
        for name, v in samples.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10, help="Encode requests per client per phase.")
    parser.add_argument("--duration", type=int, default=10, help="Seconds of each wrk phase.")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--index", type=Path)
    parser.add_argument("--name", default="serve_workers")
    parser.add_argument("--stages", type=int, default=10, help="Repeats of each in-process step (0: skip).")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (Debian: apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="semid-serve-workers-"))
    try:
        index, embeddings = build(workdir, args.checkpoint, args.index)
        body = body_bytes(embeddings)
        script = workdir / "prefixes.lua"
        script.write_text(WRK_SCRIPT % ", ".join(json.dumps(p) for p in prefix_paths(index)))
        runs: list[dict] = []
        for r in range(args.rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                server = Server(index, workers, workdir / f"serve-{r}-{workers}.log")
                try:
                    run = {"round": r, "workers": workers}
                    run["encode_1_client"] = encode_phase(server, body, 1, args.requests)
                    run["encode_2_clients"] = encode_phase(server, body, 2, args.requests)
                    run["prefix_wrk"] = wrk_phase(server, script, args.duration)
                    run["memory"] = memory(server.pids)
                    run["memory_by_mapping"] = [memory_by_mapping(pid) for pid in server.pids]
                finally:
                    server.stop()
                # the same look-ups with every request through FastAPI's routing (the fast path off): before/after
                server = Server(index, workers, workdir / f"serve-{r}-{workers}-routes.log", SEMID_FAST_READS="false")
                try:
                    run["prefix_wrk_routes"] = wrk_phase(server, script, args.duration)
                finally:
                    server.stop()
                runs.append(run)
                print(json.dumps(run), flush=True)
        steps = stages(index, body, args.stages) if args.stages else []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def median(workers: int, key: str, field: str) -> float:
        return statistics.median(run[key][field] for run in runs if run["workers"] == workers)

    summary = []
    for workers in (1, 2):
        mem = [run["memory"] for run in runs if run["workers"] == workers][-1]
        summary.append(
            {
                "workers": workers,
                "encode items/s, 1 client": round(median(workers, "encode_1_client", "items_per_s")),
                "encode items/s, 2 clients": round(median(workers, "encode_2_clients", "items_per_s")),
                "prefix req/s (wrk, 16 conn.)": round(median(workers, "prefix_wrk", "requests_per_s")),
                "prefix req/s, fast path off": round(median(workers, "prefix_wrk_routes", "requests_per_s")),
                "prefix p99 ms": median(workers, "prefix_wrk", "p99_ms"),
                "RSS MB per worker": statistics.mean(m["rss_mb"] for m in mem),
                "PSS MB per worker": statistics.mean(m["pss_mb"] for m in mem),
                "shared MB per worker": statistics.mean(m["shared_mb"] for m in mem),
            }
        )
    speedup = summary[1]["encode items/s, 2 clients"] / summary[0]["encode items/s, 2 clients"]
    per_run = [
        {
            "round": run["round"],
            "workers": run["workers"],
            "encode 1 client": round(run["encode_1_client"]["items_per_s"]),
            "encode 2 clients": round(run["encode_2_clients"]["items_per_s"]),
            "prefix req/s": round(run["prefix_wrk"]["requests_per_s"]),
            "prefix req/s, fast path off": round(run["prefix_wrk_routes"]["requests_per_s"]),
            "load before encode": run["encode_1_client"]["load_1m"],
            "load before wrk": run["prefix_wrk"]["load_1m"],
            "errors": run["encode_1_client"]["errors"]
            + run["encode_2_clients"]["errors"]
            + run["prefix_wrk"]["non_2xx"]
            + run["prefix_wrk_routes"]["non_2xx"],
        }
        for run in runs
    ]
    two = summary[1]
    goals = [
        {"goal": "2 workers >= 1.8x one (encode, 2 clients)", "measured": f"{speedup:.2f}x", "met": speedup >= 1.8},
        {
            "goal": ">= 20,000 items/s (2 workers, 2 clients)",
            "measured": round(two["encode items/s, 2 clients"]),
            "met": two["encode items/s, 2 clients"] >= 20_000,
        },
        {
            "goal": ">= 5,000 prefix req/s (2 workers, wrk 16 conn.)",
            "measured": round(two["prefix req/s (wrk, 16 conn.)"]),
            "met": two["prefix req/s (wrk, 16 conn.)"] >= 5_000,
        },
    ]
    last_two = [run for run in runs if run["workers"] == 2][-1]
    mapping_rows = [
        {"worker pid": pid, "mapping": kind, "RSS MB": v["rss_mb"], "PSS MB": v["pss_mb"]}
        for pid, kinds in zip([m["pid"] for m in last_two["memory"]], last_two["memory_by_mapping"], strict=True)
        for kind, v in sorted(kinds.items())
    ]
    per_request_ms = 1e3 * ROWS / summary[0]["encode items/s, 1 client"]
    stage_total = sum(row["median_ms"] for row in steps if not row["step"].startswith("anchors"))
    markdown = (
        "Medians over the rounds (MovieLens index, 9,742 items, first-level anchors on; 1,024-row JSON encode;"
        " wrk -t2 -c16 prefix look-ups). The machine is shared with other jobs: see the load averages.\n\n"
        + markdown_table(summary, list(summary[0]))
        + f"\n\n2 workers / 1 worker, encode with 2 clients: {speedup:.2f}x\n\n"
        + markdown_table(goals, ["goal", "measured", "met"])
        + "\n\nEach run:\n\n"
        + markdown_table(per_run, list(per_run[0]))
        + "\n\nMemory of each worker of the last 2-worker run, by mapping (/proc/PID/smaps; PSS splits shared pages"
        " between the processes mapping them):\n\n"
        + markdown_table(mapping_rows, ["worker pid", "mapping", "RSS MB", "PSS MB"])
    )
    if steps:
        markdown += (
            "\n\nWhere a 1,024-row JSON encode spends its time: each step in-process, 1 torch thread, same index and"
            f" body (the vote is part of encode_items, not added twice). Steps' sum {stage_total:.1f} ms; one request"
            f" to 1 worker with 1 client took {per_request_ms:.1f} ms (median over the rounds), so HTTP (the body over"
            f" the socket, ASGI) and the server's threads took the other {per_request_ms - stage_total:.1f} ms.\n\n"
            + markdown_table(steps, ["step", "median_ms", "best_ms", "load_1m"])
        )
    data = {"rounds": runs, "summary": summary, "speedup_2_clients": speedup, "goals": goals, "stages": steps}
    path = write_results(args.name, data, markdown)
    print(markdown)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
