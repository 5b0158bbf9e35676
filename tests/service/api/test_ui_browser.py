"""The web explorer (/ui) in a real browser: Playwright drives Chromium against a real `semid serve`.

Needs the `ui` extra (playwright) and a Chromium binary: Debian's `chromium` package, or the one named by
SEMID_CHROMIUM (Playwright's own browser download is not used). With SEMID_UI_SCREENSHOTS=<dir> (e.g. docs/)
the screenshots are also written there as ui-tree.png, ui-search.png, ui-resolve.png, ui-map.png and ui-health.png.
Without playwright or Chromium the test skips, saying which; CI sets SEMID_UI_REQUIRED=1 so that fails instead.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import httpx
import pyarrow as pa
import pytest

from semid.model.data.catalog import Catalog
from semid.model.data.synthetic import write_catalog
from semid.service.assign import assign_catalog
from semid.service.evaluation.run import run_evaluation
from tests.servers import Server

PAGE = 50  # items per page in app.js
KEEP = ("title", "category")
GENRES = ("Horror", "Comedy", "Western", "Drama")  # titles by category and sub-category: codes get meanings
THEMES = ("slasher", "road", "family")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str | None:
    named = os.environ.get("SEMID_CHROMIUM")
    candidates = [named] if named else []
    candidates += ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
    candidates += [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


try:
    from playwright import sync_api
except ImportError:
    sync_api = None
CHROMIUM = _chromium()
MISSING = (
    "playwright is not installed (pip install -e '.[ui]')"
    if sync_api is None
    else "no Chromium found (apt-get install -y chromium, or set SEMID_CHROMIUM)"
    if CHROMIUM is None
    else None
)


@pytest.fixture(scope="session", autouse=True)  # session: decided before the index is built
def browser_available():
    """Skip, saying why, without a browser; with SEMID_UI_REQUIRED=1 (CI) a missing browser fails instead."""
    if MISSING and os.environ.get("SEMID_UI_REQUIRED"):
        pytest.fail(f"SEMID_UI_REQUIRED is set but {MISSING}")
    if MISSING:
        pytest.skip(MISSING)


def _number(text: str) -> int:
    return int(re.sub(r"[^0-9]", "", text))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint, tiny_catalog):
    base = tmp_path_factory.mktemp("ui")
    index = base / "index"
    titles = []
    for item_id, title in zip(tiny_catalog.item_ids.tolist(), tiny_catalog.columns["title"].to_pylist(), strict=True):
        category, sub = map(int, re.search(r"sub-category (\d+)\.(\d+)", title).groups())
        titles.append(f"{GENRES[category]} {THEMES[sub]} {item_id}")
    columns = pa.table({"title": titles, "category": tiny_catalog.columns["category"]})
    catalog = write_catalog(
        Catalog(item_ids=tiny_catalog.item_ids, embeddings=tiny_catalog.embeddings, columns=columns),
        base / "catalog.parquet",
    )
    assign_catalog(checkpoint=tiny_checkpoint, catalog=catalog, index_dir=index, keep_columns=KEEP)
    run_evaluation(index, catalog, base / "evaluation")
    srv = Server(index, base / "server.log", threads=1)
    srv.env.update(SEMID_API_KEY="never-in-the-page", SEMID_REPORT_DIR=str(base / "evaluation"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server.base, timeout=30.0) as client:
        yield client


@pytest.fixture
def page(server):
    """A Chromium page that records every request it makes and every script error."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1366, "height": 860})
        context.set_default_timeout(20_000)
        pg = context.new_page()
        pg.requests, pg.failed, pg.errors = [], [], []
        pg.on("request", lambda r: pg.requests.append(r))
        pg.on("response", lambda r: pg.failed.append((r.status, r.url)) if r.status >= 400 else None)
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        try:
            yield pg
        finally:
            context.close()
            browser.close()


def _shot(page, tmp_path: Path, name: str, publish: bool = True) -> None:
    """A screenshot in the test's folder; with SEMID_UI_SCREENSHOTS=<dir>, the main views are copied there."""
    path = tmp_path / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size > 1000
    target = os.environ.get("SEMID_UI_SCREENSHOTS")
    if target and publish:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / path.name)


