"""Hostile requests against a real `semid serve` on loopback: each gets a JSON 4xx, the server stays alive and
responsive, and its memory stays bounded. No request here carries the API key unless it says so.

The server indexes string item ids (``item-<n>``), so the NUL-collision case is the real one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import threading
from pathlib import Path

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pytest

from semid.service.assign import assign_catalog
from tests.servers import Server

ARROW = {"content-type": "application/vnd.apache.arrow.stream"}
API_KEY = "hostile-test-key"
DIM = 16
SERVER_ENV = {  # the `server` fixture's (conftest)
    "SEMID_API_KEY": API_KEY,
    "SEMID_HEADER_TIMEOUT": "1",
    "SEMID_BODY_IDLE_TIMEOUT": "1",
    "SEMID_WRITE_LOCK_TIMEOUT": "60",
}


def _stream(table: pa.Table, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _embeddings(n: int, seed: int = 0) -> pa.Array:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


# --- Arrow IPC ------------------------------------------------------------------------------------------


def _string_ids_with_bad_offsets(n: int) -> pa.Array:
    """A string array whose middle offset points 1 GB past its 4-byte data buffer (the last one is in range,
    so pyarrow's cheap checks pass)."""
    offsets = np.arange(n + 1, dtype=np.int32)
    offsets[n // 2] = 1 << 30
    data = pa.py_buffer(b"abcd")
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets.tobytes()), data])


def test_arrow_string_offsets_out_of_bounds_is_422(client):
    table = pa.table({"item_id": _string_ids_with_bad_offsets(4), "embedding": _embeddings(4)})
    body = _stream(table)
    assert len(body) < 5000
    err = _error(client.post("/v1/encode?register=true", content=body, headers=ARROW), 422)
    assert err["code"] == "invalid_arrow"
    assert "offset" in err["message"].lower()


def test_arrow_duplicate_column_names_is_422(client):
    table = pa.Table.from_arrays([_embeddings(2), _embeddings(2, seed=1)], names=["embedding", "embedding"])
    err = _error(client.post("/v1/encode", content=_stream(table), headers=ARROW), 422)
    assert err["field"] == "embedding"
    assert "twice" in err["message"]


def test_arrow_wrong_types_are_422(client):
    table = pa.table({"embedding": pa.array(["a", "b"])})
    err = _error(client.post("/v1/encode", content=_stream(table), headers=ARROW), 422)
    assert err["field"] == "embedding"
    table = pa.table({"item_id": pa.array([1.5, 2.5]), "embedding": _embeddings(2)})
    headers = {**ARROW, "X-API-Key": API_KEY}
    err = _error(client.post("/v1/assign", content=_stream(table), headers=headers), 422)
    assert err["field"] == "item_id"


@pytest.mark.parametrize("body", [b"", b"not arrow at all", b"\xff\xff\xff\xff" + b"\x00" * 64])
def test_arrow_garbage_is_422(client, body):
    err = _error(client.post("/v1/encode", content=body, headers=ARROW), 422)
    assert err["field"] == "body"


