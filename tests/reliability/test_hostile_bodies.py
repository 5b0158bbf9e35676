"""Hostile JSON bodies on every JSON route (`/v1/encode`, `/v1/assign`, `/v1/resolve`) against a real `semid serve`:
each is refused with a JSON 4xx naming the field, `/healthz` keeps answering while it is processed, and the
server's memory returns to where it was.

The server runs with ``SEMID_MAX_BATCH=65536`` so that the value bound (``max_batch x (dim + 64)`` values)
lets multi-megabyte bodies through to the structure checks, as a 384-d checkpoint's default bound does.
"""

from __future__ import annotations

import re
import threading
import time

import httpx
import psutil
import pytest

from tests.servers import Server

API_KEY = "hostile-bodies-key"
DIM = 16
MAX_BATCH = 65536
JSON = {"content-type": "application/json"}
WRITE = {**JSON, "X-API-Key": API_KEY}
HEALTHZ_BOUND_S = 1.0  # generous for a shared machine; the stalls these bodies caused were seconds long
RSS_SLACK = 50 << 20
SERVER_ENV = {"SEMID_API_KEY": API_KEY, "SEMID_MAX_BATCH": str(MAX_BATCH)}  # the `server` fixture's (conftest)


def _rss(server: Server) -> int:
    return psutil.Process(server.proc.pid).memory_info().rss


class HealthPoller:
    """Polls /healthz from another thread while a request runs; records each answer's latency."""

    def __init__(self, base: str) -> None:
        self.base, self.latencies, self.failures = base, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=120.0) as c:
            while not self._stop.is_set() or len(self.latencies) < 3:
                start = time.perf_counter()
                status = c.get("/healthz").status_code
                self.latencies.append(time.perf_counter() - start)
                if status != 200:
                    self.failures.append(status)
                time.sleep(0.01)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=300)


def _refused(client: httpx.Client, server: Server, path: str, body: bytes, status: int, headers=JSON) -> dict:
    """Send a hostile body while /healthz is polled; the error body, after checking status and liveness."""
    with HealthPoller(server.base) as poller:
        response = client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    assert not poller.failures
    slowest = max(poller.latencies)
    assert slowest < HEALTHZ_BOUND_S, f"/healthz took {slowest:.2f} s while {path} parsed a hostile body"
    return response.json()["error"]


def _problems(message: str) -> int:
    """How many problems a 422 message reports: the first, and "(and N more problem(s))"."""
    more = re.search(r"\(and (\d+) more problem", message)
    return 1 + (int(more.group(1)) if more else 0)


def _items(n: int) -> bytes:
    return b"[" + b"{}," * (n - 1) + b"{}]"


def _row(value: bytes = b"0.5") -> bytes:
    return b"[" + b",".join([value] * DIM) + b"]"


def _extra_keys(n: int) -> bytes:
    return b",".join(b'"k%d":0' % i for i in range(n))


# --- /v1/resolve: small bodies only, bounded and parsed off the event loop -------------------------------


def test_resolve_refuses_a_body_of_empty_lists_without_stalling(client, server):
    body = b'{"semantic_id":[' + b"[]," * 700_000 + b'[]],"k":1}'  # 2 MB: stalled every request ~2 s
    err = _refused(client, server, "/v1/resolve", body, 413)
    assert err["field"] == "body"


def test_resolve_refuses_a_chunked_body_over_its_cap(client):
    def chunks():  # no Content-Length: the cap applies while the body streams in
        yield b'{"semantic_id":['
        for _ in range(100):
            yield b"0," * 1000
        yield b'0],"k":1}'

    response = client.post("/v1/resolve", content=chunks(), headers=JSON)
    assert response.status_code == 413, response.text[:500]
    assert response.json()["error"]["field"] == "body"


def test_resolve_bounds_values_under_its_byte_cap(client, server):
    body = b'{"semantic_id":[1,2],"k":1,' + _extra_keys(4000) + b"}"  # ~40 KB of unknown keys
    assert len(body) < 64 << 10
    err = _refused(client, server, "/v1/resolve", body, 413)
    assert err["field"] == "body" and "values" in err["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/vnd.apache.arrow.stream"])
def test_resolve_takes_json_only(client, content_type):
    response = client.post("/v1/resolve", content=b'{"semantic_id": [0]}', headers={"content-type": content_type})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "content-type"


