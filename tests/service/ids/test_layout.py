"""IdLayout: packing order, prefix ranges, validation, text forms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from semid.service.errors import InvalidLayoutError, InvalidPrefixError, InvalidSemanticIdError
from semid.service.ids.layout import IdLayout

LAYOUT = IdLayout(codebook_sizes=(256, 256, 256), dedup_size=256)


def test_shape_properties():
    assert (LAYOUT.levels, LAYOUT.width, LAYOUT.bits) == (3, 4, 8)
    odd = IdLayout(codebook_sizes=(5, 300), dedup_size=1)
    assert odd.bits == 9 and odd.sizes == (5, 300, 1)
    assert IdLayout(codebook_sizes=(1,), dedup_size=1).bits == 1


def test_layout_validation_names_field():
    with pytest.raises(InvalidLayoutError) as info:
        IdLayout(codebook_sizes=(2**16,) * 3, dedup_size=2**16)  # 4 x 16 = 64 bits
    assert info.value.field == "codebook_sizes" and "62" in str(info.value)
    with pytest.raises(InvalidLayoutError) as info:
        IdLayout(codebook_sizes=(4, 4), dedup_size=0)
    assert info.value.field == "dedup_size"
    with pytest.raises(ValueError):
        IdLayout(codebook_sizes=(), dedup_size=4)
    with pytest.raises(ValueError):
        IdLayout(codebook_sizes=(4, True), dedup_size=4)


def test_pack_unpack_round_trip_and_order():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, size=(500, 4))
    packed = LAYOUT.pack(ids)
    np.testing.assert_array_equal(LAYOUT.unpack(packed), ids)
    # sorted packed == lexicographic order of tuples
    by_packed = ids[np.argsort(packed)].tolist()
    assert by_packed == sorted(ids.tolist())
    np.testing.assert_array_equal(LAYOUT.pack_base(ids[:, :3]), packed >> LAYOUT.bits)


def test_pack_rejects_out_of_range_and_bad_shape():
    with pytest.raises(InvalidSemanticIdError, match="row 1 position 2 is 256; expected 0..255"):
        LAYOUT.pack(np.array([[0, 0, 0, 0], [1, 2, 256, 0]]))
    with pytest.raises(InvalidSemanticIdError):
        LAYOUT.pack(np.array([[0, 0, -1, 0]]))
    with pytest.raises(InvalidSemanticIdError):
        LAYOUT.pack(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(InvalidSemanticIdError):
        LAYOUT.pack(np.zeros((2, 4), dtype=np.float64) + 0.5)


def test_prefix_range_matches_brute_force():
    layout = IdLayout(codebook_sizes=(3, 2), dedup_size=3)
    everything = np.array(list(itertools.product(range(3), range(2), range(3))))
    packed = layout.pack(everything)
    for k in range(1, 4):
        for prefix in {tuple(r[:k]) for r in everything.tolist()}:
            lo, hi = layout.prefix_range(prefix)
            inside = (packed >= lo) & (packed < hi)
            expected = np.all(everything[:, :k] == np.array(prefix), axis=1)
            np.testing.assert_array_equal(inside, expected)


def test_prefix_range_errors():
    with pytest.raises(InvalidPrefixError) as info:
        LAYOUT.prefix_range([12, 201, 300])
    assert info.value.field == "prefix"
    assert "prefix position 2 is 300; expected 0..255" in str(info.value)
    for bad in ([], [1, 2, 3, 4, 5], [-1], [1, 2.0], "12"):
        with pytest.raises(InvalidPrefixError):
            LAYOUT.prefix_range(bad)


def test_validate_full_id():
    assert LAYOUT.validate([12, 201, 7, 0]) == (12, 201, 7, 0)
    assert LAYOUT.validate(np.array([1, 2, 3, 4])) == (1, 2, 3, 4)
    with pytest.raises(InvalidSemanticIdError):
        LAYOUT.validate([12, 201, 7])
    with pytest.raises(InvalidSemanticIdError, match="position 3 is 256"):
        LAYOUT.validate([12, 201, 7, 256])


def test_tokens():
    assert LAYOUT.token([12, 201, 7, 0]) == "<a_12><b_201><c_7><d_0>"
    ids = np.array([[12, 201, 7, 0], [0, 0, 0, 1], [12, 3, 7, 0]])
    assert LAYOUT.tokens(ids) == [LAYOUT.token(r) for r in ids.tolist()]
    assert LAYOUT.tokens(np.zeros((0, 4), dtype=np.int64)) == []


def test_parse():
    assert IdLayout.parse("12-201-7-0") == (12, 201, 7, 0)
    assert IdLayout.parse("12") == (12,)
    for bad in ["", "12-x", "1--2", "+1", " 1", "1 ", "-1", "1-", "١٢", "1_2"]:
        with pytest.raises(InvalidPrefixError):
            IdLayout.parse(bad)


def test_dict_round_trip():
    layout = IdLayout(codebook_sizes=(8, 16, 4), dedup_size=32)
    assert IdLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(InvalidLayoutError):
        IdLayout.from_dict({"codebook_sizes": [8]})
