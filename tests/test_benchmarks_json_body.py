"""The no-Python-float candidate of benchmarks/json_body_speed.py accepts and refuses exactly what pydantic does,
with the same floats, so the benchmark compares parsers that give the same answers (it is measured, not shipped)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError

from benchmarks.json_body_speed import arrow_candidate
from semid.service.api.bodies import parse_json
from semid.service.api.schemas import EncodeRequest
from tests.service.api.test_json_bodies import BODIES, CAP, HOSTILE


def outcome(parse, raw: bytes):
    try:
        req = parse(raw, CAP)
    except RequestValidationError as err:
        return "error", err.errors()
    rows = req.embeddings
    if (
        len(rows) and len({len(r) for r in rows}) == 1
    ):  # empty or ragged rows (the route's width error comes later) stay lists
        rows = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    return "ok", (rows, req.item_ids, req.register_items)


@pytest.mark.parametrize("raw", BODIES + HOSTILE, ids=range(len(BODIES) + len(HOSTILE)))
def test_the_candidate_parses_like_pydantic(raw):
    fast, slow = outcome(arrow_candidate, raw), outcome(lambda r, cap: parse_json(EncodeRequest, r, cap), raw)
    assert fast[0] == slow[0]
    if fast[0] == "error":
        assert fast[1] == slow[1]
        return
    (x, ids, register), (y, ids_slow, register_slow) = fast[1], slow[1]
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        assert x.shape == y.shape
        assert np.array_equal(x.view(np.uint64), y.view(np.uint64))  # bit for bit, signs of zero included
    else:
        assert x == y
    assert (ids, register) == (ids_slow, register_slow)


def test_the_candidate_reads_a_large_batch_bit_for_bit():
    x = np.random.default_rng(0).standard_normal((300, 384)).astype(np.float32)
    raw = json.dumps({"embeddings": x.tolist(), "item_ids": [f"i{i}" for i in range(300)]}).encode()
    got = arrow_candidate(raw, CAP)
    assert isinstance(got.embeddings, np.ndarray)  # the path without Python floats, not the fallback
    assert np.array_equal(got.embeddings.astype(np.float32), x)
    assert got.item_ids == [f"i{i}" for i in range(300)]
