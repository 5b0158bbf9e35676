"""The fast sorting behind opening an index equals NumPy's obvious (slow) calls, ties and edge cases
included; Arrow columns read from their buffers equal ``to_numpy``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from semid.service.index.folded import group_end, item_groups, stable_argsort
from semid.service.index.segments import arrow_to_numpy

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
