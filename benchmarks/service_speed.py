"""HTTP speed of `semid serve` against a real uvicorn server on loopback (127.0.0.1 only).

    python benchmarks/service_speed.py                        # the full figures: 100k-item index, 10 s phases
    python benchmarks/service_speed.py --items 20000 --duration 2   # a quick smoke run
    python benchmarks/service_speed.py --index idx/           # serve a copy of an existing index

Set-up (not measured): without --index a seeded clustered synthetic catalog of --items x 384 is
written to a temporary Parquet file, a default-architecture RQ-VAE is trained for 4 epochs on its
first 20k rows, and semid.service.assign.assign_catalog builds the index. With --index, the index is
copied to a temporary directory first (the assign phase below writes to it). Then
`semid serve --index DIR --port <free port> --log-level warning` starts as a subprocess with no
SEMID_* variables in its environment (so SEMID_API_KEY is unset and writes are open), and the
benchmark waits for /readyz (bounded poll). The server is killed in a finally.

Measured with httpx, every loop bounded in requests and in time:

* GET /healthz, sequential over one keep-alive httpx.Client: the per-request floor of the stack.
* POST /v1/encode with ONE embedding, sequential, --single-requests (2000) after a warm-up:
  p50/p99 latency in ms. Bars: p50 <= 3 ms, p99 <= 10 ms.
* POST /v1/encode with 1024 embeddings, --batch-requests (>= 20), body serialised once up front
  and sent as bytes with the JSON content type: items/s (bar >= 20,000 items/s); the client-side
  json.dumps and response.json() times are reported separately.
* POST /v1/assign with the same 1024 embeddings as an Arrow IPC stream under fresh item ids (new
  items, registered: a segment per request), and the same bodies again (all items known).
* GET /v1/prefixes/{prefix}?limit=10 and GET /v1/prefixes/{prefix}/children with --concurrency (16)
  asyncio tasks sharing one httpx.AsyncClient (16 connections) for --duration seconds each, random
  prefixes of length 1..3 drawn from indexed items: requests/s, p50/p99, errors. Bar for the
  prefix look-ups: >= 2,000 requests/s. Also one sequential client, for the latency without queueing.
* The server-side steps of a 1024-embedding /v1/encode and /v1/assign, run in this process before
  the server starts (json.loads, pydantic validation, list -> numpy, encoding, response rendering;
  Arrow read), to show where the server's time goes.

For each phase the server's and this client's CPU seconds are recorded (/proc/PID/stat and
time.process_time): on a 2-core machine the client competes with the server for the cores.

Writes benchmarks/results/service_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.assign_speed import (  # noqa: E402
    TRAIN_ROWS,
    arrow_table,
    clustered_chunks,
    quick_checkpoint,
    write_catalog_chunked,
)
from benchmarks.common import markdown_table, write_results  # noqa: E402
from tests.servers import HOST, Server, proc_cpu_seconds  # noqa: E402  (the server the HTTP tests start)

JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
BATCH = 1024
BAR_SINGLE_P50_MS = 3.0
BAR_SINGLE_P99_MS = 10.0
BAR_BATCH_ITEMS_S = 20_000.0
BAR_PREFIX_RPS = 2_000.0
PREFIX_POOL = 5_000
COLUMNS = [
    "phase",
    "requests",
    "errors",
    "seconds",
    "req_per_s",
    "items_per_s",
    "p50_ms",
    "p99_ms",
    "mean_ms",
    "server_cpu_s",
    "client_cpu_s",
    "bar",
    "met",
]


# --- process and CPU accounting ----------------------------------------------------------------------------------


def ipc_bytes(table: pa.Table) -> bytes:
    """A table as an Arrow IPC stream body."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def proc_threads(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Phase:
    """Wall, server CPU and client CPU seconds around one measurement."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self) -> Phase:
        gc.collect()
        self.s0, self.c0, self.t0 = self.server.cpu(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        s1 = self.server.cpu()
        self.server_cpu = None if s1 is None or self.s0 is None else s1 - self.s0
        self.client_cpu = time.process_time() - self.c0


# --- measurement loops -------------------------------------------------------------------------------------------


def summarise(
    name: str, ns: list[int], errors: Counter, phase: Phase, *, items_per_request: int = 0, bar: str = ""
) -> dict:
    ms = np.asarray(ns, dtype=np.float64) / 1e6 if ns else np.zeros(1)
    n = len(ns)
    row = {
        "phase": name,
        "requests": n,
        "errors": sum(errors.values()),
        "seconds": round(phase.seconds, 3),
        "req_per_s": round(n / phase.seconds, 1),
        "items_per_s": int(round(n * items_per_request / phase.seconds)) if items_per_request else "",
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "server_cpu_s": round(phase.server_cpu, 2) if phase.server_cpu is not None else "",
        "client_cpu_s": round(phase.client_cpu, 2),
        "bar": bar,
    }
    if errors:
        row["error_kinds"] = dict(errors.most_common(5))
    return row


def sequential(
    client: httpx.Client, send: Callable[[int], httpx.Response], requests: int, warmup: int, time_limit: float
) -> tuple[list[int], Counter]:
    """send(i) for i in range(warmup + requests), timing the last `requests`; stops at time_limit seconds."""
    for i in range(warmup):
        send(i)
    ns: list[int] = []
    errors: Counter = Counter()
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + time_limit
    for i in range(requests):
        t0 = clock()
        try:
            r = send(warmup + i)
            if r.status_code != 200:
                errors[f"HTTP {r.status_code}"] += 1
        except httpx.HTTPError as err:
            errors[type(err).__name__] += 1
        ns.append(clock() - t0)
        if time.perf_counter() > deadline:
            break
    return ns, errors


async def _closed_loop(
    base: str, paths: list[str], concurrency: int, duration: float, max_requests: int
) -> tuple[list[int], Counter]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ns: list[int] = []
    errors: Counter = Counter()
    issued = 0
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10.0) as client:
        # warm-up: open every connection
        await asyncio.gather(*(client.get(paths[i % len(paths)]) for i in range(concurrency)))
        deadline = time.perf_counter() + duration
        clock = time.perf_counter_ns

        async def worker() -> None:
            nonlocal issued
            while time.perf_counter() < deadline and issued < max_requests:
                path = paths[issued % len(paths)]
                issued += 1
                t0 = clock()
                try:
                    r = await client.get(path)
                    if r.status_code != 200:
                        errors[f"HTTP {r.status_code}"] += 1
                except httpx.HTTPError as err:
                    errors[type(err).__name__] += 1
                ns.append(clock() - t0)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=duration + 60)
    return ns, errors


def _threaded_loop(
    base: str, paths: list[str], concurrency: int, duration: float, max_requests: int
) -> tuple[list[int], Counter]:
    """`concurrency` threads, each with its own keep-alive httpx.Client, until the deadline."""
    results: list[tuple[list[int], Counter]] = []
    lock = threading.Lock()
    issued = [0]
    clients = [httpx.Client(base_url=base, timeout=10.0) for _ in range(concurrency)]
    try:
        for i, client in enumerate(clients):  # warm-up: open every connection
            client.get(paths[i % len(paths)])
        start = threading.Barrier(concurrency + 1)
        deadline = [0.0]

        def worker(client: httpx.Client) -> None:
            ns: list[int] = []
            errors: Counter = Counter()
            clock = time.perf_counter_ns
            start.wait()
            while time.perf_counter() < deadline[0]:
                with lock:
                    k = issued[0]
                    if k >= max_requests:
                        break
                    issued[0] = k + 1
                t0 = clock()
                try:
                    r = client.get(paths[k % len(paths)])
                    if r.status_code != 200:
                        errors[f"HTTP {r.status_code}"] += 1
                except httpx.HTTPError as err:
                    errors[type(err).__name__] += 1
                ns.append(clock() - t0)
            with lock:
                results.append((ns, errors))

        threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
        for t in threads:
            t.start()
        deadline[0] = time.perf_counter() + duration
        start.wait()
        for t in threads:
            t.join(timeout=duration + 60)
    finally:
        for client in clients:
            client.close()
    ns_all: list[int] = []
    errors_all: Counter = Counter()
    for ns, errors in results:
        ns_all += ns
        errors_all += errors
    missing = concurrency - len(results)
    if missing:
        errors_all["thread did not finish"] += missing
    return ns_all, errors_all


def concurrent(server: Server, name: str, paths: list[str], args: argparse.Namespace) -> dict:
    max_requests = int(args.duration * 50_000)
    loop = _threaded_loop if args.client == "threads" else _closed_loop
    with Phase(server) as phase:
        if args.client == "threads":
            ns, errors = loop(server.base, paths, args.concurrency, args.duration, max_requests)
        else:
            ns, errors = asyncio.run(loop(server.base, paths, args.concurrency, args.duration, max_requests))
    return summarise(f"{name} ({args.concurrency} {args.client})", ns, errors, phase)


# --- server-side steps, in process -------------------------------------------------------------------------------


WRK_SCRIPT = """
paths = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
"""


def parse_wrk(out: str, returncode: int = 0) -> dict:
    """Requests, errors and rate from wrk's summary. ``errors`` counts every failed request wrk reports:
    non-2xx/3xx answers, and socket errors (connect, read, write) and timeouts, which wrk prints on a
    separate line and leaves out of its request count's failures; a wrk that failed or printed no summary
    counts as one error, so a broken run never reads as a clean one."""
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    total = re.search(r"([0-9]+) requests in ([0-9.]+)(us|ms|s|m|h)\b", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: ([0-9]+)", out)
    sock = re.search(r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)", out)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True)) if sock else {}
    )
    seconds = None
    if total:
        seconds = float(total.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[total.group(3)]
    failed_run = returncode != 0 or total is None
    errors = (int(non2xx.group(1)) if non2xx else 0) + sum(socket_errors.values()) + int(failed_run)
    kinds = {f"socket {k}": v for k, v in socket_errors.items() if v}
    if non2xx and int(non2xx.group(1)):
        kinds["non-2xx"] = int(non2xx.group(1))
    if failed_run:
        kinds["wrk failed or printed no summary"] = 1
    return {
        "requests": int(total.group(1)) if total else None,
        "errors": errors,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": socket_errors,
        "timeouts": socket_errors.get("timeout", 0),
        "wrk_failed": failed_run,
        "error_kinds": kinds,
        "seconds": seconds,
        "req_per_s": float(rps.group(1)) if rps else 0.0,
    }


def wrk_phase(server: Server, name: str, paths: list[str], args: argparse.Namespace, tmp: Path) -> dict:
    """The same look-ups driven by wrk (a C load generator, 2 threads, --concurrency connections), whose
    client costs far less CPU than Python's, so more of the 2 cores go to the server."""
    script = tmp / "prefixes.lua"
    script.write_text(WRK_SCRIPT % ", ".join(f'"{p}"' for p in paths[:5000]))
    cpu0 = proc_cpu_seconds(server.proc.pid)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{args.concurrency}",
            f"-d{max(2, int(args.duration))}s",
            "--latency",
            "-s",
            str(script),
            server.base,
        ],
        capture_output=True,
        text=True,
        timeout=args.duration + 60,
    )
    cpu1 = proc_cpu_seconds(server.proc.pid)

    def ms(label: str) -> float | None:
        m = re.search(rf"^\s*{label}\s+([0-9.]+)(us|ms|s)\s*$", out.stdout, re.M)
        if not m:
            return None
        return round(float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)], 3)

    parsed = parse_wrk(out.stdout, out.returncode)
    return {
        "phase": f"{name} (wrk, {args.concurrency} connections)",
        **parsed,
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "server_cpu_s": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
        "wrk_output": (out.stdout + out.stderr)[-1500:],
    }