def test_resolve_still_answers_and_names_a_bad_field(client):
    assert client.post("/v1/resolve", json={"semantic_id": [0], "k": 2}).status_code == 200
    response = client.post("/v1/resolve", json={"semantic_id": [0, "x", "y"], "k": 2})
    assert response.status_code == 422
    err = response.json()["error"]
    assert err["field"] == "semantic_id.1"
    assert _problems(err["message"]) == 1  # the list stops at its first bad entry


# --- /v1/encode and /v1/assign: structure checked before pydantic builds anything ------------------------


def test_encode_refuses_a_batch_of_objects_beyond_max_batch(client, server):
    body = b'{"embeddings":' + _items(1_750_000) + b"}"  # 5 MB, under the value bound
    err = _refused(client, server, "/v1/encode", body, 413)
    assert err["field"] == "embeddings"
    assert f"at most {MAX_BATCH}" in err["message"]


def test_encode_names_the_first_bad_value_only(client, server):
    rows = b",".join([_row(b"{}")] * 60_000)  # 960,000 bad values in rows of the right length
    err = _refused(client, server, "/v1/encode", b'{"embeddings":[' + rows + b"]}", 422)
    assert err["field"] == "embeddings.0.0"
    assert _problems(err["message"]) == 1  # was "(and 959999 more problem(s))"


def test_encode_refuses_an_object_of_many_unknown_keys(client, server):
    body = b'{"embeddings":[' + _row() + b"]," + _extra_keys(500_000) + b"}"
    err = _refused(client, server, "/v1/encode", body, 422)
    assert err["field"] == "body"
    assert "'k0' is not one of them" in err["message"]


def test_assign_refuses_a_batch_of_objects_beyond_max_batch(client, server):
    err = _refused(client, server, "/v1/assign", b'{"items":' + _items(1_750_000) + b"}", 413, WRITE)
    assert err["field"] == "items"


def test_assign_refuses_an_item_of_many_keys(client, server):
    item = b'{"item_id":"many-keys","embedding":' + _row() + b"," + _extra_keys(500_000) + b"}"
    err = _refused(client, server, "/v1/assign", b'{"items":[' + item + b"]}", 422, WRITE)
    assert err["field"] == "items.0"
    assert client.get("/v1/items/many-keys").status_code == 404  # nothing registered


def test_assign_names_the_first_bad_item_only(client, server):
    err = _refused(client, server, "/v1/assign", b'{"items":' + _items(60_000) + b"}", 422, WRITE)
    assert err["field"] == "items.0.item_id"
    assert _problems(err["message"]) <= 2  # item 0's two missing fields; was 120,000 problems


def test_an_integer_beyond_64_bits_in_a_kept_column_is_422(client):
    body = {"items": [{"item_id": "big-title", "embedding": [0.5] * DIM, "title": 2**70}]}
    response = client.post("/v1/assign", json=body, headers={"X-API-Key": API_KEY})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "items.title"
    assert client.get("/v1/items/big-title").status_code == 404


# --- memory is returned -----------------------------------------------------------------------------------


def test_memory_returns_after_refused_bodies(client, server):
    # warm up every path once (parsers, thread pools, the first encode) with small bodies
    client.post("/v1/encode", json={"embeddings": [[0.5] * DIM]})
    client.post("/v1/encode", content=b'{"embeddings":' + _items(1000) + b"}", headers=JSON)
    client.post("/v1/assign", content=b'{"items":' + _items(1000) + b"}", headers=WRITE)
    client.post("/v1/resolve", json={"semantic_id": [0], "k": 2})
    before = _rss(server)
    hostile = [
        ("/v1/encode", b'{"embeddings":' + _items(1_750_000) + b"}", JSON),
        ("/v1/encode", b'{"embeddings":[' + b",".join([_row(b"{}")] * 60_000) + b"]}", JSON),
        ("/v1/encode", b'{"embeddings":[' + _row() + b"]," + _extra_keys(500_000) + b"}", JSON),
        ("/v1/assign", b'{"items":' + _items(1_750_000) + b"}", WRITE),
        ("/v1/assign", b'{"items":' + _items(60_000) + b"}", WRITE),
        ("/v1/resolve", b'{"semantic_id":[' + b"[]," * 700_000 + b'[]],"k":1}', JSON),
    ]
    statuses = [client.post(path, content=body, headers=headers).status_code for path, body, headers in hostile * 2]
    time.sleep(0.5)
    grown = _rss(server) - before
    assert grown < RSS_SLACK, f"server RSS is {grown >> 20} MB above where it was after refused bodies"
    assert set(statuses) <= {413, 422}, statuses