def test_arrow_truncated_stream_is_422(client):
    body = _stream(pa.table({"embedding": _embeddings(64)}))
    err = _error(client.post("/v1/encode", content=body[: len(body) // 2], headers=ARROW), 422)
    assert err["field"] == "body"


def _bomb(uncompressed_bytes: int) -> bytes:
    """A zstd-compressed stream of one row whose extra column decompresses to ``uncompressed_bytes``."""
    blob = pa.array([b"\x00" * uncompressed_bytes], pa.large_binary())
    return _stream(pa.table({"embedding": _embeddings(1), "blob": blob}), compression="zstd")


def test_compression_bomb_is_refused_before_decoding(client, server):
    body = _bomb(400 << 20)
    assert len(body) < 64 * 1024  # a small request...
    rss = psutil.Process(server.proc.pid).memory_info().rss
    err = _error(client.post("/v1/encode", content=body, headers=ARROW), 413)  # ...that would be 400 MB
    assert "decode" in err["message"]
    grown = psutil.Process(server.proc.pid).memory_info().rss - rss
    assert grown < 100 << 20, f"server RSS grew by {grown >> 20} MB on a refused bomb"


def test_forged_uncompressed_length_is_refused(client):
    body = bytearray(_bomb(4096))
    zstd_frame = b"\x28\xb5\x2f\xfd"  # a compressed buffer: its uncompressed length, then a zstd frame
    at = body.find(struct.pack("<q", 4096) + zstd_frame)
    assert at > 0
    huge = body.copy()
    huge[at : at + 8] = struct.pack("<q", 1 << 60)
    err = _error(client.post("/v1/encode", content=bytes(huge), headers=ARROW), 413)
    assert err["field"] == "body"
    small = body.copy()  # a declared length within bounds that does not match the data
    small[at : at + 8] = struct.pack("<q", 5000)
    err = _error(client.post("/v1/encode", content=bytes(small), headers=ARROW), 422)
    assert err["code"] == "invalid_arrow"


def test_arrow_rows_over_the_batch_limit_are_refused_before_decoding(client):
    n = 9000  # the server's max_batch is 8192
    body = _stream(pa.table({"embedding": _embeddings(n)}))
    err = _error(client.post("/v1/encode", content=body, headers=ARROW), 413)
    assert "8192" in err["message"]


# --- JSON -----------------------------------------------------------------------------------------------


def test_json_amplification_is_refused_before_parsing(client, server):
    body = b'{"embeddings": [' + b"[]," * 4_000_000 + b"[]]}"
    assert len(body) > 12_000_000
    rss = psutil.Process(server.proc.pid).memory_info().rss
    err = _error(client.post("/v1/encode", content=body, headers={"content-type": "application/json"}), 413)
    assert err["field"] == "body"
    grown = psutil.Process(server.proc.pid).memory_info().rss - rss
    assert grown < 100 << 20, f"server RSS grew by {grown >> 20} MB on a refused body"


def test_default_body_limit_follows_the_largest_legal_batch(client):
    # 8,192 rows x 16 values as JSON is far below 64 MB: a 64 MB body is refused by its length alone
    err = _error(client.post("/v1/encode", content=b" " * (64 << 20)), 413)
    assert err["code"] == "body_too_large"


def test_deeply_nested_json_is_422(client):
    body = b'{"embeddings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    err = _error(client.post("/v1/encode", content=body, headers={"content-type": "application/json"}), 422)
    assert err["field"] == "body"


@pytest.mark.parametrize("value", ['"1.5"', "true", "null"])
def test_non_numbers_are_not_floats(client, value):
    row = ", ".join(["0.5"] * (DIM - 1) + [value])
    body = f'{{"embeddings": [[{row}]]}}'.encode()
    err = _error(client.post("/v1/encode", content=body, headers={"content-type": "application/json"}), 422)
    assert err["field"] == f"embeddings.0.{DIM - 1}"


def test_integers_are_numbers(client):
    response = client.post("/v1/encode", json={"embeddings": [[1] * DIM]})
    assert response.status_code == 200, response.text


def test_zero_vector_is_422(client):
    err = _error(client.post("/v1/encode", json={"embeddings": [[0.5] * DIM, [0.0] * DIM]}), 422)
    assert err["field"] == "embeddings"
    assert "embeddings[1]" in err["message"] and "zero vector" in err["message"]


def test_a_row_too_long_to_normalise_is_422_not_a_zero_vector(client):
    """3e38 fits float32 but a row of them has an infinite length: l2 normalisation would make it all zeros
    (it did, silently, for any row with values beyond ~1e19)."""
    big = [3e38] * DIM
    err = _error(client.post("/v1/encode", json={"embeddings": [[0.5] * DIM, big]}), 422)
    assert err["field"] == "embeddings"
    assert "embeddings[1]" in err["message"] and "overflows" in err["message"]
    assert client.post("/v1/encode", json={"embeddings": [[1e15] * DIM]}).status_code == 200  # long but finite


def test_register_query_with_json_body_is_422(client):
    body = {"embeddings": [[0.5] * DIM], "item_ids": ["new-1"]}
    err = _error(client.post("/v1/encode?register=true", json=body, headers={"X-API-Key": API_KEY}), 422)
    assert err["field"] == "register"
    assert client.get("/v1/items/new-1").status_code == 404  # nothing was registered


def test_nul_in_item_ids_is_422(client):
    err = _error(client.get("/v1/items/item-5%00"), 422)
    assert err["field"] == "item_id"
    assert client.get("/v1/items/item-5").status_code == 200
    body = {"items": [{"item_id": "item-5\u0000", "embedding": [0.5] * DIM}]}
    err = _error(client.post("/v1/assign", json=body, headers={"X-API-Key": API_KEY}), 422)
    assert err["field"] == "items.item_id"


# --- no leaks -------------------------------------------------------------------------------------------


def test_trailing_slash_does_not_redirect_to_the_client_host(client):
    response = client.get("/v1/children/", headers={"host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers


def test_docs_work_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert "/docs-assets/swagger-ui-bundle.js" in page.text
    script = client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


class _HeldLock:
    """The index's writer lock, held by this (test) process as another writer would."""

    def __init__(self, index: Path) -> None:
        self.fd = os.open(index / "index.lock", os.O_RDWR | os.O_CREAT)

    def __enter__(self) -> _HeldLock:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _register(base: str, item: str, timeout_s: str | None = None) -> httpx.Response:
    body = {"items": [{"item_id": item, "embedding": np.random.default_rng(len(item)).normal(size=DIM).tolist()}]}
    with httpx.Client(base_url=base, timeout=120.0) as c:
        return c.post("/v1/assign", json=body, headers={"X-API-Key": API_KEY})


def test_writers_waiting_for_the_lock_never_delay_reads(client, server):
    results: dict[str, httpx.Response] = {}
    writers = [
        threading.Thread(target=lambda n=n: results.__setitem__(n, _register(server.base, f"waiting-{n}")))
        for n in range(6)  # more writers than the server has write threads
    ]
    with _HeldLock(server.index):
        for w in writers:
            w.start()
        for _ in range(30):  # every read answers while all writers are still queued on the lock
            assert client.get("/v1/children").status_code == 200
            assert client.get("/v1/items/item-7").status_code == 200
            assert client.post("/v1/encode", json={"embeddings": [[0.5] * DIM]}).status_code == 200
        assert all(w.is_alive() for w in writers)
        assert not results
    for w in writers:
        w.join(timeout=120)
    assert sorted(r.status_code for r in results.values()) == [200] * 6


def test_index_busy_503_names_no_path_or_pid(tmp_path, checkpoint, catalogs):
    index = tmp_path / "idx"
    assign_catalog(checkpoint=checkpoint, catalog=catalogs["other"], index_dir=index)
    srv = Server(index, tmp_path / "server.log", threads=1)
    srv.env.update(SEMID_API_KEY=API_KEY, SEMID_WRITE_LOCK_TIMEOUT="0")
    srv.start()
    try:
        with _HeldLock(index):
            body = {"items": [{"item_id": 5, "embedding": [0.5] * DIM}]}
            with httpx.Client(base_url=srv.base, timeout=30.0) as c:
                response = c.post("/v1/assign", json=body, headers={"X-API-Key": API_KEY})
        err = _error(response, 503)
        assert err["code"] == "index_locked"
        assert response.headers.get("retry-after") == "1"
        text = json.dumps(response.json())
        assert str(index) not in text and str(tmp_path) not in text
        assert str(os.getpid()) not in text
    finally:
        srv.stop()


# --- slow clients ---------------------------------------------------------------------------------------


def _closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket timeout: the test fails)."""
    sock.settimeout(30)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_idle_connection_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        assert _closed_by_server(sock) == b""


def test_slow_headers_are_cut_off(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        assert _closed_by_server(sock) == b""


def test_stalled_body_gets_408_and_a_closed_connection(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        head = b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        sock.sendall(head + b'{"embeddings"')  # and then nothing
        reply = _closed_by_server(sock)
    assert reply.startswith(b"HTTP/1.1 408")
    assert b"body_timeout" in reply
