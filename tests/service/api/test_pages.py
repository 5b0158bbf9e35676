"""Prefix pages and their cursors (the API's view of a snapshot's prefix rows)."""

from types import SimpleNamespace

import numpy as np
import pytest

from semid.service.api.pages import prefix_page
from semid.service.errors import InvalidCursorError, InvalidInputError, InvalidPrefixError
from tests.service.index.test_handle import filled_index


def page_of(index, prefix, limit=100, cursor=None):
    return SimpleNamespace(**prefix_page(index.snapshot, prefix, limit=limit, cursor=cursor))


def test_prefix_pages_cursor_walk_returns_each_item_once_in_order(tmp_path):
    rng = np.random.default_rng(2)
    index, batches = filled_index(tmp_path / "idx", rng, batches=3, n=20, values=3)
    sids = np.concatenate([b["semantic_ids"] for b in batches])
    prefixes = {tuple(s[:k]) for s in sids.tolist() for k in (1, 2, 3)}
    for prefix in sorted(prefixes):
        expected = sorted(tuple(s) for s in sids.tolist() if tuple(s[: len(prefix)]) == prefix)
        seen, cursor, pages = [], None, 0
        while True:
            page = page_of(index, prefix, limit=3, cursor=cursor)
            assert page.count == len(expected) and tuple(page.prefix) == prefix
            seen.extend(tuple(item["semantic_id"]) for item in page.items)
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == expected
        assert pages == max(1, -(-len(expected) // 3))
    empty = page_of(index, (3, 3, 3))
    assert empty.count == 0 and empty.items == [] and empty.next_cursor is None


def test_invalid_cursor_and_limit(tmp_path):
    index, batches = filled_index(tmp_path / "idx", np.random.default_rng(3), batches=1, n=40, values=2)
    page = page_of(index, (0,), limit=2)
    assert page.next_cursor is not None
    with pytest.raises(InvalidCursorError):
        page_of(index, (1,), cursor=page.next_cursor)  # a cursor of another prefix
    for bad in ("garbage", "", "A" * 12, "!!!!!!!!!!!"):
        with pytest.raises(InvalidCursorError) as info:
            page_of(index, (0,), cursor=bad)
        assert info.value.field == "cursor"
    for limit in (0, -1, 10**9, True):
        with pytest.raises(InvalidInputError):
            page_of(index, (0,), limit=limit)
    with pytest.raises(InvalidPrefixError):
        page_of(index, ())
