"""GET /v1/explain (what a code means: terms, label, representatives) and GET /v1/map (a seeded 2-D sample).

The index is the tiny catalog assigned twice: once to learn each item's semantic ID, then again (same items,
same order, so the same IDs) with kept text columns written from those IDs: every item under the most
populated first code H is a "Horror slasher night ..." (genres ["Horror"]), and those under its largest child
also say "camp"; every other item is a "Sunny comedy ..." (genres ["Comedy"]), half of them also "night".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from semid.model.data.catalog import Catalog
from semid.model.data.synthetic import write_catalog
from semid.service.api.app import create_app
from semid.service.api.settings import ServiceSettings
from semid.service.api.state import ServiceState
from semid.service.assign import assign_catalog
from semid.service.encoder import CheckpointEncoder
from semid.service.errors import InvalidInputError
from semid.service.explorer import nodes, projection
from semid.service.explorer.cache import SnapshotCache
from semid.service.explorer.terms import item_terms

KEEP = ("title", "genres")


def make_client(index_dir: Path) -> TestClient:
    state = ServiceState.load(ServiceSettings(index_dir=index_dir))
    return TestClient(create_app(state.settings, state=state), raise_server_exceptions=False)


def all_items(client: TestClient) -> list[dict]:
    items = []
    for child in client.get("/v1/children").json()["children"]:
        page = client.get(f"/v1/prefixes/{child['code']}?limit=1000").json()
        items += page["items"]
    return items


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_checkpoint, tiny_catalog):
    base = tmp_path_factory.mktemp("explain")
    plain = Catalog(item_ids=tiny_catalog.item_ids, embeddings=tiny_catalog.embeddings)
    plain_file = write_catalog(plain, base / "plain.parquet")
    assign_catalog(checkpoint=tiny_checkpoint, catalog=plain_file, index_dir=base / "a")
    plain_client = make_client(base / "a")
    sid_of = {it["item_id"]: it["semantic_id"] for it in all_items(plain_client)}
    firsts = [sid_of[i][0] for i in tiny_catalog.item_ids.tolist()]
    horror = max(set(firsts), key=lambda c: (firsts.count(c), -c))
    seconds = [sid_of[i][1] for i in tiny_catalog.item_ids.tolist() if sid_of[i][0] == horror]
    camp = max(set(seconds), key=lambda c: (seconds.count(c), -c))
    titles, genres = [], []
    for n, item_id in enumerate(tiny_catalog.item_ids.tolist()):
        sid = sid_of[item_id]
        if sid[0] == horror:
            titles.append(f"Horror slasher night {n}" + (" camp" if sid[1] == camp else ""))
            genres.append(["Horror"])
        else:
            titles.append(f"Sunny comedy {n}" + (" night" if n % 2 == 0 else ""))
            genres.append(["Comedy"])
    columns = pa.table({"title": titles, "genres": pa.array(genres, pa.list_(pa.string()))})
    catalog = write_catalog(
        Catalog(item_ids=tiny_catalog.item_ids, embeddings=tiny_catalog.embeddings, columns=columns),
        base / "labelled.parquet",
    )
    assign_catalog(checkpoint=tiny_checkpoint, catalog=catalog, index_dir=base / "b", keep_columns=KEEP)
    client = make_client(base / "b")
    items = all_items(client)
    assert {it["item_id"]: it["semantic_id"] for it in items} == sid_of  # the same IDs: the labels follow them
    index = base / "b"
    return {"client": client, "items": items, "horror": horror, "camp": camp, "index": index, "plain": plain_client}


def by_code(body: dict) -> dict[int, dict]:
    return {child["prefix"][-1]: child for child in body["children"]}


def test_first_codes_are_labelled_by_what_sets_them_apart(labelled):
    client, items, horror = labelled["client"], labelled["items"], labelled["horror"]
    response = client.get("/v1/explain")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prefix"] == [] and body["columns"] == list(KEEP)
    counts = {c["code"]: c["count"] for c in client.get("/v1/children").json()["children"]}
    children = by_code(body)
    assert {c: child["count"] for c, child in children.items()} == counts
    assert all(child["scanned"] == child["count"] for child in children.values())  # small nodes: read whole
    n_horror = counts[horror]
    node = children[horror]
    # horror, slasher and night are in every item under H; night is also in half the others, so it lifts less
    # and comes third, although a ranking by frequency alone would put it before slasher
    assert [t["term"] for t in node["terms"][:3]] == ["horror", "slasher", "night"]
    assert node["label"] == "horror · slasher"
    assert node["terms"][0]["items"] == n_horror and node["terms"][0]["share"] == 1.0
    assert node["terms"][0]["lift"] == pytest.approx(len(items) / n_horror, rel=1e-3)
    night = sum("night" in it["title"].lower().split() for it in items) / len(items)
    assert node["terms"][2]["lift"] == pytest.approx(1 / night, rel=1e-3)
    for code, child in children.items():
        if code != horror:
            assert child["label"] == "comedy · sunny", child
    # the root ranks by share alone
    shares = [t["share"] for t in body["node"]["terms"]]
    assert body["node"]["count"] == len(items) and shares == sorted(shares, reverse=True)
    assert {t["lift"] for t in body["node"]["terms"]} == {1.0}


def test_a_child_is_ranked_against_its_parent(labelled):
    client, horror, camp = labelled["client"], labelled["horror"], labelled["camp"]
    body = client.get(f"/v1/explain/{horror}").json()
    assert body["prefix"] == [horror]
    assert body["node"]["label"] == "horror · slasher"  # what the root's list said of it
    children = by_code(body)
    assert children[camp]["terms"][0]["term"] == "camp" and children[camp]["terms"][0]["lift"] > 1
    assert children[camp]["label"].startswith("camp · ")
    for code, child in children.items():
        if code != camp:  # nothing sets them apart from H: horror, slasher, night all lift 1
            assert "camp" not in [t["term"] for t in child["terms"]]
            assert {t["lift"] for t in child["terms"]} == {1.0}
    # a full ID: the item itself, no children
    item = next(it for it in labelled["items"] if it["semantic_id"][0] == horror)
    leaf = client.get("/v1/explain/" + "-".join(map(str, item["semantic_id"]))).json()
    assert leaf["children"] == [] and leaf["node"]["count"] == 1
    assert leaf["node"]["representatives"][0]["item_id"] == item["item_id"]


def test_without_kept_text_there_are_no_terms_but_still_representatives(labelled):
    body = labelled["plain"].get("/v1/explain").json()
    assert body["columns"] == [] and body["children"]
    for node in [body["node"], *body["children"]]:
        assert node["terms"] == [] and node["label"] is None and len(node["representatives"]) == 3


def test_a_prefix_no_item_has_is_an_empty_node(labelled):
    client, items = labelled["client"], labelled["items"]
    held = {tuple(it["semantic_id"]) for it in items}
    dedup = client.get("/v1/stats").json()["levels"][-1]["codebook_size"]
    free = next(
        (*it["semantic_id"][:-1], d) for it in items for d in range(dedup) if (*it["semantic_id"][:-1], d) not in held
    )
    body = client.get("/v1/explain/" + "-".join(map(str, free))).json()
    assert body["node"] == {
        "prefix": list(free),
        "count": 0,
        "scanned": 0,
        "label": None,
        "terms": [],
        "representatives": [],
    }
    assert body["children"] == []


def test_representatives_are_nearest_the_mean_code_vector(labelled, tiny_checkpoint):
    client, horror = labelled["client"], labelled["horror"]
    under = client.get(f"/v1/prefixes/{horror}?limit=1000").json()["items"]  # ID order
    sids = np.array([it["semantic_id"] for it in under])
    vectors = CheckpointEncoder.from_dir(tiny_checkpoint).vectors(sids[:, :3])
    distance = ((vectors - vectors.astype(np.float64).mean(axis=0)) ** 2).sum(1)
    expected, seen = [], set()
    for i in np.argsort(distance, kind="stable").tolist():  # one per base code first
        if tuple(sids[i, :3]) not in seen:
            seen.add(tuple(sids[i, :3]))
            expected.append(under[i]["item_id"])
    node = by_code(client.get("/v1/explain").json())[horror]
    shown = node["representatives"]
    assert [it["item_id"] for it in shown] == expected[:3]
    assert all(it["title"].startswith("Horror slasher") for it in shown)  # the kept columns come with them


def test_large_nodes_are_read_through_a_bounded_sample(labelled, monkeypatch):
    monkeypatch.setattr(nodes, "SCAN_ITEMS", 40)
    monkeypatch.setattr(nodes, "MIN_PER_CHILD", 3)
    monkeypatch.setattr(nodes, "_cache", SnapshotCache(max_entries=8))
    monkeypatch.setattr(nodes, "_samples", SnapshotCache(max_entries=8))
    read = []
    real = nodes._read_sample
    monkeypatch.setattr(nodes, "_read_sample", lambda *a: read.append(a[2]) or real(*a))
    client, horror = labelled["client"], labelled["horror"]
    body = client.get("/v1/explain").json()
    assert body["scan_limit"] == 40 and body["node"]["count"] == len(labelled["items"])
    scanned = [child["scanned"] for child in body["children"]]
    assert sum(scanned) <= 2 * 40 and all(1 <= s for s in scanned)
    assert body["node"]["scanned"] == sum(scanned)
    assert by_code(body)[horror]["scanned"] < by_code(body)[horror]["count"]
    assert by_code(body)[horror]["label"] == "horror · slasher"  # every sampled item says so too
    assert client.get("/v1/explain").json() == body
    assert read == [()]  # the second request was answered from the snapshot's cache


def test_cache_is_per_snapshot():
    class Snap:
        pass

    cache, calls = SnapshotCache(max_entries=2), []
    one, two = Snap(), Snap()
    assert cache.get(one, "k", lambda: calls.append(1) or "a") == "a"
    assert cache.get(one, "k", lambda: calls.append(2) or "b") == "a"
    assert cache.get(two, "k", lambda: calls.append(3) or "c") == "c"  # a new snapshot: computed again
    for key in ("x", "y", "z"):
        cache.get(two, key, str)
    assert cache.get(two, "k", lambda: "again") == "again"  # bounded: the oldest went
    assert calls == [1, 3]


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/v1/explain/99", "prefix"),
        ("/v1/explain/1-x", "prefix"),
        ("/v1/explain/1-1-1-1-1", "prefix"),
        ("/v1/explain/-1", "prefix"),
        ("/v1/map?size=0", "size"),
        ("/v1/map?size=5001", "size"),
        ("/v1/map?seed=-1", "seed"),
        ("/v1/map?seed=abc", "seed"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(labelled, url, field):
    response = labelled["client"].get(url)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["field"] == field


def test_map_is_a_seeded_projection_of_the_code_vectors(labelled, tiny_checkpoint):
    client, items = labelled["client"], labelled["items"]
    response = client.get("/v1/map?seed=3&size=100")
    assert response.status_code == 200, response.text
    body = response.json()
    points = body["points"]
    assert body["seed"] == 3 and body["items"] == len(items) and len(points) == 100
    assert client.get("/v1/map?seed=3&size=100").json() == body  # same seed, same map
    other = client.get("/v1/map?seed=4&size=100").json()["points"]
    assert {p["item_id"] for p in other} != {p["item_id"] for p in points}
    order = {it["item_id"]: n for n, it in enumerate(items)}  # all_items is in ID order
    assert [order[p["item_id"]] for p in points] == sorted(order[p["item_id"]] for p in points)
    titles = {it["item_id"]: it["title"] for it in items}
    assert all(p["caption"] == titles[p["item_id"]] for p in points)
    # the coordinates are the sample's code vectors on their two leading principal components
    sids = np.array([p["semantic_id"] for p in points])
    vectors = CheckpointEncoder.from_dir(tiny_checkpoint).vectors(sids[:, :3]).astype(np.float64)
    centred = vectors - vectors.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    xy = np.array([[p["x"], p["y"]] for p in points])
    np.testing.assert_allclose(np.abs(xy), np.abs(centred @ vt[:2].T), atol=1e-4)
    assert body["explained_variance"] == pytest.approx((s[:2] ** 2 / (s**2).sum()).tolist(), abs=1e-4)
    # capped by the index: asking for more than there are gives them all
    assert len(client.get("/v1/map?size=5000").json()["points"]) == len(items)


def test_map_checks_its_arguments_when_called_directly(labelled):
    state = ServiceState.load(ServiceSettings(index_dir=labelled["index"]))
    with pytest.raises(InvalidInputError) as err:
        projection.code_map(state.index.snapshot, state.encoder, seed=0, size=True)
    assert err.value.field == "size"


def test_terms_are_words_without_stop_words():
    assert item_terms(["The Texas Chainsaw Massacre (1974)", ["Horror", "Sci-Fi"], None, 3, "a - b"]) == {
        "texas",
        "chainsaw",
        "massacre",
        "horror",
        "sci-fi",
    }
    assert item_terms(["x " * 5_000 + "tail"]) == set()  # read up to MAX_CHARS per value


@pytest.mark.parametrize(("n", "d"), [(40, 6), (5, 30)])  # both Gram matrices: d x d, and n x n when d > n
def test_projection_is_the_two_leading_principal_components(n, d):
    vectors = np.random.default_rng(n).normal(size=(n, d)) * np.linspace(3, 1, d)
    xy, explained = projection._pca2(vectors)
    centred = vectors - vectors.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(xy), np.abs(centred @ vt[:2].T), atol=1e-8)
    np.testing.assert_allclose(explained, s[:2] ** 2 / (s**2).sum(), atol=1e-10)
    assert (projection._pca2(vectors[:1])[0] == 0).all()