def index_on_disk(index_dir: Path) -> dict:
    """Items and segments the index's manifest lists now (what the server has written)."""
    manifest = json.loads((index_dir / "manifest.json").read_text())
    return {"items": int(manifest["item_count"]), "segments": len(manifest["segments"])}


def assign_sentence(before: dict, after: dict, batch: int) -> str:
    """What the Arrow assign phases did to the index, from the measured manifest before and after."""
    added, segments = after["items"] - before["items"], after["segments"] - before["segments"]
    requests = added // batch  # every writing request registers one batch of new items
    how = (
        "one new segment per request"
        if segments == requests
        else f"{segments:,} more segment(s) for {requests:,} writing requests: small writes fold into the tail segment"
    )
    return (
        f"The Arrow assign phase registered {added:,} new items in {requests:,} requests of {batch:,} "
        f"(warm-up included), "
        f"written to disk: the index went from {before['segments']:,} to {after['segments']:,} segment(s) and "
        f"{before['items']:,} to {after['items']:,} items ({how})."
    )


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _one_thread(fn: Callable, *a: object, **kw: object) -> object:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*a, **kw)
    finally:
        torch.set_num_threads(before)


def server_side_steps(index_dir: Path, body: bytes, arrow_body: bytes, server_threads: int) -> list[dict]:
    """Time the steps a 1024-embedding request takes in the server, here in this process (no HTTP)."""
    import torch
    from fastapi.responses import JSONResponse

    from semid.model.data.catalog import embeddings_to_numpy
    from semid.service.api.schemas import EncodeRequest
    from semid.service.encoder import CheckpointEncoder
    from semid.service.ids.layout import IdLayout

    encoder = CheckpointEncoder.from_dir(index_dir / "checkpoint")
    if server_threads:
        torch.set_num_threads(server_threads)  # as the server does with --workers-threads
    threads = torch.get_num_threads()
    layout: IdLayout = encoder.layout
    obj = json.loads(body)
    req = EncodeRequest.model_validate(obj)
    x = np.asarray(req.embeddings, dtype=np.float32)
    enc = encoder.encode(x, alternatives=1)

    def render() -> bytes:
        results = [
            {"base_code": b, "semantic_id": None, "token": None, "item_id": None, "existing": None}
            for b in enc.base_codes.tolist()
        ]
        return JSONResponse({"results": results, "segment": None}).body

    def arrow_read() -> np.ndarray:
        table = pa.ipc.open_stream(arrow_body).read_all()
        return embeddings_to_numpy(table.column("embedding").combine_chunks(), "embedding", 0, None)

    steps = [
        ("json.loads(body)", lambda: json.loads(body)),
        ("EncodeRequest.model_validate(dict)", lambda: EncodeRequest.model_validate(obj)),
        ("EncodeRequest.model_validate_json(body)", lambda: EncodeRequest.model_validate_json(body)),
        ("np.asarray(list of lists, float32)", lambda: np.asarray(req.embeddings, dtype=np.float32)),
        ("encoder.check(x)", lambda: encoder.check(x)),
        (f"encoder.encode(x, alternatives=1), {threads} torch threads", lambda: encoder.encode(x, alternatives=1)),
        ("encoder.encode(x, alternatives=1), 1 torch thread", lambda: _one_thread(encoder.encode, x, alternatives=1)),
        ("render the JSON response", render),
        ("Arrow IPC read + embeddings_to_numpy", arrow_read),
        ("layout.tokens(1024 ids) (assign response)", lambda: layout.tokens(np.zeros((BATCH, layout.width), int))),
    ]
    return [{"step": name, "ms": round(1000 * median_seconds(fn), 3)} for name, fn in steps]


