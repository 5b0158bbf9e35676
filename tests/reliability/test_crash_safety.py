"""SIGKILL `semid assign` at many points of a run, and a server during concurrent writes; then reopen.

After every kill the index must open, pass `semid check`, and hold every write acknowledged before
the kill (a finished assign run, a 200 from a write route), with unchanged IDs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from service.export import export_table
from service.index import SemanticIdIndex
from service.index_check import check_index
from tests.conftest import ROOT
from tests.reliability.conftest import SEMID, assign_args, run_semid, start_assign

KILL_POINTS = 12


def _ids(index_dir) -> dict:
    table = export_table(SemanticIdIndex.open(index_dir))
    return dict(
        zip(table.column("item_id").to_pylist(), map(tuple, table.column("semantic_id").to_pylist()), strict=True)
    )


@pytest.mark.slow
def test_sigkill_during_assign_never_loses_or_corrupts(tmp_path, checkpoint, catalogs):
    index = tmp_path / "idx"
    done = run_semid(*assign_args(checkpoint, catalogs["small"], index))
    assert done.returncode == 0, done.stderr
    acknowledged = _ids(index)
    # how long a full run of the large catalog takes, to spread the kill points over it
    probe = tmp_path / "probe"
    start = time.perf_counter()
    assert run_semid(*assign_args(checkpoint, catalogs["large"], probe)).returncode == 0
    duration = time.perf_counter() - start
    rng = np.random.default_rng(0)
    killed = 0
    for delay in sorted(rng.uniform(0.05, duration, size=KILL_POINTS)):
        proc = start_assign(checkpoint, catalogs["large"], index, quiet_output=True)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        code = proc.wait(timeout=60)
        report = check_index(index)
        assert report.ok, (delay, report.problems)
        now = _ids(index)
        for item, sid in acknowledged.items():
            assert now[item] == sid, (delay, item)
        if code == 0:  # the run finished before the kill: its writes are acknowledged too
            acknowledged = now
        assert len(now) in (4_000, 40_000), (delay, len(now))
    assert killed >= KILL_POINTS // 2, "too few runs were actually killed mid-way"
    print(f"assign: {killed} of {KILL_POINTS} runs killed mid-way (run length {duration:.1f} s); all reopened clean")
    final = run_semid(*assign_args(checkpoint, catalogs["large"], index))
    assert final.returncode == 0, final.stderr
    assert run_semid("check", "--index", str(index)).returncode == 0
    after = _ids(index)
    assert len(after) == 40_000 and len(set(after.values())) == 40_000
    assert all(after[i] == s for i, s in acknowledged.items())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigkill_server_during_concurrent_writes_keeps_acknowledged_ids(tmp_path, checkpoint, catalogs):
    index = tmp_path / "idx"
    assert run_semid(*assign_args(checkpoint, catalogs["small"], index)).returncode == 0
    other = pq.read_table(catalogs["other"])
    ids = other.column("item_id").to_pylist()
    emb = np.asarray(other.column("embedding").to_pylist(), dtype=np.float32).tolist()
    port = _free_port()
    env = {**os.environ, "SEMID_API_KEY": "k"}
    server = subprocess.Popen(
        [*SEMID, "serve", "--index", str(index), "--port", str(port), "--log-level", "error"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    acknowledged: dict = {}
    lock = threading.Lock()
    stop = threading.Event()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not become ready")

        def writer(worker: int) -> None:
            with httpx.Client(base_url=base, headers={"X-API-Key": "k"}, timeout=30) as client:
                for start in range(worker * 20, len(ids), 4 * 20):
                    if stop.is_set():
                        return
                    batch = {
                        "items": [
                            {"item_id": i, "embedding": e}
                            for i, e in zip(ids[start : start + 20], emb[start : start + 20], strict=True)
                        ]
                    }
                    try:
                        r = client.post("/v1/assign", json=batch)
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        with lock:
                            for res in r.json()["results"]:
                                acknowledged[res["item_id"]] = tuple(res["semantic_id"])

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        server.send_signal(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=30)
    assert acknowledged, "no write was acknowledged before the kill; the test proves nothing"
    print(f"server: killed during writes with {len(acknowledged)} items acknowledged; all present after reopening")
    report = check_index(index)
    assert report.ok, report.problems
    now = _ids(index)
    for item, sid in acknowledged.items():
        assert now.get(item) == sid, item
    assert len(set(now.values())) == len(now)
    assert sys.platform != "win32"
