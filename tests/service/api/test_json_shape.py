"""The structure bounds read from simdjson's tape before pydantic runs (semid.service.api.json_shape)."""

from __future__ import annotations

import json

import pytest

from semid.service.api.json_shape import SPARE_KEYS, BodyShape, check_shape
from semid.service.errors import BatchTooLargeError, InvalidInputError
from tests.service.api.test_json_bodies import BODIES, HOSTILE

ENCODE = BodyShape(frozenset({"embeddings", "item_ids", "register"}), {"embeddings": 8, "item_ids": 8})
ASSIGN = BodyShape(frozenset({"items"}), {"items": 8}, entries_of="items", entry_keys=4)


@pytest.mark.parametrize("raw", BODIES + HOSTILE, ids=range(len(BODIES) + len(HOSTILE)))
def test_bodies_within_the_shape_are_left_to_the_parsers(raw):
    check_shape(raw, ENCODE)  # valid or not, none of these is over a bound: pydantic explains them


@pytest.mark.parametrize("field", ["embeddings", "item_ids"])
def test_an_array_beyond_its_bound_is_413(field):
    check_shape(json.dumps({field: [[1]] * 8}).encode(), ENCODE)
    with pytest.raises(BatchTooLargeError, match=f"{field} has 9 entries; at most 8") as err:
        check_shape(json.dumps({field: [[1]] * 9}).encode(), ENCODE)
    assert err.value.field == field


def test_an_object_of_many_unknown_keys_is_422_naming_one():
    most = 3 + SPARE_KEYS
    body = {"embeddings": [[1]], **{f"k{i}": 0 for i in range(most - 1)}}
    check_shape(json.dumps(body).encode(), ENCODE)  # exactly at the bound: pydantic names each unknown key
    body["one-more"] = 0
    with pytest.raises(InvalidInputError, match=f"body has {most + 1} fields; at most {most}") as err:
        check_shape(json.dumps(body).encode(), ENCODE)
    assert err.value.field == "body"
    assert "'k0' is not one of them" in str(err.value)


def test_repeated_known_keys_count_too():
    raw = b"{" + b",".join([b'"embeddings": [[1]]'] * (4 + SPARE_KEYS)) + b"}"
    with pytest.raises(InvalidInputError, match="fields; at most") as err:
        check_shape(raw, ENCODE)
    assert "not one of them" not in str(err.value)


def test_entries_with_too_many_keys_are_422_naming_the_entry():
    ok = {"item_id": 1, "embedding": [1.0], "title": "a", "other": 2}
    check_shape(json.dumps({"items": [ok, ok]}).encode(), ASSIGN)
    body = {"items": [ok, {**ok, "fifth": 1}]}
    with pytest.raises(InvalidInputError, match="items.1 has 5 fields; at most 4") as err:
        check_shape(json.dumps(body).encode(), ASSIGN)
    assert err.value.field == "items.1"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[1]",
        b"3",
        b'{"items": 3}',
        b'{"items": [1, "a", null]}',
        b'{"items": [{}]',
        b"{" * 5000,
        b'\xef\xbb\xbf{"items": [' + b"{}," * 20 + b"{}]}",
    ],
)
def test_what_simdjson_cannot_read_or_is_not_an_object_is_left_to_pydantic(raw):
    check_shape(raw, ASSIGN)


def test_a_pooled_parser_still_held_by_a_document_never_skips_the_checks(monkeypatch):
    import simdjson

    from semid.service.api import json_matrix

    parser = simdjson.Parser()
    held = parser.parse(b'{"items": [1]}')  # a document still alive: this parser cannot parse again
    pool = type(json_matrix._pool)()
    pool.put(parser)
    monkeypatch.setattr(json_matrix, "_pool", pool)
    with pytest.raises(BatchTooLargeError):
        check_shape(json.dumps({"items": [1] * 9}).encode(), ASSIGN)
    assert held["items"][0] == 1
    assert pool.qsize() == 0  # the parser that checked a refused body is not kept
