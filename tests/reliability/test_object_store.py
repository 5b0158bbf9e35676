"""An index on object storage (``--index s3://bucket/prefix``) against a real S3-compatible server process.

One ``moto_server`` process on loopback per module (a second one for the outage test, which kills it);
each test works on its own prefix, copied server-side from one index assigned once. Every ``semid``
process gets its own ``SEMID_CACHE_DIR``, as if it ran on its own machine, so what one sees of another's
writes came through the store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from semid.service.index.store import FAULT_ENV
from tests.reliability.conftest import assign_args, run_semid
from tests.reliability.test_serve_scale_out import Server, _new_items

boto3 = pytest.importorskip("boto3", reason="needs the s3 extra: pip install 'semid[s3]' (in dev)")
pytest.importorskip("moto.server", reason="needs moto[server] (in the dev extra)")

BUCKET = "semid-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``python -m moto.server`` on a free loopback port, with one bucket."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.endpoint}/moto-api/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.1)
        self.client().create_bucket(Bucket=BUCKET)

    def env(self, cache: Path, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "SEMID_CACHE_DIR": str(cache),
            **extra,
        }

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
        return sorted(o["Key"][len(prefix) + 1 :] for page in pages for o in page.get("Contents", ()))

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def moto():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def base_prefix(moto, checkpoint, catalogs, tmp_path_factory) -> str:
    """`semid assign` of the small catalog (4,000 items) straight into s3://semid-test/base."""
    cache = tmp_path_factory.mktemp("assign-cache")
    done = run_semid(*assign_args(checkpoint, catalogs["small"], f"s3://{BUCKET}/base"), env=moto.env(cache))
    assert done.returncode == 0, done.stderr
    return "base"


def _copy(source: MotoServer, prefix: str, target: MotoServer, new_prefix: str) -> str:
    """Every object of ``prefix`` copied to ``new_prefix`` (maybe on another server); returns its URI."""
    src, dst = source.client(), target.client()
    for key in source.keys(prefix):
        body = src.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read()
        dst.put_object(Bucket=BUCKET, Key=f"{new_prefix}/{key}", Body=body)
    return f"s3://{BUCKET}/{new_prefix}"


@pytest.fixture
def uri(request, moto, base_prefix) -> str:
    """A fresh copy of the base index under a prefix named for the test."""
    return _copy(moto, base_prefix, moto, request.node.name.replace("[", "-").replace("]", ""))


def _serve(uri: str, moto: MotoServer, cache: Path, *args: str, **env: str) -> Server:
    return Server(uri, *args, env=moto.env(cache, **env))  # type: ignore[arg-type]


def _wait_visible(replicas: list[Server], item_id: int, sid: list[int], since: float, bound: float = 2.0) -> None:
    for replica in replicas:
        while True:
            got = replica.get(f"/v1/items/{item_id}")
            if got.status_code == 200:
                assert got.json()["semantic_id"] == sid
                break
            assert time.monotonic() - since < bound, f"item {item_id} not on {replica.url} within {bound} s"
            time.sleep(0.05)


def test_assign_export_and_check_through_the_store_match_a_local_index(
    moto, base_prefix, checkpoint, catalogs, tmp_path
):
    keys = moto.keys(base_prefix)
    assert "manifest.json" in keys and any(k.startswith("checkpoint/") for k in keys)
    segments = [k for k in keys if k.startswith("segments/")]
    assert segments and all(len(Path(k).stem) == 64 for k in segments)  # named by content: never overwritten
    local = tmp_path / "local"
    assert run_semid(*assign_args(checkpoint, catalogs["small"], local)).returncode == 0
    env = moto.env(tmp_path / "cache")
    for index, out in ((f"s3://{BUCKET}/{base_prefix}", tmp_path / "s3.parquet"), (local, tmp_path / "l.parquet")):
        done = run_semid("export", "--index", str(index), "--out", str(out), env=env)
        assert done.returncode == 0, done.stderr
    assert pq.read_table(tmp_path / "s3.parquet").equals(pq.read_table(tmp_path / "l.parquet"))
    checked = run_semid("check", "--index", f"s3://{BUCKET}/{base_prefix}", env=env)
    assert checked.returncode == 0 and checked.stdout.rstrip().endswith("ok"), checked.stdout + checked.stderr
    assert "4000 items" in checked.stdout


