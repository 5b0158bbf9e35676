"""Byte-level mutations of valid JSON bodies, sent to every JSON POST route: never a 5xx, always a JSON body.

Schemathesis (test_fuzz.py) generates bodies that are valid JSON text, so it never sends invalid UTF-8, a byte
order mark, a truncated number or a stray bracket. That is how a 500 slipped through: msgspec raised
UnicodeDecodeError, not its DecodeError, for invalid UTF-8 in an object key. Here each seeded case is a
valid body with one to three edits (a hostile token inserted, a byte dropped or replaced), so most cases reach
deep into the parsers before they fail; some stay valid and really write to the temporary index, which must
still pass ``semid check`` afterwards.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from semid.service.api.app import create_app
from semid.service.api.settings import ServiceSettings
from semid.service.api.state import ServiceState
from semid.service.assign import assign_catalog
from semid.service.index.check import check_index

CASES = 250  # per route
TOKENS = [
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\\",
    b"\\u",
    b"\\ud800",
    b'"',
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"-",
    b".",
    b"e",
    b"1e999",
    b"99999999999999999999999",
    b"NaN",
    b"true",
    b"null",
    b" ",
    b"[" * 64,
]


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory, tiny_checkpoint, tiny_catalog_file):
    index = tmp_path_factory.mktemp("byte-fuzz") / "idx"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=index, keep_columns=("title",))
    settings = ServiceSettings(index_dir=index, max_batch=64, max_page=200, max_body_bytes=1 << 20)
    state = ServiceState.load(settings)
    with TestClient(create_app(settings, state=state), raise_server_exceptions=False) as client:
        yield client, state.encoder.input_dim, index
    shutil.rmtree(index, ignore_errors=True)


def valid_bodies(dim: int) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rows = np.round(rng.standard_normal((3, dim)), 4).tolist()
    return {
        "/v1/encode": json.dumps({"embeddings": rows, "item_ids": [900_001, 900_002, 900_003]}).encode(),
        "/v1/assign": json.dumps(
            {"items": [{"item_id": 910_000 + i, "embedding": r, "title": f"t{i}"} for i, r in enumerate(rows)]}
        ).encode(),
        "/v1/resolve": json.dumps({"semantic_id": [1, 2, 3], "k": 3}).encode(),
    }


def mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    """One to three edits: a token inserted anywhere or just inside a string (keys included), a byte dropped or
    replaced."""
    out = bytearray(raw)
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(0, len(out) + 1))
        action = int(rng.integers(0, 4))
        token = TOKENS[int(rng.integers(0, len(TOKENS)))]
        quotes = [i for i, c in enumerate(out) if c == ord('"')]
        if action == 3 and quotes:
            at = quotes[int(rng.integers(0, len(quotes)))] + 1
            out[at:at] = token
        elif action == 0:
            out[at:at] = token
        elif action == 1 and out:
            del out[min(at, len(out) - 1)]
        else:
            out[at : at + 1] = token
    return bytes(out)


@pytest.mark.parametrize("route", ["/v1/encode", "/v1/assign", "/v1/resolve"])
def test_mutated_json_bodies_never_get_a_5xx(fuzz_client, route):
    client, dim, index = fuzz_client
    base = valid_bodies(dim)[route]
    rng = np.random.default_rng(sum(route.encode()))
    statuses = []
    for _ in range(CASES):
        raw = mutate(base, rng)
        response = client.post(route, content=raw, headers={"content-type": "application/json"})
        assert response.status_code < 500, (raw, response.text)
        assert response.headers["content-type"].startswith("application/json"), raw
        if response.status_code >= 400:
            assert "error" in response.json() or "detail" in response.json(), (raw, response.text)
        statuses.append(response.status_code)
    assert sum(s >= 400 for s in statuses) > CASES // 2  # most mutations break the body: the parsers were reached
    assert check_index(index).ok
