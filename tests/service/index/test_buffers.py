"""AppendBuffer: snapshots share one growing column, and no snapshot ever sees rows another one appended."""

from __future__ import annotations

import numpy as np

from semid.service.index.buffers import AppendBuffer


def test_appending_to_the_longest_view_extends_in_place_and_older_views_keep_their_rows():
    buf = AppendBuffer(np.arange(3, dtype=np.int64))
    old = buf.view()
    same, longer = buf.append(old, np.array([7, 8]))
    assert same is buf
    assert longer.tolist() == [0, 1, 2, 7, 8]
    assert old.tolist() == [0, 1, 2]
    assert np.shares_memory(old, longer)  # no copy of the shared prefix


def test_appending_to_an_older_view_branches_without_touching_the_newer_one():
    buf = AppendBuffer(np.arange(3, dtype=np.int64))
    old = buf.view()
    _, newer = buf.append(old, np.array([7, 8]))
    branch_buf, branch = buf.append(old, np.array([9]))  # e.g. a retry from the snapshot before a failed write
    assert branch_buf is not buf
    assert branch.tolist() == [0, 1, 2, 9]
    assert newer.tolist() == [0, 1, 2, 7, 8]  # the newer snapshot's rows are unchanged
    assert not np.shares_memory(branch, newer)


def test_growth_past_capacity_keeps_every_row_and_row_shape():
    buf = AppendBuffer(np.zeros((0, 2), dtype=np.float32))
    view = buf.view()
    expected = []
    for i in range(40):  # 40 x 100 rows: past the minimum capacity several times
        block = np.full((100, 2), i, dtype=np.float32)
        buf, view = buf.append(view, block)
        expected.append(block)
    assert view.shape == (4000, 2) and view.dtype == np.float32
    assert np.array_equal(view, np.concatenate(expected))


def test_values_are_cast_to_the_column_dtype():
    buf = AppendBuffer(np.zeros(2, dtype=np.int64))
    _, view = buf.append(buf.view(), np.array([1.0, 2.0]))
    assert view.dtype == np.int64 and view.tolist() == [0, 0, 1, 2]


def test_an_array_made_with_room_is_adopted_not_copied():
    filled = AppendBuffer.with_room(5, (3,), np.int64)
    filled[:] = np.arange(15).reshape(5, 3)
    buf = AppendBuffer(filled)
    assert np.shares_memory(buf.view(), filled)
    plain = np.arange(15, dtype=np.int64).reshape(5, 3)
    copied = AppendBuffer(plain)
    assert not np.shares_memory(copied.view(), plain)  # an ordinary array may be written by its owner: copied
    assert np.array_equal(copied.view(), plain)
