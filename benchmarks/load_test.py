"""A mixed read/write load against a real `semid serve` on loopback (127.0.0.1 only), for a long time.

    python benchmarks/load_test.py                              # the full run: 50k x 384 index, 600 s, 8 workers
    python benchmarks/load_test.py --items 20000 --duration 10  # a quick smoke run
    python benchmarks/load_test.py --index idx/                 # serve a temporary copy of an existing index
    python benchmarks/load_test.py --constant-size --minutes 10 # server RSS at a constant index size (2 workers)

Set-up (not measured): without --index a seeded clustered synthetic catalog of --items x --dim is written to a
temporary Parquet file, a default-architecture RQ-VAE is trained for 4 epochs on its first 20k rows and
semid.service.assign.assign_catalog builds the index (benchmarks/service_speed.py's build_index). With --index the
index is copied to a temporary directory first (the load registers items in it). Random prefixes of length 1..L are
drawn from the indexed items. `semid serve` starts as a subprocess on a free loopback port with SEMID_API_KEY set to a
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

The constant-size phase (`--constant-size`, `run_constant_load`): the same server set-up, but a mix in which no
request adds an item, so RSS growth cannot come from the index growing: 35 % prefix look-ups, 10 % children,
10 % GET /v1/items/{id} and 10 % GET /v1/ids/{semantic_id} of indexed items, 10 % POST /v1/resolve of random
base codes (k=5, a FAISS search), 15 % encodes without registering, and 10 % POST /v1/assign re-posting 4 of 64
items registered once before the load (same embeddings: each must come back as existing with its first ID).
--concurrency defaults to 2 here. The server's RSS is sampled every 5 s; reported: RSS at the end of the --warmup
(default 60 s), the max after it, the end, the growth end - warm-up and max - warm-up (the target is at most
50 MiB each) and the least-squares trend in MiB/min. The /readyz item count must not change.

Writes benchmarks/results/load_test.{md,json}; the constant-size phase writes only its own section of the two files
("constant_size" in the JSON, a delimited section of the Markdown), and the mixed run keeps that section.
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
from benchmarks.common import RESULTS, command, machine, markdown_table, write_results  # noqa: E402
from benchmarks.service_speed import build_index, draw_prefixes  # noqa: E402
from tests.servers import Server  # noqa: E402

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


def _error_code(response: httpx.Response) -> str:
    """The error code of a semid JSON error body (``{"error": {"code": ...}}``) after a space, or ""."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f" {code}" if isinstance(code, str) else ""


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class _Worker:
    """One client thread: its own httpx.Client, RNG, id range, latencies and errors per request type."""

    mix = MIX

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
        self.ns: dict[str, list[int]] = {k: [] for k in self.mix}
        self.errors: dict[str, Counter] = {k: Counter() for k in self.mix}
        self.registered: dict[int, list[int]] = {}
        self.crashed: str | None = None

    def run(self, stop_at: float, max_requests: int) -> None:
        try:
            kinds = list(self.mix)
            cumulative = np.cumsum([share for _, share in self.mix.values()])
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
        response = self._timed(kind, send)
        if response is not None and kind == "assign":
            self._acknowledge(ids, response)

    def _timed(self, kind: str, send) -> httpx.Response | None:
        """Send one request, recording its latency and any failure by kind; the response if it is a 2xx."""
        t0 = time.perf_counter_ns()
        try:
            response = send()
        except httpx.HTTPError as err:
            self.ns[kind].append(time.perf_counter_ns() - t0)
            self.errors[kind][type(err).__name__] += 1
            return None
        self.ns[kind].append(time.perf_counter_ns() - t0)
        if not 200 <= response.status_code < 300:
            self.errors[kind][f"HTTP {response.status_code}{_error_code(response)}"] += 1
            return None
        return response

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


def _run_workers(workers: list, duration: float, max_requests: int) -> tuple[float, list[threading.Thread]]:
    """Run every worker in its own thread for ``duration`` seconds; (elapsed seconds, the threads)."""
    start = time.perf_counter()
    stop_at = start + duration
    threads = [
        threading.Thread(target=w.run, args=(stop_at, max_requests), name=f"load-{w.wid}", daemon=True) for w in workers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, stop_at - time.perf_counter()) + 2 * REQUEST_TIMEOUT_S)
    return time.perf_counter() - start, threads


