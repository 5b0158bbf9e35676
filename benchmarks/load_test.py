"""A mixed read/write load against a real `semid serve` on loopback (127.0.0.1 only), for a long time.

    python benchmarks/load_test.py                              # the full run: 50k x 384 index, 600 s, 8 workers
    python benchmarks/load_test.py --items 20000 --duration 10  # a quick smoke run
    python benchmarks/load_test.py --index idx/                 # serve a temporary copy of an existing index

Set-up (not measured): without --index a seeded clustered synthetic catalog of --items x --dim is written to a
temporary Parquet file, a default-architecture RQ-VAE is trained for 4 epochs on its first 20k rows and
service.assign.assign_catalog builds the index (benchmarks/service_speed.py's build_index). With --index the index is
copied to a temporary directory first (the load registers items in it). Random prefixes of length 1..L are drawn
from the indexed items. `semid serve` starts as a subprocess on a free loopback port with SEMID_API_KEY set to a
random key (the only SEMID_* variable in its environment), and the run waits for /readyz.

The load (`run_load`): --concurrency worker threads, each with its own keep-alive httpx.Client, for --duration
seconds (and at most 5,000 requests per second of duration per worker), each request picked at random:

* 70 % GET /v1/prefixes/{p}?limit=10 for a random existing prefix,
* 10 % GET /v1/prefixes/{p}/children,
* 15 % POST /v1/encode of 1 random unit embedding (JSON, no API key needed),
* 5 % POST /v1/assign of 4 NEW items (JSON, X-API-Key): integer ids unique per run, worker and request
  (ID_BASE + seed * 10^11 + worker * 10^8 + n; the index must use integer item ids).

Recorded per request type: requests, errors (any non-2xx, any transport exception, or an assign answer that does
not register the 4 items as new) with their kinds, p50/p99/max/mean latency (client send to full response read);
total requests/s. The server's RSS (psutil on its pid) is sampled every 5 s: the sample at the end of the warm-up
(10 s, or half the duration when shorter), the last one (at the end of the load) and the max; their difference
is the growth under steady load. After the load: GET /readyz's item count must equal the count before plus the
items whose registration was acknowledged; every acknowledged item is read back with GET /v1/items/{id} and must
carry the ID the assign answer gave; `semid check --index` on the served index must pass.

On a 2-core machine the client threads compete with the server for the cores (and the client threads for the
GIL), so the latencies include client-side queueing; the figures are for finding errors, leaks and drift over a
long run, not peak speed (see service_speed.py for that).

Writes benchmarks/results/load_test.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.assign_speed import checkpoint_input_dim, semid_command  # noqa: E402
from benchmarks.common import markdown_table, write_results  # noqa: E402
from benchmarks.service_speed import Server, build_index, draw_prefixes  # noqa: E402

JSON_HEADERS = {"content-type": "application/json"}
# request type -> (label, share of requests)
MIX = {
    "prefix": ("GET /v1/prefixes/{p}?limit=10", 0.70),
    "children": ("GET /v1/prefixes/{p}/children", 0.10),
    "encode": ("POST /v1/encode, 1 embedding", 0.15),
    "assign": ("POST /v1/assign, 4 new items", 0.05),
}
ITEMS_PER_ASSIGN = 4
ID_BASE = 10**15
MAX_REQUESTS_PER_S = 5_000  # per worker; a bound on the loop, far above what the server can serve
REQUEST_TIMEOUT_S = 30.0
RSS_EVERY_S = 5.0
WARMUP_S = 10.0
ENCODE_POOL = 64
VERIFY_TIMEOUT_S = 600.0
COLUMNS = ["type", "share", "requests", "errors", "error_kinds", "req_per_s", "p50_ms", "p99_ms", "max_ms", "mean_ms"]


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class _Worker:
    """One client thread: its own httpx.Client, RNG, id range, latencies and errors per request type."""

    def __init__(self, wid: int, base_url: str, prefixes: list[str], dim: int, api_key: str | None, seed: int) -> None:
        self.wid = wid
        self.base_url = base_url
        self.prefixes = prefixes
        self.dim = dim
        self.rng = np.random.default_rng([seed, wid])
        self.next_id = ID_BASE + (seed % 10_000) * 10**11 + wid * 10**8
        self.write_headers = {**JSON_HEADERS, **({"x-api-key": api_key} if api_key else {})}
        self.encode_bodies = [
            json.dumps({"embeddings": [row.tolist()]}).encode() for row in _unit_rows(self.rng, ENCODE_POOL, dim)
        ]
        self.ns: dict[str, list[int]] = {k: [] for k in MIX}
        self.errors: dict[str, Counter] = {k: Counter() for k in MIX}
        self.registered: dict[int, list[int]] = {}
        self.crashed: str | None = None

    def run(self, stop_at: float, max_requests: int) -> None:
        try:
            kinds = list(MIX)
            cumulative = np.cumsum([share for _, share in MIX.values()])
            cumulative /= cumulative[-1]
            with httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S) as client:
                for _ in range(max_requests):
                    if time.perf_counter() >= stop_at:
                        break
                    op = min(int(np.searchsorted(cumulative, self.rng.random(), side="right")), len(kinds) - 1)
                    self._one(client, kinds[op])
        except Exception as err:  # a bug in the worker itself: report it rather than lose the thread silently
            self.crashed = f"{type(err).__name__}: {err}"

    def _one(self, client: httpx.Client, kind: str) -> None:
        ids: list[int] = []
        if kind in ("prefix", "children"):
            p = self.prefixes[int(self.rng.integers(len(self.prefixes)))]
            path = f"/v1/prefixes/{p}?limit=10" if kind == "prefix" else f"/v1/prefixes/{p}/children"
            send = lambda: client.get(path)  # noqa: E731
        elif kind == "encode":
            body = self.encode_bodies[int(self.rng.integers(ENCODE_POOL))]
            send = lambda: client.post("/v1/encode", content=body, headers=JSON_HEADERS)  # noqa: E731
        else:
            ids = list(range(self.next_id, self.next_id + ITEMS_PER_ASSIGN))
            self.next_id += ITEMS_PER_ASSIGN
            emb = _unit_rows(self.rng, ITEMS_PER_ASSIGN, self.dim)
            items = [{"item_id": i, "embedding": e.tolist()} for i, e in zip(ids, emb, strict=True)]
            body = json.dumps({"items": items}).encode()
            send = lambda: client.post("/v1/assign", content=body, headers=self.write_headers)  # noqa: E731
        t0 = time.perf_counter_ns()
        try:
            response = send()
        except httpx.HTTPError as err:
            self.ns[kind].append(time.perf_counter_ns() - t0)
            self.errors[kind][type(err).__name__] += 1
            return
        self.ns[kind].append(time.perf_counter_ns() - t0)
        if not 200 <= response.status_code < 300:
            self.errors[kind][f"HTTP {response.status_code}"] += 1
            return
        if kind == "assign":
            self._acknowledge(ids, response)

    def _acknowledge(self, ids: list[int], response: httpx.Response) -> None:
        try:
            results = response.json()["results"]
            got = {int(r["item_id"]): r for r in results}
        except (ValueError, KeyError, TypeError):
            self.errors["assign"]["unreadable answer"] += 1
            return
        if sorted(got) != ids:
            self.errors["assign"]["answer names other items"] += 1
            return
        for i in ids:
            if got[i]["existing"]:
                self.errors["assign"]["new item reported as existing"] += 1
            self.registered[i] = [int(c) for c in got[i]["semantic_id"]]


class _RssSampler:
    """The server's RSS every RSS_EVERY_S seconds (psutil), in a thread; bounded in samples."""

    def __init__(self, pid: int, max_samples: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.max_samples = max_samples
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        try:
            rss = self.proc.memory_info().rss / 2**20
        except Exception:  # the server died: the load's errors will say so
            return
        self.samples.append((round(time.perf_counter() - self.t0, 2), round(rss, 1)))

    def _run(self) -> None:
        while len(self.samples) < self.max_samples and not self.stop.wait(RSS_EVERY_S):
            self.sample()

    def start(self) -> None:
        self.sample()
        self.thread.start()

    def finish(self, warmup: float) -> dict:
        self.stop.set()
        self.thread.join(timeout=RSS_EVERY_S + 5)
        self.sample()
        after = [mb for t, mb in self.samples if t >= warmup]
        first = after[0] if after else None
        last = self.samples[-1][1] if self.samples else None
        return {
            "rss_start_mb": self.samples[0][1] if self.samples else None,
            "rss_warmup_s": round(warmup, 2),
            "rss_after_warmup_mb": first,
            "rss_end_mb": last,
            "rss_max_mb": max((mb for _, mb in self.samples), default=None),
            "rss_growth_after_warmup_mb": round(last - first, 1) if first is not None and last is not None else None,
            "rss_samples": self.samples,
        }


def _ready_items(base_url: str) -> int | None:
    try:
        response = httpx.get(f"{base_url}/readyz", timeout=REQUEST_TIMEOUT_S)
        return int(response.json()["items"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _latency(ns: list[int]) -> dict:
    if not ns:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ms = np.asarray(ns, dtype=np.float64) / 1e6
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def run_load(
    base_url: str,
    *,
    duration: float,
    concurrency: int,
    prefixes: list[str],
    dim: int,
    api_key: str | None,
    seed: int,
    server_pid: int | None = None,
) -> dict:
    """Run the mixed load for `duration` seconds with `concurrency` threads; return the figures.

    `prefixes` are prefix strings ("12-201") that exist in the index; `dim` the checkpoint's input dimension.
    With `server_pid` the server's RSS is sampled too. The result has `rows` (one per request type),
    `errors_total`, `req_per_s`, `items_before`/`items_after`/`items_registered`/`item_count_consistent`
    (from /readyz), `registered_items` ([item_id, semantic_id] pairs acknowledged by the server),
    `worker_crashes` and, with `server_pid`, the RSS figures.
    """
    if duration <= 0 or concurrency < 1 or not prefixes or dim < 1:
        raise ValueError("duration > 0, concurrency >= 1, dim >= 1 and at least one prefix are needed")
    items_before = _ready_items(base_url)
    workers = [_Worker(w, base_url, prefixes, dim, api_key, seed) for w in range(concurrency)]
    max_requests = max(1, int(duration * MAX_REQUESTS_PER_S))
    warmup = min(WARMUP_S, duration / 2)
    sampler = _RssSampler(server_pid, int(duration / RSS_EVERY_S) + 10) if server_pid else None
    if sampler:
        sampler.start()
    start = time.perf_counter()
    stop_at = start + duration
    threads = [
        threading.Thread(target=w.run, args=(stop_at, max_requests), name=f"load-{w.wid}", daemon=True) for w in workers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, stop_at - time.perf_counter()) + 2 * REQUEST_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    rss = sampler.finish(warmup) if sampler else {}
    stuck = sum(t.is_alive() for t in threads)
    items_after = _ready_items(base_url)

    rows = []
    for kind, (label, share) in MIX.items():
        ns = [x for w in workers for x in w.ns[kind]]
        errors = sum((w.errors[kind] for w in workers), Counter())
        rows.append(
            {
                "type": label,
                "share": share,
                "requests": len(ns),
                "errors": sum(errors.values()),
                "error_kinds": dict(errors),
                "req_per_s": round(len(ns) / elapsed, 1),
                **_latency(ns),
            }
        )
    registered = [[i, sid] for w in workers for i, sid in w.registered.items()]
    total = sum(r["requests"] for r in rows)
    return {
        "duration_s": duration,
        "elapsed_s": round(elapsed, 2),
        "concurrency": concurrency,
        "seed": seed,
        "prefix_pool": len(prefixes),
        "rows": rows,
        "requests_total": total,
        "req_per_s": round(total / elapsed, 1),
        "errors_total": sum(r["errors"] for r in rows),
        "worker_crashes": [w.crashed for w in workers if w.crashed],
        "workers_still_running": stuck,
        "items_before": items_before,
        "items_after": items_after,
        "items_registered": len(registered),
        "item_count_consistent": (
            items_before is not None and items_after is not None and items_after == items_before + len(registered)
        ),
        "registered_items": registered,
        **rss,
    }


def verify_registered(base_url: str, registered: list, *, timeout: float = VERIFY_TIMEOUT_S) -> dict:
    """GET /v1/items/{id} for every acknowledged item: it must exist with the ID the assign answer gave."""
    deadline = time.perf_counter() + timeout
    checked, missing, mismatched, failures = 0, 0, 0, []
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
        for item_id, sid in registered:
            if time.perf_counter() > deadline:
                break
            checked += 1
            response = client.get(f"/v1/items/{item_id}")
            if response.status_code != 200:
                missing += 1
                failures.append({"item_id": item_id, "status": response.status_code})
            elif response.json()["semantic_id"] != sid:
                mismatched += 1
                failures.append({"item_id": item_id, "expected": sid, "got": response.json()["semantic_id"]})
    return {
        "items": len(registered),
        "checked": checked,
        "missing": missing,
        "mismatched": mismatched,
        "ok": checked == len(registered) and not missing and not mismatched,
        "first_failures": failures[:10],
    }


def semid_check(index_dir: Path) -> dict:
    proc = subprocess.run(
        [*semid_command(), "check", "--index", str(index_dir)], capture_output=True, text=True, timeout=600
    )
    return {"returncode": proc.returncode, "ok": proc.returncode == 0, "output": (proc.stdout + proc.stderr)[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=50_000, help="items in the synthetic index (default 50000)")
    ap.add_argument("--dim", type=int, default=384, help="embedding dimension of the synthetic catalog (default 384)")
    ap.add_argument("--index", help="serve a temporary copy of this index instead of building one")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    ap.add_argument("--server-threads", type=int, default=0, help="semid serve --workers-threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where the temporary index goes (default: the system temp dir)")
    args = ap.parse_args()
    if args.items < 2 or args.duration <= 0 or args.concurrency < 1 or args.dim < 1:
        ap.error("--items >= 2, --dim >= 1, --duration > 0, --concurrency >= 1")

    tmp = Path(tempfile.mkdtemp(prefix="semid-load-", dir=args.workdir))
    server: Server | None = None
    try:
        if args.index:
            index_dir = tmp / "index"
            shutil.copytree(args.index, index_dir, ignore=shutil.ignore_patterns("index.lock"))
            build = {"built": f"copy of {args.index}"}
        else:
            index_dir, build = build_index(tmp, args.items, args.dim, args.seed)
        prefixes, _, index_items = draw_prefixes(index_dir, args.seed)
        dim = checkpoint_input_dim(index_dir / "checkpoint")
        api_key = secrets.token_hex(16)
        server = Server(index_dir, tmp / "server.log", args.server_threads)
        server.env["SEMID_API_KEY"] = api_key
        ready_s = server.start()
        load_avg_start = os.getloadavg()
        result = run_load(
            server.base,
            duration=args.duration,
            concurrency=args.concurrency,
            prefixes=prefixes,
            dim=dim,
            api_key=api_key,
            seed=args.seed,
            server_pid=server.proc.pid,
        )
        load_avg_end = os.getloadavg()
        verify = verify_registered(server.base, result.pop("registered_items"))
        check = semid_check(index_dir)
        server_alive = server.proc.poll() is None
        server_log = server.log_tail()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    passed = (
        result["errors_total"] == 0
        and not result["worker_crashes"]
        and result["item_count_consistent"]
        and verify["ok"]
        and check["ok"]
        and server_alive
    )
    data = {
        "index": {**build, "items": index_items, "dim": dim},
        "server": f"`semid serve --index $TMP/index` on 127.0.0.1, SEMID_API_KEY set, torch threads "
        f"{args.server_threads or 'default'}",
        "server_ready_seconds": round(ready_s, 2),
        "load_average_start": load_avg_start,
        "load_average_end": load_avg_end,
        **result,
        "registered_read_back": verify,
        "semid_check": check,
        "server_alive_at_end": server_alive,
        "passed": passed,
        "options": vars(args),
        "server_log_tail": server_log[-2000:],
    }
    rows = [
        {**r, "error_kinds": ", ".join(f"{k}: {v}" for k, v in r["error_kinds"].items()) or "-"} for r in data["rows"]
    ]
    md = (
        f"Index: {index_items} items x {dim} dims ({build['built']}). Server: {data['server']}; ready "
        f"{ready_s:.1f} s after spawn. Client: {args.concurrency} threads in this process, each with its own "
        f"keep-alive httpx.Client, sharing the machine's {os.cpu_count()} CPUs with the server. Load average at start "
        f"{tuple(round(x, 2) for x in load_avg_start)}, at end {tuple(round(x, 2) for x in load_avg_end)}.\n\n"
        f"{result['requests_total']:,} requests in {result['elapsed_s']:.1f} s: **{result['req_per_s']:,.1f} "
        f"requests/s**, **{result['errors_total']} errors**.\n\n"
    )
    md += markdown_table(rows, COLUMNS)
    md += (
        f"\n\nServer RSS (psutil, every {RSS_EVERY_S:g} s): {result.get('rss_start_mb')} MiB before the load, "
        f"{result.get('rss_after_warmup_mb')} MiB after the {result.get('rss_warmup_s')} s warm-up, "
        f"{result.get('rss_end_mb')} MiB at the end (growth {result.get('rss_growth_after_warmup_mb')} MiB), max "
        f"{result.get('rss_max_mb')} MiB.\n\n"
        f"Items (GET /readyz): {result['items_before']} before, {result['items_after']} after, "
        f"{result['items_registered']} registered and acknowledged: consistent **{result['item_count_consistent']}**. "
        f"Read back with GET /v1/items/{{id}}: {verify['checked']} checked, {verify['missing']} missing, "
        f"{verify['mismatched']} with another ID. `semid check --index`: "
        f"{'ok' if check['ok'] else 'FAILED (exit ' + str(check['returncode']) + ')'}. Server alive at the end: "
        f"{server_alive}. Worker crashes: {len(result['worker_crashes'])}.\n\n"
        f"**{'PASSED' if passed else 'FAILED'}**: 0 errors, consistent item count, every registered item readable "
        f"with its ID, the index passes `semid check`.\n\n"
        f"Latency: per request, client send to full response read (perf_counter_ns); it includes waiting for the "
        f"client's own threads (GIL) on a machine where client and server share the cores."
    )
    path = write_results("load_test", data, md)
    print(md)
    print(f"written to {path}")
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