def test_bad_store_uris_are_one_line_errors(moto, tmp_path):
    env = moto.env(tmp_path / "cache")
    for uri, says in (
        ("gs://bucket/x", "scheme gs:// is not supported"),
        ("s3://B_/x", "is not a valid bucket name"),
        (f"s3://{BUCKET}/no-index-here", "no index at s3://semid-test/no-index-here"),
    ):
        done = run_semid("export", "--index", uri, "--out", str(tmp_path / "o.parquet"), env=env)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    nothing_there = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}  # no store, no cache
    done = run_semid("check", "--index", f"s3://{BUCKET}/base", env=nothing_there)
    assert done.returncode == 2 and done.stderr.startswith("error: object store unreachable"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_registration_reaches_three_replicas_within_2_s(uri, moto, catalogs, tmp_path):
    writer = _serve(uri, moto, tmp_path / "writer")
    replicas = [_serve(uri, moto, tmp_path / f"replica-{n}", "--read-only") for n in range(2)]
    replicas.append(_serve(uri, moto, tmp_path / "replica-2", "--read-only", SEMID_WORKERS="2"))  # one shared cache
    try:
        for n in range(3):
            item = _new_items(catalogs, 300 + n, 1)[0]
            r = writer.post("/v1/assign", {"items": [item]})
            assert r.status_code == 200, r.text
            _wait_visible(replicas, item["item_id"], r.json()["results"][0]["semantic_id"], time.monotonic())
        version = writer.get("/readyz").json()["version"]
        for replica in replicas:
            ready = replica.get("/readyz").json()
            assert ready["status"] == "ready" and ready["role"] == "replica" and ready["items"] == 4_003
            assert ready["version"] == version
            assert ready["store"]["uri"] == uri and ready["store"]["version"] == version
            assert ready["store"]["behind"] == 0 and ready["store"]["error"] is None
            refused = replica.post("/v1/assign", {"items": _new_items(catalogs, 400, 1)})
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "read_only_replica"
    finally:
        for server in (writer, *replicas):
            server.stop()


@pytest.mark.slow
def test_writers_killed_mid_write_leave_replicas_on_the_last_version_and_the_next_writer_recovers(
    uri, moto, catalogs, tmp_path
):
    replica = _serve(uri, moto, tmp_path / "replica", "--read-only")
    first, second = _new_items(catalogs, 500, 3), _new_items(catalogs, 510, 3)
    # killed with its second write's files uploaded, before the manifest commit; then one killed in the
    # local segment write (the existing fault point) before anything reached the store
    for n, fault in enumerate(("after-upload:2", "after-segment-fsync:1")):
        writer = _serve(uri, moto, tmp_path / "writer", **{FAULT_ENV: fault})
        try:
            if n == 0:
                assert writer.post("/v1/assign", {"items": first}).status_code == 200
            with pytest.raises(httpx.HTTPError):
                writer.post("/v1/assign", {"items": second})
            assert writer.process.wait(timeout=60) == -signal.SIGKILL
        finally:
            writer.stop()
    deadline = time.monotonic() + 3
    while replica.get("/readyz").json()["items"] != 4_003:
        assert time.monotonic() < deadline, "the first write did not reach the replica"
        time.sleep(0.1)
    good = replica.get("/readyz").json()
    for _ in range(4):  # several polls later: still the last committed version, and answering
        time.sleep(0.4)
        now = replica.get("/readyz").json()
        assert (now["status"], now["version"], now["items"]) == ("ready", good["version"], 4_003)
        assert replica.get(f"/v1/items/{first[0]['item_id']}").status_code == 200
        assert replica.get(f"/v1/items/{second[0]['item_id']}").status_code == 404
    after = _serve(uri, moto, tmp_path / "writer")  # the dead writers' cache: its leftovers are cleaned up
    try:
        again = after.post("/v1/assign", {"items": second})
        assert again.status_code == 200, again.text
        _wait_visible([replica], second[0]["item_id"], again.json()["results"][0]["semantic_id"], time.monotonic())
    finally:
        after.stop()
        replica.stop()
    checked = run_semid("check", "--index", uri, env=moto.env(tmp_path / "checker"))
    assert checked.returncode == 0 and checked.stdout.rstrip().endswith("ok"), checked.stdout + checked.stderr
    assert "4006 items" in checked.stdout


def test_two_writers_racing_exactly_one_commit_wins_and_nothing_is_lost(uri, moto, catalogs, tmp_path, monkeypatch):
    """Two writers on two machines (two caches): both read version v, both write; the second commit is refused
    with CommitConflictError, stores nothing, and its retry lands on top of the winner's."""
    from semid.service.encoder import CheckpointEncoder
    from semid.service.errors import CommitConflictError, UnknownItemError
    from semid.service.index.handle import SemanticIdIndex
    from semid.service.placement import register_batch

    for name, value in moto.env(tmp_path).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)

    def open_writer(machine: str) -> SemanticIdIndex:
        monkeypatch.setenv("SEMID_CACHE_DIR", str(tmp_path / machine))
        return SemanticIdIndex.open(uri)

    a, b = open_writer("a"), open_writer("b")
    encoder = CheckpointEncoder.from_dir(a.checkpoint_dir)

    def register(index: SemanticIdIndex, start: int) -> dict:
        items = _new_items(catalogs, start, 4)
        ids = np.array([i["item_id"] for i in items])
        vectors = np.array([i["embedding"] for i in items], dtype=np.float32)
        done = register_batch(index, encoder, item_ids=ids, embeddings=vectors)
        return dict(zip(ids.tolist(), done.semantic_ids.tolist(), strict=True))

    def sid(index: SemanticIdIndex, item_id: int) -> list[int]:
        return list(index.snapshot.get_item(item_id)["semantic_id"])

    version = a.version
    with a.writer():  # a has read version v (and holds its own machine's lock)
        won = register(b, 600)  # b reads v too, and commits first
        with pytest.raises(CommitConflictError, match="written by another writer first"):
            register(a, 700)
    assert b.version > version
    third = open_writer("c")
    assert third.version == b.version and len(third) == 4_004
    assert all(sid(third, i) == s for i, s in won.items())
    with pytest.raises(UnknownItemError):
        third.snapshot.get_item(_new_items(catalogs, 700, 1)[0]["item_id"])  # the loser stored nothing
    retried = register(a, 700)  # a catches up under the lock, then commits on top of the winner
    final = open_writer("d")
    assert len(final) == 4_008 and final.version > b.version
    assert all(sid(final, i) == s for i, s in {**won, **retried}.items())
    assert not set(map(tuple, won.values())) & set(map(tuple, retried.values()))

    # the loser's upload is unlisted garbage (as is the faiss index the create committed and a later commit
    # dropped): gc deletes such objects only, and the index reads whole from the store afterwards
    from semid.service.index.garbage import collect_garbage
    from semid.service.index.mirror import store_files

    prefix = uri.split("/", 3)[3]
    listed = set(store_files(final.snapshot.manifest).values())
    written = {k for k in moto.keys(prefix) if k.startswith(("segments/", "faiss/"))}
    unlisted = written - listed
    assert any(k.startswith("segments/") for k in unlisted), "the losing write left its uploaded segment behind"
    assert collect_garbage(uri).young == sorted(unlisted)  # minutes old: kept by the default grace period
    report = collect_garbage(uri, grace_seconds=0)
    assert report.removed == sorted(unlisted) and report.removed_bytes > 0
    assert {k for k in moto.keys(prefix) if k.startswith(("segments/", "faiss/"))} == listed
    fresh = open_writer("e")
    assert len(fresh) == 4_008 and fresh.check().ok