def _mix_rows(workers: list, mix: dict, elapsed: float) -> list[dict]:
    """One row per request type of ``mix``: count, errors by kind, rate and latency percentiles."""
    rows = []
    for kind, (label, share) in mix.items():
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
    return rows


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
    elapsed, threads = _run_workers(workers, duration, max_requests)
    rss = sampler.finish(warmup) if sampler else {}
    stuck = sum(t.is_alive() for t in threads)
    items_after = _ready_items(base_url)

    rows = _mix_rows(workers, MIX, elapsed)
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


# --- the constant-size phase (--constant-size) ------------------------------------------------------------------

# request type -> (label, share of requests); no request adds an item, so the index keeps its size
CONSTANT_MIX = {
    "prefix": ("GET /v1/prefixes/{p}?limit=10", 0.35),
    "children": ("GET /v1/prefixes/{p}/children", 0.10),
    "item": ("GET /v1/items/{id}", 0.10),
    "sid": ("GET /v1/ids/{semantic_id}", 0.10),
    "resolve": ("POST /v1/resolve, random base codes, k=5", 0.10),
    "encode": ("POST /v1/encode, 1 embedding, no register", 0.15),
    "assign": ("POST /v1/assign, 4 items already indexed", 0.10),
}
CONSTANT_WARMUP_S = 60.0
CONSTANT_CONCURRENCY = 2
FIXED_ITEMS = 64  # registered once before the load; the load's assigns re-post them and get their IDs back
ITEM_POOL = 4096  # indexed items drawn for GET /v1/items and /v1/ids
RSS_GROWTH_LIMIT_MB = 50.0
SECTION_BEGIN = "<!-- constant-size phase (load_test.py --constant-size) -->"
SECTION_END = "<!-- end of constant-size phase -->"


class _ConstantWorker(_Worker):
    """A worker of the constant-size mix: look-ups, encodes without registering and re-posts of known items."""

    mix = CONSTANT_MIX

    def __init__(self, wid: int, base_url: str, pools: dict, api_key: str | None, seed: int) -> None:
        super().__init__(wid, base_url, pools["prefixes"], pools["dim"], api_key, seed)
        self.items = pools["items"]  # [item_id, "c1-c2-c3-d"]
        self.code_sizes = pools["code_sizes"]
        self.fixed = pools["fixed"]  # [{"item_id", "embedding", "semantic_id"}]

    def _one(self, client: httpx.Client, kind: str) -> None:
        if kind in ("prefix", "children", "encode"):
            super()._one(client, kind)
            return
        fixed: list[dict] = []
        if kind in ("item", "sid"):
            item_id, sid = self.items[int(self.rng.integers(len(self.items)))]
            path = f"/v1/items/{item_id}" if kind == "item" else f"/v1/ids/{sid}"
            send = lambda: client.get(path)  # noqa: E731
        elif kind == "resolve":
            codes = [int(self.rng.integers(n)) for n in self.code_sizes]
            body = json.dumps({"semantic_id": codes, "k": 5}).encode()
            send = lambda: client.post("/v1/resolve", content=body, headers=JSON_HEADERS)  # noqa: E731
        else:
            fixed = [self.fixed[i] for i in self.rng.choice(len(self.fixed), ITEMS_PER_ASSIGN, replace=False)]
            items = [{"item_id": f["item_id"], "embedding": f["embedding"]} for f in fixed]
            body = json.dumps({"items": items}).encode()
            send = lambda: client.post("/v1/assign", content=body, headers=self.write_headers)  # noqa: E731
        response = self._timed(kind, send)
        if response is not None and fixed:
            self._same_ids(fixed, response)

    def _same_ids(self, fixed: list[dict], response: httpx.Response) -> None:
        try:
            got = {r["item_id"]: r for r in response.json()["results"]}
            if len(got) != len(fixed) or any(f["item_id"] not in got for f in fixed):
                self.errors["assign"]["answer names other items"] += 1
            elif any(not got[f["item_id"]]["existing"] for f in fixed):
                self.errors["assign"]["known item reported as new"] += 1
            elif any(got[f["item_id"]]["semantic_id"] != f["semantic_id"] for f in fixed):
                self.errors["assign"]["known item got another ID"] += 1
        except (ValueError, KeyError, TypeError):
            self.errors["assign"]["unreadable answer"] += 1


def constant_pools(index_dir: Path, seed: int) -> dict:
    """What the constant-size workers draw from: prefixes, indexed (item id, semantic id) pairs, code sizes."""
    from semid.service.index.handle import SemanticIdIndex

    prefixes, _, n_items = draw_prefixes(index_dir, seed)
    index = SemanticIdIndex.open(index_dir)
    rng = np.random.default_rng(seed + 31)
    active = index.state.order
    rows = active[rng.choice(active.shape[0], min(ITEM_POOL, active.shape[0]), replace=False)]
    items = [[it["item_id"], "-".join(map(str, it["semantic_id"]))] for it in index.snapshot.items(rows)]
    pools = {
        "prefixes": prefixes,
        "items": items,
        "code_sizes": list(index.layout.codebook_sizes),
        "id_kind": index.id_kind,
        "index_items": n_items,
        "dim": checkpoint_input_dim(index_dir / "checkpoint"),
    }
    del index
    return pools


