"""GET /v1/stats (the explorer's health figures), the evaluation report link, and the static explorer at /ui."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import semid.service.api as api_package
from semid.service.api.app import create_app
from semid.service.api.routes import stats as stats_route
from semid.service.api.settings import ServiceSettings
from semid.service.api.state import ServiceState
from semid.service.assign import assign_catalog
from semid.service.evaluation import run as evaluation_run

KEEP = ("title", "category")
UI_DIR = Path(api_package.__file__).parent / "ui"


def make_client(index_dir: Path, **settings) -> TestClient:
    state = ServiceState.load(ServiceSettings(index_dir=index_dir, **settings))
    return TestClient(create_app(state.settings, state=state), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def base_index(tmp_path_factory, tiny_checkpoint, tiny_catalog_file) -> Path:
    out = tmp_path_factory.mktemp("stats") / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=out, keep_columns=KEEP)
    return out


@pytest.fixture(scope="module")
def client(base_index) -> TestClient:
    return make_client(base_index, api_key="s3cret")


@pytest.fixture(scope="module")
def evaluation(base_index, tiny_catalog_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evaluation")
    evaluation_run.run_evaluation(base_index, tiny_catalog_file, out)
    return out


def all_items(client: TestClient) -> list[dict]:
    """Every item, by walking the prefix pages of each first code: the reference for the figures."""
    items = []
    for child in client.get("/v1/children").json()["children"]:
        page = client.get(f"/v1/prefixes/{child['code']}?limit=1000").json()
        assert page["next_cursor"] is None
        items += page["items"]
    return items


# --- /v1/stats -------------------------------------------------------------------------------


def test_stats_are_the_figures_of_the_served_items(client):
    response = client.get("/v1/stats")  # a read: no API key needed even when one is set
    assert response.status_code == 200, response.text
    stats = response.json()
    items = all_items(client)
    n = len(items)
    assert stats["items"] == n == 600
    assert stats["retired"] == 0
    assert stats["keep_columns"] == list(KEEP)
    assert stats["fingerprint"] == client.get("/readyz").json()["fingerprint"]
    assert stats["levels_count"] == 3
    assert stats["fallback"] == sum(it["fallback"] for it in items)
    assert stats["fallback"] > 0  # the tiny index overflows some buckets: the count is not trivially 0
    bases = [tuple(it["base_code"]) for it in items]
    buckets = {b: bases.count(b) for b in set(bases)}
    assert stats["base_codes"]["distinct"] == len(buckets)
    assert stats["base_codes"]["largest_bucket"] == max(buckets.values())
    assert stats["base_codes"]["collision_rate"] == pytest.approx(1 - len(buckets) / n)
    sids = [it["semantic_id"] for it in items]
    assert [lv["position"] for lv in stats["levels"]] == [1, 2, 3, 4]
    assert [lv["dedup"] for lv in stats["levels"]] == [False, False, False, True]
    parents = 1
    for pos, level in enumerate(stats["levels"]):
        used = {s[pos] for s in sids}
        nodes = {tuple(s[: pos + 1]) for s in sids}
        assert level["codebook_size"] == 8
        assert level["codes_used"] == len(used)
        assert level["usage"] == pytest.approx(len(used) / 8)
        assert level["prefixes"] == len(nodes)
        assert level["mean_fanout"] == pytest.approx(len(nodes) / parents)
        parents = len(nodes)
    assert stats["levels"][-1]["prefixes"] == n  # every full ID is unique
    assert stats["report"] is None  # no SEMID_REPORT_DIR


def test_stats_are_cached_per_snapshot_and_follow_writes(base_index, tmp_path, tiny_catalog):
    copy = tmp_path / "index"
    shutil.copytree(base_index, copy)
    writable = make_client(copy)
    snapshot = writable.app.state.semid.index.snapshot
    assert stats_route.snapshot_stats(snapshot) is stats_route.snapshot_stats(snapshot)
    before = writable.get("/v1/stats").json()

    rng = np.random.default_rng(5)
    emb = tiny_catalog.embeddings[:5] + 0.05 * rng.standard_normal((5, 16))
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    new = [{"item_id": 10_000 + i, "embedding": e.tolist(), "title": f"new {i}"} for i, e in enumerate(emb)]
    assert writable.post("/v1/assign", json={"items": new}).status_code == 200

    after = writable.get("/v1/stats").json()
    assert after["items"] == before["items"] + 5
    assert after["levels"][-1]["prefixes"] == before["levels"][-1]["prefixes"] + 5
    assert writable.app.state.semid.index.snapshot is not snapshot


def test_report_link_when_the_evaluation_is_of_this_index(base_index, evaluation, tmp_path):
    # the names the route looks for are the ones `semid evaluate` writes
    assert (stats_route.REPORT_FILE, stats_route.METRICS_FILE) == (
        evaluation_run.REPORT_FILE,
        evaluation_run.METRICS_FILE,
    )
    with_report = make_client(base_index, report_dir=evaluation)
    report = with_report.get("/v1/stats").json()["report"]
    assert report == {"url": "/v1/stats/report", "items": 600}
    page = with_report.get(report["url"])
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text == (evaluation / "report.html").read_text(encoding="utf-8")

    # a report of another checkpoint's index is not linked, nor served
    other = tmp_path / "other"
    shutil.copytree(evaluation, other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["checkpoint_fingerprint"] = "0" * 32
    (other / "metrics.json").write_text(json.dumps(metrics))
    for client in (make_client(base_index, report_dir=other), make_client(base_index)):
        assert client.get("/v1/stats").json()["report"] is None
        missing = client.get("/v1/stats/report")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


# --- /ui -------------------------------------------------------------------------------------


def test_ui_redirects_to_its_folder_without_echoing_the_host(client):
    response = client.get("/ui", follow_redirects=False, headers={"Host": "evil.example"})
    assert response.status_code in (302, 307)
    assert response.headers["location"] == "ui/"


def test_ui_serves_index_and_its_assets(client):
    index = client.get("/ui/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert index.text == (UI_DIR / "index.html").read_text(encoding="utf-8")
    assert "default-src 'none'" in index.text  # the page's CSP forbids fetching anything but its own origin
    assets = re.findall(r'(?:src|href)="([^"#][^"]*)"', index.text)
    assert {"app.js", "style.css", "favicon.png"} <= set(assets)
    for asset in assets:
        response = client.get(f"/ui/{asset}")
        assert response.status_code == 200, asset
        assert response.content == (UI_DIR / asset).read_bytes()
    assert client.get("/ui/nope.js").status_code == 404


def test_ui_files_fetch_nothing_external_and_never_send_the_api_key():
    files = sorted(p for p in UI_DIR.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"index.html", "app.js", "style.css"}
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        assert not re.search(r"https?://", text, re.IGNORECASE), f"{path.name} names an external URL"
        assert not re.search(r"//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE), f"{path.name}: protocol-relative URL"
        assert "api-key" not in text.lower() and "api_key" not in text.lower(), path.name
