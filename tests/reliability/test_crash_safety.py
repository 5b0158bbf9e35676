"""SIGKILL `semid assign` and a server at every step of the write path, via the SEMID_FAULT hook.

Each run starts from a copy of one index (4,000 items) and is killed by the process itself at one
named step (semid.service.index.store.fault_point). After every kill the index must open, pass `semid check`,
hold every write acknowledged before the kill (the first `semid assign`, each 200 from a write
route) with unchanged IDs, and a re-run must complete.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from semid.service.export import export_table
from semid.service.index.check import check_index
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.store import CRASH_STEPS, FAULT_ENV
from tests.conftest import ROOT
from tests.reliability.conftest import SEMID, assign_args, run_semid
from tests.servers import free_port

# Online writes skip rewriting faiss.index, so the server only reaches the segment and manifest steps.
ONLINE_STEPS = tuple(s for s in CRASH_STEPS if "-vectors-" not in s)
WRITES_BEFORE_KILL = 2  # the server acknowledges this many writes, then dies in the next one


def _ids(index_dir) -> dict:
    table = export_table(SemanticIdIndex.open(index_dir))
    return dict(
        zip(table.column("item_id").to_pylist(), map(tuple, table.column("semantic_id").to_pylist()), strict=True)
    )


def _leftovers(index_dir) -> list[str]:
    """Temporary files and segments the manifest does not list: what a kill leaves behind."""
    listed = set(SemanticIdIndex.open(index_dir).segments)
    temps = [p.name for p in [*index_dir.iterdir(), *(index_dir / "segments").iterdir()] if p.name.startswith(".tmp-")]
    orphans = [p.name for p in (index_dir / "segments").iterdir() if p.suffix == ".parquet" and p.name not in listed]
    return sorted(temps + orphans)


def _assert_sound(index_dir, acknowledged: dict) -> tuple[dict, list[str]]:
    """check and `semid check` pass, acknowledged IDs unchanged; returns the IDs and check's notes."""
    report = check_index(index_dir)
    assert report.ok, report.problems
    cli = run_semid("check", "--index", str(index_dir))
    assert cli.returncode == 0 and cli.stdout.rstrip().endswith("ok"), cli.stdout + cli.stderr
    now = _ids(index_dir)
    for item, sid in acknowledged.items():
        assert now.get(item) == sid, item
    assert len(set(now.values())) == len(now)
    return now, report.notes


@pytest.mark.slow
@pytest.mark.parametrize("step", CRASH_STEPS)
def test_sigkill_assign_at_each_write_step(step, tmp_path, small_index, checkpoint, catalogs):
    index = tmp_path / "idx"
    shutil.copytree(small_index, index)
    acknowledged = _ids(index)
    assert len(acknowledged) == 4_000
    env = {**os.environ, FAULT_ENV: step}
    killed = run_semid(*assign_args(checkpoint, catalogs["other"], index), env=env)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)

    now, notes = _assert_sound(index, acknowledged)
    committed = step == "after-manifest-rename"  # the manifest is the commit point
    assert len(now) == (7_000 if committed else 4_000)
    left = _leftovers(index)
    if step in ("after-segment-write", "after-segment-fsync", "after-manifest-write", "after-manifest-fsync"):
        assert any(name.startswith(".tmp-") for name in left), left
    if step == "after-segment-rename":
        assert left == ["seg-000002.parquet"]  # written in place but never listed
    if step.startswith("after-vectors-") and step != "after-vectors-rename":
        assert any(name.startswith(".tmp-faiss.index") for name in left), left
    if step == "after-vectors-rename":  # faiss.index already holds 7,000 vectors; the manifest lists 4,000
        assert any("faiss.index does not match the checksum" in note for note in notes), notes

    again = run_semid(*assign_args(checkpoint, catalogs["other"], index))
    assert again.returncode == 0, again.stderr
    final, notes = _assert_sound(index, now)
    assert len(final) == 7_000
    assert _leftovers(index) == []  # the re-run's writer cleaned up what the kill left
    assert notes == []
    print(f"assign killed at {step}: {len(now)} items after the kill, 7000 after the re-run")


def _start_server(index, port: int, env: dict) -> subprocess.Popen:
    server = subprocess.Popen(
        [*SEMID, "serve", "--index", str(index), "--port", str(port), "--log-level", "error"],
        cwd=ROOT,
        env={**env, "SEMID_API_KEY": "k"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):  # ask /readyz until it answers 200, waiting on the process in between
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        try:
            pytest.fail(f"server exited with {server.wait(timeout=0.2)} before it was ready")
        except subprocess.TimeoutExpired:
            continue
    server.kill()
    pytest.fail("server did not become ready")


def _batches(catalog, size: int = 20) -> list[dict]:
    other = pq.read_table(catalog)
    ids = other.column("item_id").to_pylist()
    emb = np.asarray(other.column("embedding").to_pylist(), dtype=np.float32).tolist()
    return [
        {"items": [{"item_id": i, "embedding": e} for i, e in zip(ids[s : s + size], emb[s : s + size], strict=True)]}
        for s in range(0, 5 * size, size)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("step", ONLINE_STEPS)
def test_sigkill_server_at_each_write_step_keeps_acknowledged_ids(step, tmp_path, small_index, catalogs):
    index = tmp_path / "idx"
    shutil.copytree(small_index, index)
    acknowledged = _ids(index)
    batches = _batches(catalogs["other"])
    port = free_port()
    server = _start_server(index, port, {**os.environ, FAULT_ENV: f"{step}:{WRITES_BEFORE_KILL + 1}"})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": "k"}, timeout=60) as client:
            for batch in batches[:WRITES_BEFORE_KILL]:
                r = client.post("/v1/assign", json=batch)
                assert r.status_code == 200, r.text
                acknowledged.update({res["item_id"]: tuple(res["semantic_id"]) for res in r.json()["results"]})
            with pytest.raises(httpx.HTTPError):  # the server kills itself inside this write
                client.post("/v1/assign", json=batches[WRITES_BEFORE_KILL])
        assert server.wait(timeout=60) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
    now, _ = _assert_sound(index, acknowledged)
    in_flight = [item["item_id"] for item in batches[WRITES_BEFORE_KILL]["items"]]
    expect = 4_000 + 20 * (WRITES_BEFORE_KILL + (step == "after-manifest-rename"))
    assert len(now) == expect and all((i in now) == (step == "after-manifest-rename") for i in in_flight)

    # a re-run: a fresh server takes the in-flight batch again and one more; nothing moves
    server = _start_server(index, port, {k: v for k, v in os.environ.items() if k != FAULT_ENV})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": "k"}, timeout=60) as client:
            for batch in batches[WRITES_BEFORE_KILL : WRITES_BEFORE_KILL + 2]:
                r = client.post("/v1/assign", json=batch)
                assert r.status_code == 200, r.text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    final, _ = _assert_sound(index, now)
    assert len(final) == 4_000 + 20 * (WRITES_BEFORE_KILL + 2)
    assert not [name for name in _leftovers(index) if name.startswith(".tmp-")]  # removed by the re-run
    print(f"server killed at {step}: {len(acknowledged) - 4_000} acknowledged items kept their IDs")
