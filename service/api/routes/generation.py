"""Constrained decoding: the current trie of valid IDs, as the binary ``SemanticIdTrie.save`` writes.

A trainer or decoder process polls ``GET /v1/trie`` with ``If-None-Match`` and gets 304 until a write
changes the catalog. The trie is built once per index snapshot (snapshots are immutable and swapped on
every write) and its ETag is a hash of the bytes, so equal catalogs give equal ETags.
"""

from __future__ import annotations

import hashlib
import threading
import weakref

from fastapi import APIRouter, Header, Response

from semid.service.api.deps import StateDep
from semid.service.api.schemas import ERRORS
from semid.service.api.threads import in_read_thread
from semid.service.generation.trie import SemanticIdTrie
from semid.service.index.snapshot import IndexSnapshot

router = APIRouter(tags=["constrained decoding"])
MEDIA_TYPE = "application/octet-stream"


class TrieCache:
    """The trie bytes and ETag of the last snapshot asked for (a weak reference: an old snapshot is freed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: weakref.ref[IndexSnapshot] | None = None
        self._value: tuple[str, bytes] = ("", b"")

    def get(self, snapshot: IndexSnapshot) -> tuple[str, bytes]:
        with self._lock:  # one build per snapshot, even when many clients ask at once
            if self._snapshot is None or self._snapshot() is not snapshot:
                body = SemanticIdTrie.from_snapshot(snapshot).to_bytes()
                self._value = (f'"trie-{hashlib.sha256(body).hexdigest()[:32]}"', body)
                self._snapshot = weakref.ref(snapshot)
            return self._value


CACHE = TrieCache()


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


@router.get(
    "/v1/trie",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {MEDIA_TYPE: {}}, "description": "The trie (.npz)."}, 304: {}},
)
async def get_trie(
    state: StateDep, if_none_match: str | None = Header(default=None, description="ETag of a trie you hold.")
) -> Response:
    """The exact trie of the current items' semantic IDs for constrained decoding, as ``SemanticIdTrie.save``
    writes it (load it with ``SemanticIdTrie.from_bytes``); 304 when ``If-None-Match`` holds its ETag."""
    etag, body = await in_read_thread(CACHE.get, state.index.snapshot)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type=MEDIA_TYPE, headers=headers)
