"""The fast paths of JSON encode bodies (simdjson, then msgspec) against pydantic (the slow, obvious one): same
result, same errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError

from semid.service.api import json_matrix
from semid.service.api.bodies import parse_encode_json, parse_json
from semid.service.api.json_matrix import read_encode_body
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
    # bodies simdjson parses but must hand over: nesting that keeps the row lengths or the total, odd ids
    b'{"embeddings": [[[1.0], 2.0]]}',
    b'{"embeddings": [[[], 1.0, 2.0]]}',
    b'{"embeddings": [[1, 2], [3], [4, 5, 6]]}',
    b'{"embeddings": [[1, 2]], "item_ids": ["[x"]}',
    b'{"embeddings": [[1, 2]], "item_ids": [true]}',
    b'{"embeddings": [[1, 2]], "item_ids": []}',
    b'{"embeddings": [[1, 2]], "item_ids": [[1]]}',
    b'{"embeddings": [[18446744073709551615, -9223372036854775808, -0, -0.0, 1e-400, 3.4028235677973366e38]]}',
    b'{"embeddings": [[1, {"a": 2}]]}',
    b'{"embeddings": [{"a": [1]}]}',
    b'{"register": false, "embeddings": [[1]], "item_ids": null}',
    b'{"embeddings": [[1]], "item_ids": ["a\\u0000"]}',
]


def outcome(parse, raw: bytes):
    try:
        req = parse(raw, CAP)
    except RequestValidationError as err:
        return "error", err.errors()
    return "ok", (req.embeddings, req.item_ids, req.register_items)


HOSTILE = [
    b'{"embeddings": [[1, 2], [3]]}',  # rows of different widths
    b'{"embeddings": [[1, 2], 3, [4]]}',  # a number between rows
    b'{"embeddings": [3, [1, 2]]}',
    b'{"embeddings": [[1, 2], []]}',  # an empty row
    b'{"embeddings": [[], []]}',
    b'{"embeddings": [[[1, 2]], [[3, 4]]]}',  # one level too deep
    b'{"embeddings": [[1, [2]], [3, 4]]}',
    b'{"embeddings": [[-0, 0], [-0.0, 0.0]]}',  # the integer -0 is 0.0 for pydantic
    b'{"embeddings": [[1e39, -1e39, 3.5e38]]}',  # beyond float32, within float64
    b'{"embeddings": [[1' + b"0" * 400 + b", 2]]}",  # a huge integer
    b'{"embeddings": [[0.' + b"0" * 400 + b"1, 2]]}",  # a long decimal
    b'{"embeddings": [[4.9e-324, 2.2250738585072014e-308, 1.7976931348623157e308]]}',
    b'{"embeddings": [[1.5, "2"]], "item_ids": [1]}',
    b'{"embeddings": [[1, 2]], "item_ids": ["a]", "b["]}',  # brackets inside strings elsewhere
    b'{\n  "embeddings": [\n    [1.5, 2],\n    [3, 4e-1]\n  ],\n  "register": false\n}\n',  # pretty-printed
    b'{"embeddings":[[1,2],[3,4]]}',
    b'{"embeddings": [[1, 2]], "embeddings": [[3, 4], [5, 6]]}',
    b'{"embeddings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
]


def as_float32(rows) -> np.ndarray:
    """The matrix the route encodes (the simdjson path hands over float32 already; lists are rounded once)."""
    with np.errstate(over="ignore"):
        return np.asarray(rows, dtype=np.float64).astype(np.float32)


def same_matrix(fast, slow) -> bool:
    """The same float32 matrix for the route to encode (ragged lists: the same lists, which the route refuses)."""
    if len({len(r) for r in slow}) > 1:
        return not isinstance(fast, np.ndarray) and fast == slow
    return np.array_equal(as_float32(fast), as_float32(slow), equal_nan=True)


@pytest.mark.parametrize("raw", BODIES + HOSTILE, ids=range(len(BODIES) + len(HOSTILE)))
def test_the_fast_path_accepts_and_refuses_exactly_what_pydantic_does(raw):
    fast, slow = outcome(parse_encode_json, raw), outcome(lambda r, cap: parse_json(EncodeRequest, r, cap), raw)
    assert fast[0] == slow[0]
    if fast[0] == "ok":
        embeddings, ids, register = fast[1]
        assert same_matrix(embeddings, slow[1][0])
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


SIMDJSON_TAKES = [
    b'{"embeddings": [[1, 1.5, -0.0, 2e-3, 1E+2]]}',
    b'{"embeddings": [[0.1, 0.2], [0.3, 0.4]], "item_ids": [1, "b"], "register": true}',
    b' \n{"register": false, "embeddings": [[1]], "item_ids": null}\t ',
]
SIMDJSON_REFUSES = [
    b'\xef\xbb\xbf{"embeddings": [[1]]}',  # msgspec refuses a byte-order mark
    b'{"embeddings": [[1]], "embeddings": [[2]]}',
    b'{"embeddings": [[[1.0], 2.0]]}',
    b'{"embeddings": [[1, 2], [3], [4, 5, 6]]}',
    b'{"embeddings": [[1, 2]], "item_ids": ["[x"]}',
    b'{"embeddings": [[1, 2]], "item_ids": [true]}',
    b'{"embeddings": [[1, 2]], "item_ids": [1.0]}',
    b'{"embeddings": [[1, 2]], "register": 1}',
    b'{"embeddings": [[1, 2]], "extra": 1}',
    b'{"embeddings": [[true, 2]]}',
    b'{"embeddings": [[123456789012345678901234567890]]}',
    b'{"embeddings": [[1e400]]}',
    b'{"embeddings": []}',
    b'{"embeddings": [[]]}',
    b"[[1]]",
]


@pytest.mark.parametrize("raw", SIMDJSON_TAKES, ids=range(len(SIMDJSON_TAKES)))
def test_simdjson_takes_plain_bodies_as_a_float32_matrix(raw):
    body = read_encode_body(raw, raw.count(b"["))
    assert body is not None and body.embeddings.dtype == np.float32
    expected = json.loads(raw)
    assert np.array_equal(body.embeddings, np.asarray(expected["embeddings"], dtype=np.float32))
    assert (body.item_ids, body.register) == (expected.get("item_ids"), expected.get("register", False))


@pytest.mark.parametrize("raw", SIMDJSON_REFUSES, ids=range(len(SIMDJSON_REFUSES)))
def test_simdjson_hands_doubtful_bodies_to_msgspec(raw):
    assert read_encode_body(raw, raw.count(b"[")) in (None, False)


@pytest.mark.parametrize("value", [b'"1.5"', b"true", b"null", b'{"a": 1}'])
def test_simdjson_marks_a_row_value_that_is_not_a_number(value):
    raw = b'{"embeddings": [[1, 2], [3, ' + value + b"]]}"
    assert read_encode_body(raw, raw.count(b"[")) is False  # no parser accepts it: pydantic explains, alone


def test_the_parser_pool_stays_small_and_parsers_are_reused_safely():
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    raw = json.dumps({"embeddings": x.tolist()}).encode()
    bodies = [read_encode_body(raw, raw.count(b"[")) for _ in range(2 * json_matrix.POOL_SIZE + 3)]
    assert all(b is not None and np.array_equal(b.embeddings, x) for b in bodies)
    assert json_matrix._pool.qsize() <= json_matrix.POOL_SIZE


def test_a_parser_that_read_a_large_body_is_not_kept(monkeypatch):
    monkeypatch.setattr(json_matrix, "POOL_MAX_BYTES", 64)
    monkeypatch.setattr(json_matrix, "_pool", type(json_matrix._pool)())
    small, large = b'{"embeddings": [[1.5]]}', b'{"embeddings": [[' + b"1.5, " * 40 + b"2.5]]}"
    assert read_encode_body(large, 2) is not None and json_matrix._pool.qsize() == 0
    assert read_encode_body(small, 2) is not None and json_matrix._pool.qsize() == 1


TOKENS = [b"[", b"]", b"{", b"}", b",", b":", b'"', b"1", b"-", b".", b"e", b"true", b"null", b" ", b"\\", b"\xff"]


@pytest.mark.parametrize("seed", range(3))
def test_mutated_bodies_get_pydantics_outcome(seed):
    """Seeded mutations of valid bodies (a token inserted, a byte dropped or replaced) through the shipped path
    and through pydantic alone: accepted alike with the same float32 values, or refused with the same errors."""
    rng = np.random.default_rng(seed)
    base = json.dumps(
        {"embeddings": np.round(rng.standard_normal((3, 4)), 3).tolist(), "item_ids": [1, 2, 3], "register": True}
    ).encode()
    for _ in range(150):
        raw = bytearray(base)
        for _ in range(int(rng.integers(1, 3))):
            at = int(rng.integers(0, len(raw)))
            action = rng.integers(0, 3)
            if action == 0:
                raw[at:at] = TOKENS[int(rng.integers(0, len(TOKENS)))]
            elif action == 1:
                del raw[at]
            else:
                raw[at : at + 1] = TOKENS[int(rng.integers(0, len(TOKENS)))]
        raw = bytes(raw)
        fast, slow = outcome(parse_encode_json, raw), outcome(lambda r, cap: parse_json(EncodeRequest, r, cap), raw)
        assert fast[0] == slow[0], raw
        if fast[0] == "error":
            assert fast[1] == slow[1], raw
            continue
        assert fast[1][1:] == slow[1][1:], raw
        assert same_matrix(fast[1][0], slow[1][0]), raw


def test_a_parser_that_read_a_refused_body_is_not_kept(monkeypatch):
    monkeypatch.setattr(json_matrix, "_pool", type(json_matrix._pool)())
    refused, good = b'{"embeddings": [[1.5, "x"]]}', b'{"embeddings": [[1.5, 2.5]]}'
    assert read_encode_body(refused, 2) is False and json_matrix._pool.qsize() == 0
    assert read_encode_body(b'{"embeddings": [{}]}', 1) is None and json_matrix._pool.qsize() == 0
    assert read_encode_body(good, 2) is not None and json_matrix._pool.qsize() == 1
