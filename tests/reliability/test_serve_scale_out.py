"""`semid serve --workers N` and `--read-only` replicas, as real server processes on one index directory.

Each request goes on a new connection, so the kernel spreads them over the workers; every answer names
the process (``/readyz`` ``pid``) so the tests can tell that more than one worker answered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT
from tests.reliability.conftest import SEMID, assign_args, run_semid
from tests.servers import free_port

KEY = {"X-API-Key": "k"}


class Server:
    """A `semid serve` process and its base URL; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, index: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*SEMID, "serve", "--index", str(index), "--port", str(self.port), "--log-level", "warning", *args],
            cwd=ROOT,
            env={**os.environ, "SEMID_API_KEY": "k", **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}: {self.process.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail("server did not become ready")

    def get(self, path: str) -> httpx.Response:
        """On a new connection each time (the kernel picks the worker)."""
        return httpx.get(f"{self.url}{path}", timeout=30)

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=KEY, timeout=120)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def base_index(tmp_path_factory, checkpoint, catalogs) -> Path:
    index = tmp_path_factory.mktemp("scale-out") / "base"
    done = run_semid(*assign_args(checkpoint, catalogs["small"], index))
    assert done.returncode == 0, done.stderr
    return index


@pytest.fixture
def index(tmp_path, base_index) -> Path:
    import shutil

    shutil.copytree(base_index, tmp_path / "idx")
    return tmp_path / "idx"


def _new_items(catalogs, start: int, count: int) -> list[dict]:
    table = pq.read_table(catalogs["other"]).slice(start, count)
    ids = table.column("item_id").to_pylist()
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32).tolist()
    return [{"item_id": i, "embedding": e} for i, e in zip(ids, emb, strict=True)]


def _check_clean(index: Path) -> None:
    done = run_semid("check", "--index", str(index))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


@pytest.mark.slow
def test_workers_see_each_others_writes_and_serialise_concurrent_ones(index, catalogs):
    """One `--workers 2` server (one start-up for both checks: it is the slow part)."""
    server = Server(index, "--workers", "2")
    try:
        pids = {server.get("/readyz").json()["pid"] for _ in range(40)}
        assert len(pids) == 2, f"40 connections were all answered by {pids}"
        # each registration, then reads on fresh connections: whichever worker answers sees it
        for n in range(6):
            item = _new_items(catalogs, 1_000 + n, 1)[0]
            r = server.post("/v1/assign", {"items": [item]})
            assert r.status_code == 200, r.text
            sid = r.json()["results"][0]["semantic_id"]
            versions = set()
            for _ in range(12):
                got = server.get(f"/v1/items/{item['item_id']}")
                assert got.status_code == 200, f"item {item['item_id']} not seen: {got.text}"
                assert got.json()["semantic_id"] == sid
                ready = server.get("/readyz").json()
                versions.add(ready["version"])
            assert len(versions) == 1  # every worker reports the same snapshot version
        # concurrent registrations through both workers: all land, each with its own ID
        batches = [_new_items(catalogs, 10 * b, 10) for b in range(16)]
        results: list[httpx.Response] = [None] * len(batches)  # type: ignore[list-item]

        def send(b: int) -> None:
            results[b] = server.post("/v1/assign", {"items": batches[b]})

        threads = [threading.Thread(target=send, args=(b,)) for b in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
        assigned = {res["item_id"]: tuple(res["semantic_id"]) for r in results for res in r.json()["results"]}
        assert len(assigned) == 160 and len(set(assigned.values())) == 160
        for item_id, sid in list(assigned.items())[::8]:
            got = server.get(f"/v1/items/{item_id}")
            assert got.status_code == 200 and tuple(got.json()["semantic_id"]) == sid
        counts = {server.get("/v1/stats").json()["items"] for _ in range(8)}
        assert counts == {4_000 + 6 + 160}
    finally:
        server.stop()
    _check_clean(index)


@pytest.mark.slow
def test_worker_start_failure_is_one_line_exit_2(tmp_path):
    done = run_semid("serve", "--index", str(tmp_path / "missing"), "--workers", "2", "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("error: no index at"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_read_only_replicas_follow_the_writer(index, catalogs):
    writer = Server(index)
    replicas = [Server(index, "--read-only"), Server(index, env={"SEMID_READ_ONLY": "true", "SEMID_WORKERS": "2"})]
    try:
        for replica in replicas:
            ready = replica.get("/readyz").json()
            assert ready["role"] == "replica" and ready["items"] == 4_000
            refused = replica.post("/v1/assign", {"items": _new_items(catalogs, 0, 1)})
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "read_only_replica"
            assert "send writes to the writer" in refused.json()["error"]["message"]
            register = replica.post("/v1/encode", {"embeddings": [[1.0] * 16], "item_ids": [7], "register": True})
            assert register.status_code == 403 and register.json()["error"]["code"] == "read_only_replica"
            encode = replica.post("/v1/encode", {"embeddings": [[1.0] * 16]})
            assert encode.status_code == 200, encode.text  # reads still answer
        assert writer.get("/readyz").json()["role"] == "writer"
        for n in range(3):
            item = _new_items(catalogs, 100 + n, 1)[0]
            r = writer.post("/v1/assign", {"items": [item]})
            assert r.status_code == 200, r.text
            sid = r.json()["results"][0]["semantic_id"]
            registered = time.monotonic()
            for replica in replicas:
                while True:
                    got = replica.get(f"/v1/items/{item['item_id']}")
                    if got.status_code == 200:
                        assert got.json()["semantic_id"] == sid
                        break
                    assert time.monotonic() - registered < 2.0, f"not on {replica.url} within 2 s"
                    time.sleep(0.05)
        assert not any(p.name.startswith(".tmp") for p in index.iterdir())
    finally:
        for server in (writer, *replicas):
            server.stop()
    _check_clean(index)


@pytest.mark.slow
def test_writer_killed_mid_write_leaves_the_replica_on_the_last_version_and_the_next_writer_recovers(index, catalogs):
    from semid.service.index.store import FAULT_ENV

    replica = Server(index, "--read-only")
    writer = Server(index, env={FAULT_ENV: "after-segment-fsync:2"})  # dies inside its second write
    try:
        first = _new_items(catalogs, 200, 3)
        assert writer.post("/v1/assign", {"items": first}).status_code == 200
        good = replica.get("/readyz").json()
        assert good["items"] == 4_003
        with pytest.raises(httpx.HTTPError):
            writer.post("/v1/assign", {"items": _new_items(catalogs, 210, 3)})
        assert writer.process.wait(timeout=60) == -signal.SIGKILL
        for _ in range(5):  # past the 1 s revalidation: still the last committed version, and answering
            time.sleep(0.3)
            now = replica.get("/readyz").json()
            assert (now["version"], now["items"]) == (good["version"], 4_003)
            assert replica.get(f"/v1/items/{first[0]['item_id']}").status_code == 200
            assert replica.get(f"/v1/items/{_new_items(catalogs, 210, 1)[0]['item_id']}").status_code == 404
        after = Server(index)  # the next writer cleans up the kill's leftovers and commits
        try:
            again = after.post("/v1/assign", {"items": _new_items(catalogs, 210, 3)})
            assert again.status_code == 200, again.text
        finally:
            after.stop()
        got = replica.get(f"/v1/items/{_new_items(catalogs, 210, 1)[0]['item_id']}")
        assert got.status_code == 200 and replica.get("/readyz").json()["items"] == 4_006
    finally:
        for server in (writer, replica):
            server.stop()
    _check_clean(index)
