"""The fast sorting behind opening an index equals NumPy's obvious (slow) calls, ties and edge cases
included; Arrow columns read from their buffers equal ``to_numpy``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from semid.service.ids.layout import IdLayout
from semid.service.index.folded import group_end, item_groups, stable_argsort
from semid.service.index.segments import SegmentData, arrow_to_numpy
from semid.service.index.state import IndexState

CASES = {
    "many ties": np.random.default_rng(0).integers(0, 50, 2_000),
    "wide range": np.random.default_rng(1).integers(-(2**40), 2**40, 5_000),
    "too wide for the packed sort": np.random.default_rng(2).integers(0, 2**62, 1_000),
    "sorted": np.arange(1_000, dtype=np.int64) * 3,
    "sorted with repeats": np.repeat(np.arange(100), 3),
    "reversed": np.arange(500, dtype=np.int64)[::-1].copy(),
    "one": np.array([7]),
    "empty": np.zeros(0, dtype=np.int64),
}


@pytest.mark.parametrize("name", list(CASES))
def test_stable_argsort_equals_numpy_stable(name):
    keys = CASES[name]
    np.testing.assert_array_equal(stable_argsort(keys), np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("name", [n for n in CASES if n != "empty"])
def test_item_groups_and_group_ends_equal_a_loop(name):
    keys = CASES[name]
    groups = item_groups("int", keys)
    np.testing.assert_array_equal(groups, np.unique(keys, return_inverse=True)[1])
    for last in (True, False):
        expected = np.zeros(keys.shape[0], dtype=bool)
        for value in np.unique(keys):
            rows = np.flatnonzero(keys == value)
            expected[rows[-1] if last else rows[0]] = True
        np.testing.assert_array_equal(group_end(groups, last=last), expected)


@pytest.mark.parametrize(
    "array",
    [
        pa.array([True, False, True, True, False, False, True, False, True], pa.bool_()).slice(3),
        pa.array(np.arange(10, dtype=np.int16)).slice(2, 5),
        pa.array(np.arange(10, dtype=np.uint64) * 2**40),
        pa.array(np.linspace(0, 1, 7, dtype=np.float32)),
        pa.chunked_array([pa.array([1, 2], pa.int64()), pa.array([3], pa.int64())]),
        pa.array(["a", "b"]),
    ],
)
def test_arrow_to_numpy_equals_to_numpy(array):
    out = arrow_to_numpy(array)
    expected = array.to_numpy() if isinstance(array, pa.ChunkedArray) else array.to_numpy(zero_copy_only=False)
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


def _part(ids: np.ndarray, recodes: np.ndarray, rng) -> SegmentData:
    layout = IdLayout.for_tokenizer(levels=3, codebook_size=16)
    n = ids.shape[0]
    packed = rng.choice(1 << (layout.bits * layout.width), size=n, replace=False)
    sids = layout.unpack(packed)
    return SegmentData(
        item_ids=ids,
        semantic_ids=sids,
        base_codes=sids[:, :3],
        fallback=np.zeros(n, dtype=bool),
        embedding_hashes=np.zeros(n, dtype=np.uint64),
        recodes=recodes,
        kept=pa.table({}),
    )


def test_ids_in_order_take_the_fast_path_with_the_same_answers():
    """One row per item in id order (the usual catalog) skips the grouping; the look-ups are those of
    the general path (the same rows in another order), and a first row flagged as a re-code is reported."""
    rng = np.random.default_rng(4)
    layout = IdLayout.for_tokenizer(levels=3, codebook_size=16)
    ids = np.arange(100, 400, dtype=np.int64) * 3
    part = _part(ids, np.zeros(300, dtype=bool), rng)
    fast = IndexState.from_segments(layout=layout, id_kind="int", parts=[part])
    perm = rng.permutation(300)
    shuffled = SegmentData(
        **{
            **part.__dict__,
            "packed": None,
            **{
                k: getattr(part, k)[perm]
                for k in ("item_ids", "semantic_ids", "base_codes", "fallback", "embedding_hashes", "recodes")
            },
        }
    )
    slow = IndexState.from_segments(layout=layout, id_kind="int", parts=[shuffled])
    assert fast.folded.active.all() and fast.folded.retired_order.shape[0] == 0
    np.testing.assert_array_equal(fast.packed[fast.order], slow.packed[slow.order])
    np.testing.assert_array_equal(fast.rows_of_items(ids), np.arange(300))
    np.testing.assert_array_equal(slow.rows_of_items(ids[perm]), np.arange(300))
    assert fast.duplicate_item_ids() == [] and slow.duplicate_item_ids() == []
    flagged = _part(ids, np.arange(300) == 7, rng)
    state = IndexState.from_segments(layout=layout, id_kind="int", parts=[flagged])
    assert state.duplicate_item_ids() == [int(ids[7])]
