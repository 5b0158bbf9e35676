"""The msgspec fast path of JSON encode bodies against pydantic (the slow, obvious one): same result, same errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError

from semid.service.api.bodies import parse_encode_json, parse_json
from semid.service.api.limits import check_json_size
from semid.service.api.schemas import EncodeRequest
from semid.service.errors import BatchTooLargeError

CAP = 1_000_000

BODIES = [
    b'{"embeddings": [[1, 1.5, -0.0, 2e-3, 1E+2]]}',
    b'{"embeddings": [[0.1, 0.2], [0.3, 0.4]], "item_ids": [1, 2], "register": true}',
    b'{"embeddings": [[0.1]], "item_ids": ["a"]}',
    b'{"embeddings": [[1e308], [1e400], [-1e400], [1e-400]]}',
    b'{"embeddings": [[123456789012345678901234567890]]}',
    b'{"embeddings": [[0.1000000000000000055511151231257827021181583404541015625]]}',
    b'{"embeddings": [[NaN]]}',
    b'{"embeddings": [[Infinity, -Infinity]]}',
    b'{"embeddings": [["1.5"]]}',
    b'{"embeddings": [[true]]}',
    b'{"embeddings": [[null]]}',
    b'{"embeddings": [[0.5, "x"], [true, 1]]}',
    b'{"embeddings": 3}',
    b'{"embeddings": [3]}',
    b'{"embeddings": []}',
    b'{"embeddings": [[]]}',
    b"{}",
    b"[1]",
    b'{"embeddings": [[1]], "extra": 1}',
    b'{"embeddings": [[1]], "register": "true"}',
    b'{"embeddings": [[1]], "register": 1}',
    b'{"embeddings": [[1]], "register": null}',
    b'{"embeddings": [[1]], "register_items": true}',
    b'{"embeddings": [[1]], "item_ids": null}',
    b'{"embeddings": [[1]], "item_ids": [1, "a", true]}',
    b'{"embeddings": [[1]], "item_ids": [1.0]}',
    b'{"embeddings": [[1]], "item_ids": [""]}',
    b'{"embeddings": [[1]], "item_ids": ["' + b"x" * 513 + b'"]}',
    b'{"embeddings": [[1]], "item_ids": [99999999999999999999]}',
    b'{"embeddings": [[1]], "item_ids": ["\\ud800"]}',
    b'{"embeddings": [[1]], "embeddings": [[2]]}',
    b'{"embeddings": [[01]]}',
    b'{"embeddings": [[1.]]}',
    b'{"embeddings": [[.5]]}',
    b'{"embeddings": [[+1]]}',
    b'{"embeddings": [[1]],}',
    b'{"embeddings": [[1]]} x',
    b' \n{"embeddings": [[1]]}\t ',
    b'\xef\xbb\xbf{"embeddings": [[1]]}',
    b'{"embeddings": [[1]]',
    b"",
    b'{"embeddings": ' + b"[" * 2000 + b"]" * 2000 + b"}",
]


def outcome(parse, raw: bytes):
    try:
        req = parse(raw, CAP)
    except RequestValidationError as err:
        return "error", err.errors()
    return "ok", (req.embeddings, req.item_ids, req.register_items)


@pytest.mark.parametrize("raw", BODIES, ids=range(len(BODIES)))
def test_the_fast_path_accepts_and_refuses_exactly_what_pydantic_does(raw):
    fast, slow = outcome(parse_encode_json, raw), outcome(lambda r, cap: parse_json(EncodeRequest, r, cap), raw)
    assert fast[0] == slow[0]
    if fast[0] == "ok":
        embeddings, ids, register = fast[1]
        assert np.array_equal(np.asarray(embeddings, float), np.asarray(slow[1][0], float), equal_nan=True)
        assert (ids, register) == slow[1][1:]
    else:
        assert fast[1] == slow[1]  # the same locations (embeddings.i.j), types and messages


def test_a_large_batch_parses_to_the_same_floats():
    x = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    raw = json.dumps({"embeddings": x.tolist(), "item_ids": list(range(256))}).encode()
    fast = parse_encode_json(raw, CAP)
    assert np.array_equal(np.asarray(fast.embeddings, dtype=np.float32), x)
    assert fast.item_ids == list(range(256)) and fast.register_items is False


def test_the_amplification_bound_still_comes_before_parsing():
    body = b'{"embeddings": [' + b"[]," * 1000 + b"[]]}"
    with pytest.raises(BatchTooLargeError):
        parse_encode_json(body, 500)


@pytest.mark.parametrize("seed", range(5))
def test_the_bound_counts_what_bytes_count_does(seed):
    rng = np.random.default_rng(seed)
    raw = bytes(rng.choice(list(b',[{]} "a0\\\n\xff'), size=int(rng.integers(0, 5000))).astype(np.uint8))
    bound = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1  # the slow, obvious count
    check_json_size(raw, max_values=bound)  # exactly at the bound: accepted
    with pytest.raises(BatchTooLargeError):
        check_json_size(raw, max_values=bound - 1)
