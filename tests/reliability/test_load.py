"""A short mixed load against a real `semid serve` on loopback: no errors, no lost or changed IDs.

The same load as `benchmarks/load_test.py` (70 % prefix pages, 10 % children, 15 % one-embedding encodes, 5 %
registrations of 4 new items with the API key), for a few seconds with 4 client threads, on an index built from
the reliability checkpoint (3 x 64 codes: room for every item registered here).
"""

from __future__ import annotations

import httpx
import pytest

from benchmarks.load_test import MIX, run_load
from benchmarks.service_speed import draw_prefixes
from semid.service.assign import assign_catalog
from semid.service.index.check import check_index
from tests.servers import Server

DURATION_S = 5.0
WORKERS = 4
API_KEY = "load-test-key"


@pytest.fixture
def served_index(tmp_path, checkpoint, catalogs):
    index = tmp_path / "idx"
    assign_catalog(checkpoint=checkpoint, catalog=catalogs["small"], index_dir=index)
    server = Server(index, tmp_path / "server.log", threads=1)
    server.env["SEMID_API_KEY"] = API_KEY
    try:
        server.start()
        yield server, index
    finally:
        server.stop()


@pytest.mark.slow
def test_short_mixed_load(served_index):
    server, index = served_index
    prefixes, _, items_before = draw_prefixes(index, seed=0)
    result = run_load(
        server.base,
        duration=DURATION_S,
        concurrency=WORKERS,
        prefixes=prefixes,
        dim=16,
        api_key=API_KEY,
        seed=0,
        server_pid=server.proc.pid,
    )
    errors = [(r["type"], r["error_kinds"]) for r in result["rows"] if r["error_kinds"]]
    assert result["errors_total"] == 0, (errors, server.log_tail())
    assert not result["worker_crashes"] and result["workers_still_running"] == 0
    assert len(result["rows"]) == len(MIX)
    assert all(r["requests"] > 0 for r in result["rows"]), [(r["type"], r["requests"]) for r in result["rows"]]

    registered = result["registered_items"]
    assert registered and result["items_registered"] == len(registered)
    assert len({i for i, _ in registered}) == len(registered)
    assert len({tuple(sid) for _, sid in registered}) == len(registered)  # no ID handed out twice
    assert result["items_before"] == items_before
    assert result["items_after"] == items_before + len(registered)
    assert result["item_count_consistent"]
    with httpx.Client(base_url=server.base, timeout=30.0) as client:
        for item_id, sid in registered:
            response = client.get(f"/v1/items/{item_id}")
            assert response.status_code == 200, (item_id, response.text)
            assert response.json()["semantic_id"] == sid, item_id
    assert server.proc.poll() is None, server.log_tail()

    report = check_index(index)
    assert report.ok, report.problems
    assert report.item_count == items_before + len(registered)