# --- set-up ------------------------------------------------------------------------------------------------------


def build_index(workdir: Path, items: int, dim: int, seed: int) -> tuple[Path, dict]:
    from semid.service.assign import assign_catalog

    catalog = workdir / "catalog.parquet"
    t0 = time.perf_counter()
    train_emb = write_catalog_chunked(catalog, items, dim, seed=seed, keep_rows=min(TRAIN_ROWS, items))
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ckpt = quick_checkpoint(train_emb, workdir / "checkpoint")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = assign_catalog(checkpoint=ckpt, catalog=catalog, index_dir=workdir / "index")
    assign_s = time.perf_counter() - t0
    catalog.unlink()
    info = {
        "built": f"synthetic {items} x {dim}, throwaway default RQ-VAE (4 epochs on {len(train_emb)} rows)",
        "generation_s": round(gen_s, 2),
        "train_s": round(train_s, 2),
        "assign_s": round(assign_s, 2),
        "assign_summary": summary.to_dict(),
    }
    return workdir / "index", info


def draw_prefixes(index_dir: Path, seed: int) -> tuple[list[str], int, int]:
    """Prefix strings (length 1..L) of indexed items; also the largest int item id and the item count."""
    from semid.service.index.handle import SemanticIdIndex

    index = SemanticIdIndex.open(index_dir)
    levels = index.layout.levels
    rng = np.random.default_rng(seed + 29)
    rows = rng.integers(0, len(index), size=PREFIX_POOL)
    lengths = rng.integers(1, levels + 1, size=PREFIX_POOL)
    sids = index.state.semantic_ids[rows]
    prefixes = ["-".join(str(int(c)) for c in s[:n]) for s, n in zip(sids, lengths, strict=True)]
    max_id = int(np.max(index.state.item_ids)) if index.id_kind == "int" and len(index) else 0
    n = len(index)
    del index
    gc.collect()
    return prefixes, max_id, n