@pytest.mark.slow
def test_store_unreachable_replicas_serve_from_cache_and_turn_not_ready(
    moto, base_prefix, catalogs, tmp_path, monkeypatch
):
    from semid.service.errors import StoreUnavailableError
    from semid.service.index.handle import SemanticIdIndex

    outage = MotoServer()  # its own server: this test kills it
    try:
        uri = _copy(moto, base_prefix, outage, "outage")
        for name, value in outage.env(tmp_path / "writer").items():
            if name.startswith(("AWS_", "SEMID_CACHE")):
                monkeypatch.setenv(name, value)
        writer = SemanticIdIndex.open(uri)  # in this process: a writer that has read the store
        tuning = {"SEMID_STORE_POLL_SECONDS": "0.2", "SEMID_STORE_STALE_SECONDS": "2"}
        replica = _serve(uri, outage, tmp_path / "replica", "--read-only", **tuning)
        item = pq.read_table(catalogs["small"]).column("item_id")[0].as_py()
        try:
            ready = replica.get("/readyz")
            assert ready.status_code == 200 and ready.json()["store"]["behind"] == 0
            outage.stop()
            killed = time.monotonic()
            while (ready := replica.get("/readyz")).status_code == 200:
                assert time.monotonic() - killed < 15, "still ready long after the store went away"
                time.sleep(0.1)
            assert time.monotonic() - killed >= 2.0 - 0.2 - 0.1  # not before the bound (less one poll interval)
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "store_unreachable"
            assert ready.json()["store"]["error"] and ready.json()["items"] == 4_000
            assert replica.get(f"/v1/items/{item}").status_code == 200  # still serving, from its cache
            with pytest.raises(StoreUnavailableError, match="object store unreachable"), writer.writer():
                pass  # a write needs the store's latest version: refused (HTTP 503 store_unavailable)
            # a replica (re)started during the outage opens the cached version and serves it
            restarted = Server.__new__(Server)
            port = _free_port()
            restarted.url, restarted.port = f"http://127.0.0.1:{port}", port
            env = outage.env(tmp_path / "replica", **tuning)
            restarted.process = subprocess.Popen(
                [*[sys.executable, "-m", "semid.service.cli"], "serve", "--index", uri, "--read-only", "--port"]
                + [str(port), "--log-level", "warning"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        got = restarted.get(f"/v1/items/{item}")
                        if got.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert restarted.process.poll() is None, "a replica restarted during the outage exited"
                    assert time.monotonic() < deadline, "a replica restarted during the outage never served"
                    time.sleep(0.2)
                assert restarted.get("/readyz").status_code == 503
            finally:
                restarted.stop()
        finally:
            replica.stop()
    finally:
        if outage.process.poll() is None:
            outage.stop()


def test_gc_through_the_cli_keeps_listed_and_young_objects(uri, moto, tmp_path, monkeypatch):
    from semid.service.index.garbage import collect_garbage

    prefix = uri.split("/", 3)[3]
    env = moto.env(tmp_path / "cache")
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(name, env[name])  # for this process's own dry run
    already = collect_garbage(uri, grace_seconds=0, dry_run=True).removed  # the create's superseded faiss index
    stray = f"segments/{'0' * 64}.parquet"  # as a crashed writer's upload is named
    moto.client().put_object(Bucket=BUCKET, Key=f"{prefix}/{stray}", Body=b"never committed")
    before = moto.keys(prefix)
    kept = run_semid("gc", "--index", uri, env=env)  # the default grace: an object seconds old may be a write in flight
    assert kept.returncode == 0 and "deleted 0 unlisted" in kept.stdout, kept.stdout + kept.stderr
    assert f"kept {len(already) + 1} younger" in kept.stdout, kept.stdout
    dry = run_semid("gc", "--index", uri, "--grace-minutes", "0", "--dry-run", env=env)
    assert dry.returncode == 0 and f"would delete: {stray}" in dry.stdout, dry.stdout + dry.stderr
    assert moto.keys(prefix) == before
    done = run_semid("gc", "--index", uri, "--grace-minutes", "0", env=env)
    assert done.returncode == 0 and f"deleted: {stray}" in done.stdout, done.stdout + done.stderr
    assert moto.keys(prefix) == sorted(set(before) - {stray, *already})  # the manifest, listed files, checkpoint stay
    checked = run_semid("check", "--index", uri, env=moto.env(tmp_path / "checker"))
    assert checked.returncode == 0 and checked.stdout.rstrip().endswith("ok"), checked.stdout + checked.stderr
    bad = run_semid("gc", "--index", uri, "--grace-minutes", "-1", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_the_python_index_opens_an_index_on_the_store(uri, moto, catalogs, tmp_path, monkeypatch):
    import semid

    for name, value in moto.env(tmp_path / "py-cache").items():
        if name.startswith(("AWS_", "SEMID_CACHE")):
            monkeypatch.setenv(name, value)
    index = semid.Index.open(uri)
    assert len(index) == 4_000
    item = _new_items(catalogs, 800, 1)[0]
    assigned = index.assign([item["item_id"]], np.array([item["embedding"]], dtype=np.float32))
    other = semid.Index.open(uri)  # another handle, as on another machine: sees the write through the store
    assert len(other) == 4_001
    assert list(other.lookup(item["item_id"])["semantic_id"]) == assigned.semantic_ids[0].tolist()
    assert not assigned.existing[0] and index.prefix(assigned.semantic_ids[0][:1].tolist()).count >= 1


def test_evaluate_reads_an_index_on_the_store(uri, moto, catalogs, tmp_path):
    out = tmp_path / "report"
    done = run_semid(
        "evaluate", "--index", uri, "--catalog", str(catalogs["small"]), "--out", str(out), env=moto.env(tmp_path / "c")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["index"] == uri and metrics["items"] == 4_000
    assert (out / "report.html").is_file()


def test_migrate_and_align_read_indexes_on_the_store(uri, moto, base_prefix, checkpoint, catalogs, tmp_path):
    env = moto.env(tmp_path / "c")
    base = f"s3://{BUCKET}/{base_prefix}"
    out = tmp_path / "map.parquet"
    done = run_semid("migrate", "--from", base, "--to", uri, "--out", str(out), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    table = pq.read_table(out)
    assert table.num_rows == 4_000
    assert table.column("old_semantic_id").to_pylist() == table.column("new_semantic_id").to_pylist()  # same IDs
    aligned = tmp_path / "aligned"
    done = run_semid(
        "align", "--checkpoint", str(checkpoint), "--to", uri, "--catalog", str(catalogs["small"]), "--out",
        str(aligned), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (aligned / "config.json").is_file()


def test_a_poll_that_finds_the_cache_busy_still_reads_the_store_version(uri, moto, catalogs, tmp_path, monkeypatch):
    """Two workers share one cache: the one that finds it locked (the other is pulling) still reads the store's
    manifest, so its /readyz neither lags the store nor drifts toward not-ready."""
    import semid
    from semid.service.index.manifest import read_manifest
    from semid.service.index.mirror import LOCK_NAME
    from semid.service.index.store import WriterLock

    for name, value in moto.env(tmp_path / "reader-cache").items():
        if name.startswith(("AWS_", "SEMID_CACHE")):
            monkeypatch.setenv(name, value)
    reader = semid.Index.open(uri)
    mirror = reader._handle._mirror
    before = mirror.status()
    assert before.store_version == reader._handle.version
    monkeypatch.setenv("SEMID_CACHE_DIR", str(tmp_path / "writer-cache"))  # another machine's cache
    item = _new_items(catalogs, 900, 1)[0]
    semid.Index.open(uri).assign([item["item_id"]], np.array([item["embedding"]], dtype=np.float32))
    with WriterLock(mirror.local / LOCK_NAME, description="another worker").held_for(timeout=1.0):
        mirror.poll_once()
    after = mirror.status()
    assert after.store_version == before.store_version + 1 and after.error is None
    assert after.seconds_since_contact is not None and after.seconds_since_contact < 1.0
    assert read_manifest(mirror.local).version == before.store_version  # the cache is the puller's to change
    mirror.poll_once()  # the lock is free again: this poll pulls
    assert read_manifest(mirror.local).version == before.store_version + 1


def test_the_ray_engine_extends_an_index_on_the_store_as_the_local_engine_extends_a_local_one(
    uri, moto, checkpoint, catalogs, tmp_path
):
    """`semid assign --engine ray --index s3://...`: the driver opens the store's index (through its cache),
    Ray's actors encode, the driver commits one segment and one manifest version. Same IDs as the local
    engine's run on a local copy: byte-identical `semid export`."""
    if os.environ.get("SEMID_RAY_REQUIRED") != "1":
        pytest.importorskip("ray", reason="the Ray engine's extra is not installed: pip install 'semid[ray]'")
    env = moto.env(tmp_path / "cache")
    client = moto.client()
    prefix = uri.split("/", 3)[3]
    before = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read())
    args = assign_args(checkpoint, catalogs["other"], uri, "--engine", "ray", "--workers", "2", "--json")
    done = run_semid(*args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["new_items"] == 3_000 and summary["existing_items"] == 0
    after = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read())
    assert len(after["segments"]) == len(before["segments"]) + 1  # one commit: one segment
    assert after["item_count"] == before["item_count"] + 3_000
    local = tmp_path / "local"
    for catalog in (catalogs["small"], catalogs["other"]):
        assert run_semid(*assign_args(checkpoint, catalog, local)).returncode == 0
    exported = {}
    for name, index in (("store", uri), ("local", str(local))):
        exported[name] = tmp_path / f"{name}.parquet"
        done = run_semid("export", "--index", index, "--out", str(exported[name]), env=env)
        assert done.returncode == 0, done.stderr
    store, plain = pq.read_table(exported["store"]), pq.read_table(exported["local"])
    assert store.num_rows == 7_000 and store.equals(plain)
    again = run_semid(*args, env=env)  # the same catalog again: every item known, nothing committed
    assert again.returncode == 0, again.stdout + again.stderr
    last = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read())
    assert last["segments"] == after["segments"]