def register_fixed(base_url: str, api_key: str | None, pools: dict, seed: int) -> list[dict]:
    """POST /v1/assign FIXED_ITEMS items once (before the load); returns them with the IDs the server gave."""
    rng = np.random.default_rng([seed, 7919])
    if pools["id_kind"] == "int":
        ids: list = [2 * ID_BASE + i for i in range(FIXED_ITEMS)]  # beyond run_load's id ranges
    else:
        ids = [f"load-fixed-{i}" for i in range(FIXED_ITEMS)]
    emb = _unit_rows(rng, FIXED_ITEMS, pools["dim"])
    items = [{"item_id": i, "embedding": e.tolist()} for i, e in zip(ids, emb, strict=True)]
    headers = {**JSON_HEADERS, **({"x-api-key": api_key} if api_key else {})}
    response = httpx.post(
        f"{base_url}/v1/assign", content=json.dumps({"items": items}), headers=headers, timeout=REQUEST_TIMEOUT_S
    )
    response.raise_for_status()
    sids = {r["item_id"]: r["semantic_id"] for r in response.json()["results"]}
    return [{**it, "semantic_id": sids[it["item_id"]]} for it in items]


def _rss_trend(samples: list, warmup: float) -> dict:
    after = [(t, mb) for t, mb in samples if t >= warmup]
    if not after:
        return {"rss_max_after_warmup_mb": None, "rss_max_growth_after_warmup_mb": None, "rss_slope_mb_per_min": None}
    first = after[0][1]
    peak = max(mb for _, mb in after)
    slope = None
    if len(after) >= 3:
        t = np.asarray([x for x, _ in after]) / 60.0
        slope = round(float(np.polyfit(t, np.asarray([mb for _, mb in after]), 1)[0]), 2)
    return {
        "rss_max_after_warmup_mb": peak,
        "rss_max_growth_after_warmup_mb": round(peak - first, 1),
        "rss_slope_mb_per_min": slope,
    }


def run_constant_load(
    base_url: str,
    *,
    duration: float,
    warmup: float,
    concurrency: int,
    pools: dict,
    api_key: str | None,
    seed: int,
    server_pid: int,
) -> dict:
    """The constant-size mix for `duration` seconds (warm-up included); RSS sampled every RSS_EVERY_S."""
    import psutil

    if duration <= warmup or concurrency < 1:
        raise ValueError("duration > warmup and concurrency >= 1 are needed")
    pools = {**pools, "fixed": register_fixed(base_url, api_key, pools, seed)}
    items_before = _ready_items(base_url)
    workers = [_ConstantWorker(w, base_url, pools, api_key, seed) for w in range(concurrency)]
    max_requests = max(1, int(duration * MAX_REQUESTS_PER_S))
    sampler = _RssSampler(server_pid, int(duration / RSS_EVERY_S) + 10)
    sampler.start()
    elapsed, threads = _run_workers(workers, duration, max_requests)
    rss = sampler.finish(warmup)
    try:
        server_threads = psutil.Process(server_pid).num_threads()
    except psutil.Error:
        server_threads = None
    items_after = _ready_items(base_url)
    rows = _mix_rows(workers, CONSTANT_MIX, elapsed)
    total = sum(r["requests"] for r in rows)
    return {
        "duration_s": duration,
        "elapsed_s": round(elapsed, 2),
        "concurrency": concurrency,
        "seed": seed,
        "prefix_pool": len(pools["prefixes"]),
        "item_pool": len(pools["items"]),
        "fixed_items": len(pools["fixed"]),
        "rows": rows,
        "requests_total": total,
        "req_per_s": round(total / elapsed, 1),
        "errors_total": sum(r["errors"] for r in rows),
        "worker_crashes": [w.crashed for w in workers if w.crashed],
        "workers_still_running": sum(t.is_alive() for t in threads),
        "items_before": items_before,
        "items_after": items_after,
        "items_constant": items_before is not None and items_before == items_after,
        "server_threads_at_end": server_threads,
        **rss,
        **_rss_trend(rss["rss_samples"], warmup),
    }


