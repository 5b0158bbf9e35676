"""An index on object storage vs on local disk, side by side in one run: commit, open, poll.

    python benchmarks/object_store.py                          # 100k items x 64, the recorded run
    python benchmarks/object_store.py --items 5000 --appends 10   # a quick smoke run (set SEMID_BENCH_RESULTS)

The store is a ``moto_server`` process on loopback (moto[server], in the dev extra): no network latency, so
the figures are the client's and the protocol's cost (requests, bytes, hashing), not a cloud store's
round trips; multiply the request counts by your store's latency for a real estimate.

Set-up (not measured): one index of --items random items (3 levels of 256 codes, dedup 8, vectors of --dim
float32) built with ``SemanticIdIndex.create`` + one ``append`` of all rows, once locally and once at
``s3://bench/<run>``. Then, per backend:

* append: --appends sequential appends of 4 new items, each with ``persist_vectors=False`` (as the
  server's online writes), p50 / p90 latency; requests and objects written per commit (store only);
* open: ``SemanticIdIndex.open`` with an empty cache (every file downloaded) and with a filled one
  (store only: the manifest GET, nothing else), and of the local directory;
* poll: a reader's ``poll_once`` when nothing changed (requests, latency) and right after a commit
  (requests, latency until the reader's cache holds the new version).

Requests are counted on the boto3 client (``before-send`` events), so retries count too.
Writes benchmarks/results/object_store.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_results  # noqa: E402

BUCKET = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, endpoint


class Counter:
    """Requests sent by one handle's boto3 client, by operation."""

    def __init__(self, index) -> None:
        self.calls: list[str] = []
        client = index._mirror.store._client
        client.meta.events.register("before-send.s3", lambda request, **kw: self.calls.append(request.method))

    def take(self) -> dict:
        out = {"requests": len(self.calls), "puts": self.calls.count("PUT"), "gets": self.calls.count("GET")}
        self.calls.clear()
        return out


def _batch(rng, layout, start: int, n: int, dim: int, taken: set) -> dict:
    sids = []
    while len(sids) < n:
        sid = tuple(int(c) for c in rng.integers(0, 256, 3)) + (0,)
        if sid not in taken:
            taken.add(sid)
            sids.append(sid)
    s = np.array(sids, dtype=np.int64)
    return {
        "item_ids": np.arange(start, start + n, dtype=np.int64),
        "base_codes": s[:, :3],
        "semantic_ids": s,
        "fallback": np.zeros(n, dtype=bool),
        "embedding_hash": rng.integers(0, 2**62, n, dtype=np.int64).astype(np.uint64),
        "vectors": rng.standard_normal((n, dim)).astype(np.float32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--appends", type=int, default=30)
    args = parser.parse_args()

    from semid.service.ids.layout import IdLayout
    from semid.service.index.handle import SemanticIdIndex

    proc, endpoint = _moto()
    work = Path(tempfile.mkdtemp(prefix="semid-object-store-"))
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1"
    )
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        layout = IdLayout(codebook_sizes=(256, 256, 256), dedup_size=8)
        uri = f"s3://{BUCKET}/run"
        rows = []
        load_before = os.getloadavg()
        for backend, target in (("local disk", str(work / "local")), ("object store (moto)", uri)):
            rng = np.random.default_rng(0)
            taken: set = set()
            os.environ["SEMID_CACHE_DIR"] = str(work / "writer-cache")
            index = SemanticIdIndex.create(
                target, layout=layout, fingerprint="f" * 16, id_kind="int", vector_dim=args.dim
            )
            index.append(**_batch(rng, layout, 0, args.items, args.dim, taken))
            counter = Counter(index) if index.store_status() is not None else None
            if counter:
                counter.take()
            latencies, per_commit = [], []
            for n in range(args.appends):
                batch = _batch(rng, layout, args.items + 4 * n, 4, args.dim, taken)
                t = time.perf_counter()
                index.append(**batch, persist_vectors=False)
                latencies.append(time.perf_counter() - t)
                if counter:
                    per_commit.append(counter.take())
            row = {
                "backend": backend,
                "items": len(index),
                "append 4 p50 ms": 1000 * float(np.percentile(latencies, 50)),
                "append 4 p90 ms": 1000 * float(np.percentile(latencies, 90)),
            }
            if per_commit:
                row["requests per commit"] = float(np.mean([c["requests"] for c in per_commit]))
                row["objects written per commit"] = float(np.mean([c["puts"] for c in per_commit]))
            if counter is None:
                t = time.perf_counter()
                SemanticIdIndex.open(target, read_only=True)
                row["open s"] = time.perf_counter() - t
            else:
                os.environ["SEMID_CACHE_DIR"] = str(work / "reader-cache")
                t = time.perf_counter()
                reader = SemanticIdIndex.open(target, read_only=True)
                row["open s (empty cache)"] = time.perf_counter() - t
                t = time.perf_counter()
                reader = SemanticIdIndex.open(target, read_only=True)
                row["open s (filled cache)"] = time.perf_counter() - t
                rc = Counter(reader)
                mirror = reader._mirror
                times = []
                for _ in range(20):
                    t = time.perf_counter()
                    mirror.poll_once()
                    times.append(time.perf_counter() - t)
                polls = rc.take()
                row["poll unchanged ms"] = 1000 * float(np.median(times))
                row["requests per unchanged poll"] = polls["requests"] / 20
                index.append(**_batch(rng, layout, 10**9, 4, args.dim, taken), persist_vectors=False)
                t = time.perf_counter()
                mirror.poll_once()
                row["poll after a commit ms"] = 1000 * (time.perf_counter() - t)
                row["requests per poll after a commit"] = rc.take()["requests"]
                assert mirror.status().store_version == index.version
            rows.append(row)
        load_after = os.getloadavg()
    finally:
        proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    columns = [
        "backend",
        "items",
        "append 4 p50 ms",
        "append 4 p90 ms",
        "requests per commit",
        "objects written per commit",
        "open s",
        "open s (empty cache)",
        "open s (filled cache)",
        "poll unchanged ms",
        "requests per unchanged poll",
        "poll after a commit ms",
        "requests per poll after a commit",
    ]
    data = {"args": vars(args), "rows": rows, "loadavg_before": load_before, "loadavg_after": load_after}
    notes = (
        f"Load average before {load_before}, after {load_after} (2 shared cores: timings are noisy).\n\n"
        "The store is moto on loopback: request counts carry over to a real store, latencies do not. "
        "An open on object storage includes creating the boto3 client.\n"
    )
    path = write_results("object_store", data, notes + "\n" + markdown_table(rows, columns))
    print(path.read_text())


if __name__ == "__main__":
    main()
