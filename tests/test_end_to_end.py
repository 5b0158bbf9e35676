"""End to end with real processes: `semid train` -> `semid assign` -> `semid export` -> `semid serve` (uvicorn),
then prefix look-ups over HTTP return exactly the exported items under each prefix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from tests.conftest import ROOT, tiny_config

SEMID = [sys.executable, "-m", "semid.service.cli"]


def semid(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [*SEMID, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_env()
    )
    assert done.returncode == 0, f"semid {args} -> {done.returncode}\n{done.stderr[-3000:]}"
    return done


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SEMID_API_KEY", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(base: str, proc: subprocess.Popen, log: Path, deadline_s: float = 90) -> dict:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"semid serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            r = httpx.get(f"{base}/readyz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"semid serve not ready after {deadline_s}s:\n{log.read_text()[-3000:]}")


def _walk(client: httpx.Client, prefix: list[int], limit: int = 7) -> tuple[int, list[dict]]:
    items, cursor, count = [], None, None
    for _ in range(10_000):
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        r = client.get(f"/v1/prefixes/{'-'.join(map(str, prefix))}", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        count = page["count"] if count is None else count
        assert page["count"] == count
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return count, items
    raise AssertionError("pagination did not end")


def test_train_assign_serve_prefix_lookup(tmp_path, tiny_catalog_file):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config().to_dict()))
    ckpt, index, exported = tmp_path / "ckpt", tmp_path / "index", tmp_path / "ids.parquet"
    semid("train", "--catalog", tiny_catalog_file, "--out", ckpt, "--config", config, "--quiet")
    semid("assign", "--checkpoint", ckpt, "--catalog", tiny_catalog_file, "--index", index,
          "--keep-columns", "title,category", "--quiet")  # fmt: skip
    semid("export", "--index", index, "--out", exported)
    rows = pq.read_table(exported).to_pylist()
    assert len(rows) == 600

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*SEMID, "serve", "--index", str(index), "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    try:
        ready = _wait_ready(base, proc, log)
        assert ready["items"] == 600
        with httpx.Client(base_url=base, timeout=10) as client:
            roots = client.get("/v1/children").json()["children"]
            assert sum(c["count"] for c in roots) == 600
            prefixes = [[c["code"]] for c in roots]
            for row in rows[::97]:
                prefixes += [row["semantic_id"][:2], row["semantic_id"][:3], row["semantic_id"]]
            for prefix in prefixes:
                expected = [r for r in rows if r["semantic_id"][: len(prefix)] == prefix]
                count, items = _walk(client, prefix)
                assert count == len(expected), prefix
                assert [(i["item_id"], i["semantic_id"], i["token"]) for i in items] == [
                    (r["item_id"], r["semantic_id"], r["token"]) for r in expected
                ], prefix
            one = rows[123]
            assert client.get(f"/v1/items/{one['item_id']}").json()["semantic_id"] == one["semantic_id"]
            missing = client.get("/v1/prefixes/1-2-3-4-5")
            assert missing.status_code == 422 and missing.json()["error"]["field"] == "prefix"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