def _git_revision() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--short"], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = len([line for line in dirty.stdout.splitlines() if line.strip()])
    return head.stdout.strip() + (f" with {changed} changed file(s) in the work tree" if changed else "")


def _results_paths() -> tuple[Path, Path]:
    return RESULTS / "load_test.json", RESULTS / "load_test.md"


def previous_constant_section() -> tuple[dict | None, str]:
    """The constant-size figures and markdown section already in the results files (kept by the mixed run)."""
    json_path, md_path = _results_paths()
    data, section = None, ""
    try:
        data = json.loads(json_path.read_text()).get("constant_size")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        md = md_path.read_text()
        if SECTION_BEGIN in md and SECTION_END in md:
            section = md[md.index(SECTION_BEGIN) : md.index(SECTION_END) + len(SECTION_END)]
    except OSError:
        pass
    return data, section


def write_constant_section(data: dict, section_md: str) -> Path:
    """Put the constant-size phase into load_test.json ("constant_size") and load_test.md (its own section),
    leaving the mixed run's figures as they are."""
    json_path, md_path = _results_paths()
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        payload = json.loads(json_path.read_text())
    except (OSError, ValueError):
        payload = {}
    payload["constant_size"] = data
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    section = f"{SECTION_BEGIN}\n{section_md}\n{SECTION_END}"
    try:
        md = md_path.read_text()
    except OSError:
        md = "# load_test\n"
    if SECTION_BEGIN in md and SECTION_END in md:
        md = md[: md.index(SECTION_BEGIN)] + section + md[md.index(SECTION_END) + len(SECTION_END) :]
    else:
        md = md.rstrip("\n") + "\n\n" + section + "\n"
    md_path.write_text(md)
    return md_path