def _check_children(page, api, prefix: str) -> list[dict]:
    """The codes, counts, item count and fan-out the page shows are the API's."""
    url = f"/v1/prefixes/{prefix}/children" if prefix else "/v1/children"
    children = api.get(url).json()["children"]
    links = page.locator("a.child")
    sync_api.expect(links).to_have_count(len(children))
    shown = [
        (int(links.nth(i).get_attribute("data-code")), _number(links.nth(i).locator(".count").inner_text()))
        for i in range(len(children))
    ]
    assert shown == [(c["code"], c["count"]) for c in children]
    total = api.get(f"/v1/prefixes/{prefix}?limit=1").json()["count"] if prefix else api.get("/readyz").json()["items"]
    sync_api.expect(page.locator("#node-count")).to_have_text(f"{total:,}")
    sync_api.expect(page.locator("#node-fanout")).to_have_text(str(len(children)))
    assert sum(c["count"] for c in children) == total
    return children


def _check_meanings(page, api, prefix: str) -> dict:
    """The node's label, terms and representatives, and each child's, are the API's (GET /v1/explain)."""
    explained = api.get(f"/v1/explain/{prefix}" if prefix else "/v1/explain").json()
    node = explained["node"]
    sync_api.expect(page.locator("#node-label")).to_have_text(node["label"])
    sync_api.expect(page.locator("#node-terms .term")).to_have_text([t["term"] for t in node["terms"]])
    sync_api.expect(page.locator("#node-reps > li > a:first-child")).to_have_text(
        [r["title"] for r in node["representatives"]]
    )
    for child in explained["children"]:
        line = page.locator(f'.meaning[data-code="{child["prefix"][-1]}"]')
        sync_api.expect(line.locator(".label")).to_have_text(child["label"])
        sync_api.expect(line.locator(".reps a")).to_have_text([r["title"] for r in child["representatives"]])
    return explained