def client_setup(args: argparse.Namespace) -> dict:
    return {
        "client": f"this process: httpx {httpx.__version__}; sequential phases over one keep-alive httpx.Client; "
        + (
            f"concurrent phases: {args.concurrency} threads, each with its own keep-alive httpx.Client"
            if args.client == "threads"
            else f"concurrent phases: {args.concurrency} asyncio tasks on one event loop sharing one "
            f"httpx.AsyncClient ({args.concurrency} connections)"
        ),
        "client_threads": threading.active_count(),
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "uvloop_installed": importlib.util.find_spec("uvloop") is not None,
        "httptools_installed": importlib.util.find_spec("httptools") is not None,
        "load_average_start": os.getloadavg(),
    }


# --- main --------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000, help="items in the synthetic index (default 100000)")
    ap.add_argument("--dim", type=int, default=384, help="embedding dimension of the synthetic catalog (default 384)")
    ap.add_argument("--index", help="serve a copy of this index instead of building one")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of each concurrent phase (default 10)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument(
        "--client",
        choices=["threads", "asyncio"],
        default="threads",
        help="concurrent clients as threads with one httpx.Client each (default) or asyncio tasks on one "
        "httpx.AsyncClient",
    )
    ap.add_argument("--single-requests", type=int, default=2000, help="sequential 1-embedding encodes (default 2000)")
    ap.add_argument("--batch-requests", type=int, default=20, help="1024-embedding requests per phase (default 20)")
    ap.add_argument("--server-threads", type=int, default=0, help="semid serve --workers-threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where the temporary index goes (default: the system temp dir)")
    args = ap.parse_args()
    if args.items < 2 or args.duration <= 0 or args.concurrency < 1 or args.single_requests < 1:
        ap.error("--items >= 2, --duration > 0, --concurrency >= 1, --single-requests >= 1")
    if args.batch_requests < 1:
        ap.error("--batch-requests must be >= 1")

    tmp = Path(tempfile.mkdtemp(prefix="semid-service-speed-", dir=args.workdir))
    server: Server | None = None
    rows: list[dict] = []
    extra: dict = {}
    try:
        if args.index:
            index_dir = tmp / "index"
            shutil.copytree(args.index, index_dir, ignore=shutil.ignore_patterns("index.lock"))
            build = {"built": f"copy of {args.index}"}
        else:
            index_dir, build = build_index(tmp, args.items, args.dim, args.seed)
        prefixes, max_id, index_items = draw_prefixes(index_dir, args.seed)
        prefix_paths = [f"/v1/prefixes/{p}?limit=10" for p in prefixes]
        children_paths = [f"/v1/prefixes/{p}/children" for p in prefixes]
        from semid.model.training.checkpoint import load_checkpoint

        dim = int(load_checkpoint(index_dir / "checkpoint").config.model.input_dim)

        # request bodies, built before anything is timed
        _, emb = next(clustered_chunks(BATCH + 64, dim, seed=args.seed + 1001))
        singles = [json.dumps({"embeddings": [emb[i].tolist()]}).encode() for i in range(64)]
        batch_list = emb[:BATCH].tolist()
        t0 = time.perf_counter()
        batch_body = json.dumps({"embeddings": batch_list}).encode()
        dumps_ms = 1000 * (time.perf_counter() - t0)
        fresh = max(max_id, 0) + 1_000_000_000
        arrow_bodies = []
        for k in range(args.batch_requests + 1):
            ids = np.arange(fresh + k * BATCH, fresh + (k + 1) * BATCH, dtype=np.int64)
            arrow_bodies.append(ipc_bytes(arrow_table(ids, emb[:BATCH])))

        steps = server_side_steps(index_dir, batch_body, arrow_bodies[0], args.server_threads)
        gc.collect()

        server = Server(index_dir, tmp / "server.log", args.server_threads)
        ready_s = server.start()
        setup = client_setup(args)
        setup["server"] = (
            f"`{' '.join(server.cmd[1:]).replace(str(tmp), '$TMP')}`: one uvicorn process, asyncio loop "
            f"({'uvloop' if setup['uvloop_installed'] else 'no uvloop'}, "
            f"{'httptools' if setup['httptools_installed'] else 'h11'}), sync routes in the anyio thread pool; "
            f"torch threads {args.server_threads or 'default (= cores)'}"
        )
        setup["server_threads_at_ready"] = proc_threads(server.proc.pid)
        headers_json = {"content-type": JSON}
        headers_arrow = {"content-type": ARROW_STREAM}

        with httpx.Client(base_url=server.base, timeout=60.0) as client:
            limit = max(30.0, args.duration * 6)
            with Phase(server) as ph:
                ns, errors = sequential(client, lambda i: client.get("/healthz"), 2000, 200, limit)
            rows.append(summarise("GET /healthz (1 client)", ns, errors, ph))

            def single(i: int) -> httpx.Response:
                return client.post("/v1/encode", content=singles[i % len(singles)], headers=headers_json)

            with Phase(server) as ph:
                ns, errors = sequential(client, single, args.single_requests, 200, limit)
            row = summarise(
                "POST /v1/encode, 1 embedding (1 client)",
                ns,
                errors,
                ph,
                items_per_request=1,
                bar=f"p50 <= {BAR_SINGLE_P50_MS:g} ms, p99 <= {BAR_SINGLE_P99_MS:g} ms",
            )
            row["met"] = row["p50_ms"] <= BAR_SINGLE_P50_MS and row["p99_ms"] <= BAR_SINGLE_P99_MS
            rows.append(row)

            def batch_phase(label: str, body: bytes, headers: dict) -> None:
                def post(i: int) -> httpx.Response:
                    return client.post("/v1/encode", content=body, headers=headers)

                with Phase(server) as ph:
                    ns, errors = sequential(client, post, args.batch_requests, 2, limit)
                row = summarise(
                    f"POST /v1/encode, {BATCH} embeddings {label} (1 client)",
                    ns,
                    errors,
                    ph,
                    items_per_request=BATCH,
                    bar=f">= {BAR_BATCH_ITEMS_S:,.0f} items/s",
                )
                row["met"] = row["items_per_s"] >= BAR_BATCH_ITEMS_S
                rows.append(row)

            batch_phase("JSON", batch_body, headers_json)
            response = client.post("/v1/encode", content=batch_body, headers=headers_json)
            t0 = time.perf_counter()
            response.json()
            extra["batch_client"] = {
                "body_bytes": len(batch_body),
                "json_dumps_ms": round(dumps_ms, 2),
                "response_bytes": len(response.content),
                "response_json_ms": round(1000 * (time.perf_counter() - t0), 2),
            }

            emb_table = pa.table({"embedding": arrow_table(np.arange(BATCH), emb[:BATCH]).column("embedding")})
            batch_phase("Arrow IPC", ipc_bytes(emb_table), headers_arrow)

            def arrow(i: int) -> httpx.Response:
                return client.post("/v1/assign", content=arrow_bodies[i], headers=headers_arrow)

            extra["before_assign"] = index_on_disk(index_dir)

            with Phase(server) as ph:
                ns, errors = sequential(client, arrow, args.batch_requests, 1, limit)
            rows.append(
                summarise(
                    f"POST /v1/assign, {BATCH} new items Arrow (1 client)", ns, errors, ph, items_per_request=BATCH
                )
            )
            check = arrow(0).json()["results"]  # already registered in the warm-up
            extra["assign_again_all_existing"] = all(r["existing"] for r in check)
            with Phase(server) as ph:
                ns, errors = sequential(client, arrow, args.batch_requests, 1, limit)
            rows.append(
                summarise(
                    f"POST /v1/assign, {BATCH} known items Arrow (1 client)", ns, errors, ph, items_per_request=BATCH
                )
            )
            extra["after_assign"] = index_on_disk(index_dir)

            def prefix(i: int) -> httpx.Response:
                return client.get(prefix_paths[i % len(prefix_paths)])

            with Phase(server) as ph:
                ns, errors = sequential(client, prefix, 2000, 100, limit)
            rows.append(summarise("GET /v1/prefixes/{p}?limit=10 (1 client)", ns, errors, ph))

        row = concurrent(server, "GET /v1/prefixes/{p}?limit=10", prefix_paths, args)
        row["bar"] = f">= {BAR_PREFIX_RPS:,.0f} req/s"
        row["met"] = row["req_per_s"] >= BAR_PREFIX_RPS
        rows.append(row)
        rows.append(concurrent(server, "GET /v1/prefixes/{p}/children", children_paths, args))
        if shutil.which("wrk"):
            row = wrk_phase(server, "GET /v1/prefixes/{p}?limit=10", prefix_paths, args, tmp)
            row["bar"] = f">= {BAR_PREFIX_RPS:,.0f} req/s"
            row["met"] = row["req_per_s"] >= BAR_PREFIX_RPS
            rows.append(row)
        setup["server_threads_at_end"] = proc_threads(server.proc.pid)
        setup["load_average_end"] = os.getloadavg()
        server_log = server.log_tail()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    errors_total = sum(r["errors"] for r in rows)
    bars = {r["phase"]: {"bar": r["bar"], "met": r["met"]} for r in rows if r.get("bar")}
    data = {
        "index": {**build, "items": index_items, "dim": dim},
        "setup": setup,
        "server_ready_seconds": round(ready_s, 2),
        "rows": rows,
        "bars": bars,
        "errors_total": errors_total,
        "batch_client": extra.get("batch_client"),
        "assign_again_all_existing": extra.get("assign_again_all_existing"),
        "server_side_steps_1024": steps,
        "options": vars(args),
        "server_log_tail": server_log[-2000:],
    }
    bc = extra["batch_client"]
    md = (
        f"Index: {index_items} items x {dim} dims ({build['built']}). Server ready {ready_s:.1f} s after spawn.\n\n"
        f"Server: {setup['server']}. Client: {setup['client']}. Machine: {setup['cpus']} CPUs, shared by client "
        f"and server: **the client competes with the server for the cores** (server_cpu_s and client_cpu_s "
        f"below are the CPU seconds each used in the phase; their sum over seconds is the cores used). "
        f"Load average at start {tuple(round(x, 2) for x in setup['load_average_start'])}, at end "
        f"{tuple(round(x, 2) for x in setup['load_average_end'])}. All traffic on {HOST}.\n\n"
    )
    md += markdown_table(rows, COLUMNS)
    md += (
        f"\n\nLatency: per request, client send to full response read (perf_counter_ns), after a warm-up; in the "
        f"concurrent phases it includes waiting for the client's own threads (GIL) or event loop. Errors (non-200 "
        f"or transport): "
        f"{errors_total} in total.\n\n"
        f"{BATCH}-embedding JSON body: {bc['body_bytes'] / 2**20:.2f} MiB, serialised once before timing "
        f"(client json.dumps {bc['json_dumps_ms']:.1f} ms, not in the figures); response {bc['response_bytes']:,} "
        f"bytes, client response.json() {bc['response_json_ms']:.1f} ms (not in the figures: the client only reads "
        f"the bytes). {assign_sentence(extra['before_assign'], extra['after_assign'], BATCH)} "
        f"The second assign phase sends the same bodies again (all known: no write; all existing: "
        f"{extra.get('assign_again_all_existing')}). The prefix phases run after them; the prefixes are drawn "
        f"from the original items.\n\n"
        f"Server-side steps of one {BATCH}-embedding request, timed in the benchmark process before the server "
        f"started (median of 5):\n\n"
    )
    md += markdown_table(steps, ["step", "ms"])
    md += "\n\nBars: " + "; ".join(
        f"{name}: {b['bar']} ({'met' if b['met'] else 'not met'})" for name, b in bars.items()
    )
    path = write_results("service_speed", data, md)
    print(md)
    print(f"written to {path}")
    if errors_total:
        print(f"warning: {errors_total} requests failed; see the rows' error_kinds")


if __name__ == "__main__":
    main()