def constant_size_phase(args: argparse.Namespace) -> None:
    """--constant-size: serve the index, run the constant-size mix, report the server's RSS after the warm-up."""
    tmp = Path(tempfile.mkdtemp(prefix="semid-load-", dir=args.workdir))
    server: Server | None = None
    revision = _git_revision()
    try:
        if args.index:
            index_dir = tmp / "index"
            shutil.copytree(args.index, index_dir, ignore=shutil.ignore_patterns("index.lock"))
            build = {"built": f"copy of {args.index}"}
        else:
            index_dir, build = build_index(tmp, args.items, args.dim, args.seed)
        pools = constant_pools(index_dir, args.seed)
        api_key = secrets.token_hex(16)
        server = Server(index_dir, tmp / "server.log", args.server_threads)
        server.env["SEMID_API_KEY"] = api_key
        ready_s = server.start()
        load_avg_start = os.getloadavg()
        result = run_constant_load(
            server.base,
            duration=args.duration,
            warmup=args.warmup,
            concurrency=args.concurrency,
            pools=pools,
            api_key=api_key,
            seed=args.seed,
            server_pid=server.proc.pid,
        )
        load_avg_end = os.getloadavg()
        server_alive = server.proc.poll() is None
        server_log = server.log_tail()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    growth, peak_growth = result["rss_growth_after_warmup_mb"], result["rss_max_growth_after_warmup_mb"]
    flat = (
        growth is not None
        and peak_growth is not None
        and growth <= RSS_GROWTH_LIMIT_MB
        and peak_growth <= RSS_GROWTH_LIMIT_MB
    )
    passed = (
        result["errors_total"] == 0
        and not result["worker_crashes"]
        and result["items_constant"]
        and server_alive
        and flat
    )
    data = {
        "command": command(),
        "machine": machine(),
        "revision": revision,
        "index": {**build, "items": pools["index_items"], "dim": pools["dim"]},
        "server": f"`semid serve --index $TMP/index` on 127.0.0.1, SEMID_API_KEY set, torch threads "
        f"{args.server_threads or 'default'}",
        "server_ready_seconds": round(ready_s, 2),
        "load_average_start": load_avg_start,
        "load_average_end": load_avg_end,
        "warmup_s": args.warmup,
        "rss_growth_limit_mb": RSS_GROWTH_LIMIT_MB,
        **result,
        "rss_flat": flat,
        "server_alive_at_end": server_alive,
        "passed": passed,
        "options": vars(args),
        "server_log_tail": server_log[-2000:],
    }
    rows = [
        {**r, "error_kinds": ", ".join(f"{k}: {v}" for k, v in r["error_kinds"].items()) or "-"} for r in data["rows"]
    ]
    slope = result["rss_slope_mb_per_min"]
    md = (
        f"## Constant-size phase: server RSS under {args.duration / 60:g} minutes of load at a constant index size\n\n"
        f"Command: `{data['command']}`\n\nMachine: {json.dumps(data['machine'])}\n\nCode: commit {revision}.\n\n"
        f"Index: {pools['index_items']} items x {pools['dim']} dims ({build['built']}). Server: {data['server']}; "
        f"ready {ready_s:.1f} s after spawn. Before the load, {result['fixed_items']} items are registered once "
        f"(POST /v1/assign); the load's assigns re-post 4 of them with the same embeddings, which must come back "
        f"as existing with the same IDs, so no request writes to the index. Client: {args.concurrency} threads in "
        f"this process, each with its own keep-alive httpx.Client, sharing the machine's {os.cpu_count()} CPUs "
        f"with the server. Load average at start {tuple(round(x, 2) for x in load_avg_start)}, at end "
        f"{tuple(round(x, 2) for x in load_avg_end)}.\n\n"
        f"{result['requests_total']:,} requests in {result['elapsed_s']:.1f} s: **{result['req_per_s']:,.1f} "
        f"requests/s**, **{result['errors_total']} errors**.\n\n"
    )
    md += markdown_table(rows, COLUMNS)
    md += (
        f"\n\nItems (GET /readyz): {result['items_before']} before the load, {result['items_after']} after: "
        f"constant **{result['items_constant']}**.\n\n"
        f"Server RSS (psutil, every {RSS_EVERY_S:g} s): {result['rss_start_mb']} MiB before the load, "
        f"**{result['rss_after_warmup_mb']} MiB at the end of the {args.warmup:g} s warm-up**, max "
        f"{result['rss_max_after_warmup_mb']} MiB after it, **{result['rss_end_mb']} MiB at the end**: growth after "
        f"the warm-up **{growth} MiB** (end) and {peak_growth} MiB (max), trend "
        f"{'n/a' if slope is None else f'{slope:+.2f} MiB/min'} (least squares over the samples after the warm-up). "
        f"Server threads at the end: {result['server_threads_at_end']}. Flat (growth and max growth <= "
        f"{RSS_GROWTH_LIMIT_MB:g} MiB): **{flat}**.\n\n"
        f"**{'PASSED' if passed else 'FAILED'}**: 0 errors, the item count unchanged, the server alive, RSS flat "
        f"after the warm-up."
    )
    path = write_constant_section(data, md)
    print(md)
    print(f"written to {path}")
    if not passed:
        raise SystemExit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=50_000, help="items in the synthetic index (default 50000)")
    ap.add_argument("--dim", type=int, default=384, help="embedding dimension of the synthetic catalog (default 384)")
    ap.add_argument("--index", help="serve a temporary copy of this index instead of building one")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--minutes", type=float, help="minutes of load (instead of --duration)")
    ap.add_argument(
        "--concurrency",
        type=int,
        help=f"client threads (default 8; {CONSTANT_CONCURRENCY} with --constant-size)",
    )
    ap.add_argument(
        "--constant-size",
        action="store_true",
        help="the constant-size phase instead: a mix that never adds items; reports the server's RSS after the warm-up",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=CONSTANT_WARMUP_S,
        help=f"--constant-size: seconds of warm-up before RSS growth is counted (default {CONSTANT_WARMUP_S:g})",
    )
    ap.add_argument("--server-threads", type=int, default=0, help="semid serve --workers-threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where the temporary index goes (default: the system temp dir)")
    args = ap.parse_args()
    if args.minutes is not None:
        args.duration = args.minutes * 60.0
    if args.concurrency is None:
        args.concurrency = CONSTANT_CONCURRENCY if args.constant_size else 8
    if args.items < 2 or args.duration <= 0 or args.concurrency < 1 or args.dim < 1:
        ap.error("--items >= 2, --dim >= 1, --duration > 0, --concurrency >= 1")
    if args.constant_size:
        if not 0 <= args.warmup < args.duration:
            ap.error("--warmup must be >= 0 and shorter than the load")
        constant_size_phase(args)
        return

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
        f"**{'PASSED' if passed else 'FAILED'}** (the bar: 0 errors, consistent item count, every registered item "
        f"readable with its ID, the index passes `semid check`; measured above).\n\n"
        f"Latency: per request, client send to full response read (perf_counter_ns); it includes waiting for the "
        f"client's own threads (GIL) on a machine where client and server share the cores."
    )
    kept, kept_md = previous_constant_section()  # the constant-size phase's figures stay in the files
    if kept is not None:
        data["constant_size"] = kept
    path = write_results("load_test", data, md + ("\n\n" + kept_md if kept_md else ""))
    print(md)
    print(f"written to {path}")
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