def test_explorer_in_a_browser(server, api, page, tmp_path):
    page.goto(f"{server.base}/ui")
    assert page.url == f"{server.base}/ui/"
    sync_api.expect(page.get_by_role("heading", level=2)).to_have_text("ID tree: first codes")

    # root: the first codes, counts against the API
    root = _check_children(page, api, "")
    first = max(root, key=lambda c: c["count"])["code"]
    # what each first code means, without opening it: its label (a genre or theme word), terms, three titles
    meanings = _check_meanings(page, api, "")
    words = {w.lower() for w in GENRES + THEMES}
    assert all(set(c["label"].split(" · ")) & words for c in meanings["children"]), meanings["children"]

    # one level down, with the keyboard: focus the code's link and press Enter
    page.locator(f'a.child[data-code="{first}"]').focus()
    page.keyboard.press("Enter")
    sync_api.expect(page.get_by_role("heading", level=2)).to_have_text(f"Prefix {first}")
    assert page.url.endswith(f"#/tree/{first}")
    level1 = _check_children(page, api, str(first))
    _check_meanings(page, api, str(first))
    count1 = api.get(f"/v1/prefixes/{first}?limit=1").json()["count"]
    assert count1 > PAGE  # the tiny index has > 50 items under its largest first code: the pager shows
    sync_api.expect(page.locator("table.items tbody tr")).to_have_count(PAGE)
    titles = page.locator("table.items thead th")
    sync_api.expect(titles).to_contain_text(["Semantic ID", "Item", "title", "category"])

    # next page of items: the API's second page, by its cursor
    first_page = api.get(f"/v1/prefixes/{first}?limit={PAGE}").json()
    second_page = api.get(f"/v1/prefixes/{first}?limit={PAGE}&cursor={first_page['next_cursor']}").json()
    page.get_by_role("link", name="Next page").click()
    sync_api.expect(page.get_by_role("heading", level=3, name="Items (page 2)")).to_be_visible()
    rows = page.locator("table.items tbody tr")
    sync_api.expect(rows).to_have_count(len(second_page["items"]))
    sync_api.expect(rows.first.locator("td").nth(1)).to_have_text(str(second_page["items"][0]["item_id"]))
    sync_api.expect(rows.first).to_contain_text(second_page["items"][0]["title"])
    page.go_back()  # the back button returns to page 1
    sync_api.expect(page.get_by_role("heading", level=3, name="Items (page 1)")).to_be_visible()
    sync_api.expect(page.locator("table.items tbody tr").first.locator("td").nth(1)).to_have_text(
        str(first_page["items"][0]["item_id"])
    )

    # a second level down, by a click
    second = max(level1, key=lambda c: c["count"])["code"]
    page.locator(f'a.child[data-code="{second}"]').click()
    prefix2 = f"{first}-{second}"
    sync_api.expect(page.get_by_role("heading", level=2)).to_have_text(f"Prefix {prefix2}")
    _check_children(page, api, prefix2)
    crumbs = page.get_by_role("navigation", name="Breadcrumb")
    sync_api.expect(crumbs.get_by_role("link")).to_have_text(["Root", str(first)])
    _shot(page, tmp_path, "tree")

    # the breadcrumb goes back up; a shared URL opens the same view
    crumbs.get_by_role("link", name=str(first)).click()
    sync_api.expect(page.get_by_role("heading", level=2)).to_have_text(f"Prefix {first}")
    page.goto(f"{server.base}/ui/#/tree/{prefix2}")
    sync_api.expect(page.get_by_role("heading", level=2)).to_have_text(f"Prefix {prefix2}")

    # search an item: its ID, its siblings under the same prefix, its nearest items
    item = first_page["items"][3]
    page.get_by_role("link", name="Search").click()
    page.get_by_label("Item id").fill(str(item["item_id"]))
    page.get_by_label("Item id").press("Enter")
    card = page.get_by_role("region", name="Its semantic ID")
    sid = "-".join(map(str, item["semantic_id"]))
    sync_api.expect(card).to_contain_text(sid)
    sync_api.expect(card).to_contain_text(item["title"])
    parent = "-".join(map(str, item["semantic_id"][: max(1, len(item["semantic_id"]) - 2)]))
    siblings = api.get(f"/v1/prefixes/{parent}?limit={PAGE}").json()
    sib_rows = page.get_by_role("region", name=f"Siblings under {parent}").locator("tbody tr")
    sync_api.expect(sib_rows).to_have_count(len(siblings["items"]))
    near_rows = page.get_by_role("region", name="Nearest items").locator("tbody tr")
    sync_api.expect(near_rows.first).to_be_visible()
    assert 1 <= near_rows.count() <= 10
    near_ids = [near_rows.nth(i).locator("td").nth(1).inner_text() for i in range(near_rows.count())]
    assert str(item["item_id"]) not in near_ids
    _shot(page, tmp_path, "search")

    # an unknown item: the API's message, in the page
    page.get_by_label("Item id").fill("no-such-item")
    page.get_by_label("Item id").press("Enter")
    unknown = api.get("/v1/items/no-such-item").json()["error"]["message"]
    sync_api.expect(page.get_by_role("alert")).to_contain_text(unknown)

    # resolve: an invalid tuple shows the API's error; a valid full ID resolves to its item
    page.get_by_role("link", name="Resolve").click()
    box = page.get_by_label(re.compile("Semantic ID or prefix"))
    box.fill("[99, 1, 2, 0]")
    box.press("Enter")
    err = api.post("/v1/resolve", json={"semantic_id": [99, 1, 2, 0], "k": 10}).json()["error"]
    sync_api.expect(page.get_by_role("alert")).to_contain_text(err["message"])
    _shot(page, tmp_path, "resolve-error", publish=False)
    box = page.get_by_label(re.compile("Semantic ID or prefix"))
    box.fill("12-x")
    box.press("Enter")
    err = api.post("/v1/resolve", json={"semantic_id": [12, "x"], "k": 10}).json()["error"]
    sync_api.expect(page.get_by_role("alert")).to_contain_text(err["message"])
    box = page.get_by_label(re.compile("Semantic ID or prefix"))
    box.fill("[" + ", ".join(map(str, item["semantic_id"])) + "]")
    box.press("Enter")
    sync_api.expect(page.get_by_role("region", name=re.compile(f"Exact: {sid} is item"))).to_contain_text(item["title"])
    sync_api.expect(page.get_by_role("region", name="Nearest valid IDs").locator("tbody tr")).to_have_count(10)
    assert page.url.endswith("#/resolve/" + quote("[" + ", ".join(map(str, item["semantic_id"])) + "]", safe=""))
    # a prefix (as a generator emits mid-way): no exact item, the API's nearest valid IDs
    box = page.get_by_label(re.compile("Semantic ID or prefix"))
    box.fill(parent)
    box.press("Enter")
    sync_api.expect(page.get_by_role("status")).to_contain_text(f"{parent} is a prefix")
    typed = [int(c) for c in parent.split("-")]  # the tuple the page resolves: the same answer as the API's
    nearest = api.post("/v1/resolve", json={"semantic_id": typed, "k": 10}).json()["nearest"]
    resolved = page.get_by_role("region", name="Nearest valid IDs").locator("tbody tr")
    sync_api.expect(resolved).to_have_count(len(nearest))
    sync_api.expect(resolved.locator("td:nth-child(2)")).to_have_text([str(n["item_id"]) for n in nearest])
    _shot(page, tmp_path, "resolve")

    # map: the API's seeded sample, one point per item; a click on a point opens its item
    page.get_by_role("link", name="Map", exact=True).click()
    mapped = api.get("/v1/map?seed=0").json()
    points = page.locator("svg.map a.point")
    sync_api.expect(points).to_have_count(len(mapped["points"]))
    assert [points.nth(i).get_attribute("data-item") for i in (0, len(mapped["points"]) - 1)] == [
        str(mapped["points"][0]["item_id"]),
        str(mapped["points"][-1]["item_id"]),
    ]
    _shot(page, tmp_path, "map")
    seeded = api.get("/v1/map?seed=7").json()["points"]
    page.get_by_label(re.compile("Seed of the sample")).fill("7")
    page.get_by_label(re.compile("Seed of the sample")).press("Enter")
    sync_api.expect(points.first).to_have_attribute("data-item", str(seeded[0]["item_id"]))
    assert page.url.endswith("#/map?seed=7")
    last = seeded[-1]  # drawn last: on top of any point it overlaps
    points.last.click()
    sync_api.expect(page.get_by_role("heading", level=2)).to_have_text(f"Item {last['item_id']}")
    sync_api.expect(page.get_by_role("region", name="Its semantic ID")).to_contain_text(last["caption"])

    # health: the headline figures are the API's
    stats = api.get("/v1/stats").json()
    page.get_by_role("link", name="Health").click()
    sync_api.expect(page.locator("#stat-items")).to_have_text(f"{stats['items']:,}")
    sync_api.expect(page.locator("#stat-fallback")).to_have_text(f"{stats['fallback']:,}")
    sync_api.expect(page.locator("#stat-collision")).to_have_text(f"{100 * stats['base_codes']['collision_rate']:.2f}%")
    sync_api.expect(page.locator("table.levels tbody tr")).to_have_count(len(stats["levels"]))
    _shot(page, tmp_path, "health")
    # the evaluation report of this index, linked and served
    page.get_by_role("link", name="Evaluation report").click()
    sync_api.expect(page.locator("h1")).to_be_visible()
    assert page.url == f"{server.base}/v1/stats/report"

    # everything the page fetched came from this server, and none of it carried the API key
    assert page.requests
    for request in page.requests:
        assert request.url.startswith(server.base + "/"), request.url
        assert "x-api-key" not in {k.lower() for k in request.headers}, request.url
    assert not page.errors, page.errors
    # the only failed responses are the bad inputs above, answered by the API (never a missing file)
    assert {(status, url.replace(server.base, "")) for status, url in page.failed} == {
        (404, "/v1/items/no-such-item"),
        (422, "/v1/resolve"),
    }
