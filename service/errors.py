"""Domain exceptions of the service package: the one error hierarchy.

Every exception carries a stable machine-readable ``code``, its HTTP ``status`` and, where one
input is to blame, the name of that input in ``field``; the HTTP layer has one handler that reads
them. Server-side failures (5xx) also carry a ``public_message``: the HTTP body says what happened,
never where (paths and process ids stay in the server log). Each also subclasses the matching
builtin (``ValueError``, ``KeyError``, ``FileNotFoundError``...) so plain Python callers can catch those.
"""

from __future__ import annotations

from collections.abc import Sequence


class SemidError(Exception):
    """Base class of semid's own errors."""

    code = "semid_error"
    status = 422
    public_message: str | None = None  # shown instead of the message over HTTP (5xx)

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


# --- invalid input -----------------------------------------------------------------


class InvalidInputError(SemidError, ValueError):
    """An argument is malformed or out of range; ``field`` names it."""

    code = "invalid_input"


class InvalidLayoutError(InvalidInputError):
    """An ``IdLayout`` cannot be built from the given sizes."""

    code = "invalid_layout"


class InvalidPrefixError(InvalidInputError):
    """A semantic-ID prefix is empty, too long, malformed or has a code out of range."""

    code = "invalid_prefix"

    def __init__(self, message: str, *, field: str = "prefix") -> None:
        super().__init__(message, field=field)


class InvalidSemanticIdError(InvalidInputError):
    """A full semantic ID has the wrong length or a code out of range."""

    code = "invalid_semantic_id"

    def __init__(self, message: str, *, field: str = "semantic_id") -> None:
        super().__init__(message, field=field)


class InvalidCursorError(InvalidInputError):
    """A pagination cursor was not produced by this prefix query."""

    code = "invalid_cursor"

    def __init__(self, message: str, *, field: str = "cursor") -> None:
        super().__init__(message, field=field)


# --- collisions / uniqueness -------------------------------------------------------


class IndexFullError(SemidError, ValueError):
    """Every last-level bucket under ``prefix`` already holds ``dedup_size`` items."""

    code = "index_full"
    status = 409

    def __init__(self, message: str, *, prefix: Sequence[int]) -> None:
        super().__init__(message, field=None)
        self.prefix = tuple(int(c) for c in prefix)


class DuplicateItemError(SemidError, ValueError):
    """Item ids are repeated in a batch or already present in the index."""

    code = "duplicate_item"

    def __init__(self, message: str, *, item_ids: Sequence[object]) -> None:
        super().__init__(message, field="item_ids")
        self.item_ids = list(item_ids)


class DuplicateSemanticIdError(SemidError, ValueError):
    """Semantic ids are repeated in a batch or already taken in the index."""

    code = "duplicate_semantic_id"
    status = 409

    def __init__(self, message: str, *, semantic_ids: Sequence[Sequence[int]]) -> None:
        super().__init__(message, field="semantic_ids")
        self.semantic_ids = [tuple(int(c) for c in sid) for sid in semantic_ids]


# --- look-ups ----------------------------------------------------------------------


class UnknownItemError(SemidError, KeyError):
    """No item with this item_id is in the index."""

    code = "unknown_item"
    status = 404

    def __init__(self, message: str, *, item_id: object) -> None:
        super().__init__(message, field="item_id")
        self.item_id = item_id


class UnknownSemanticIdError(SemidError, KeyError):
    """No item holds this semantic id."""

    code = "unknown_semantic_id"
    status = 404

    def __init__(self, message: str, *, semantic_id: Sequence[int]) -> None:
        super().__init__(message, field="semantic_id")
        self.semantic_id = tuple(int(c) for c in semantic_id)


# --- the index on disk -------------------------------------------------------------


class IndexNotFoundError(SemidError, FileNotFoundError):
    """The directory holds no index (no manifest.json)."""

    code = "index_not_found"


class IndexExistsError(SemidError, FileExistsError):
    """``create`` was asked to write where an index (or other data) already is."""

    code = "index_exists"


class CorruptIndexError(SemidError, ValueError):
    """The manifest or a segment listed in it is missing, unreadable or inconsistent."""

    code = "corrupt_index"
    status = 503
    public_message = "the index cannot be read; the server log names the problem"


class FingerprintMismatchError(SemidError, ValueError):
    """The index was built from a different checkpoint than the one expected."""

    code = "fingerprint_mismatch"
    status = 409

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message, field="checkpoint_fingerprint")
        self.expected = expected
        self.actual = actual


class IndexLockedError(SemidError, RuntimeError):
    """Another process (or another open handle) holds the index's write lock."""

    code = "index_locked"
    status = 503
    public_message = "the index is being written by another process; retry later"

    def __init__(self, message: str, *, holder_pid: int | None) -> None:
        super().__init__(message)
        self.holder_pid = holder_pid


class IndexWriteError(SemidError, OSError):
    """Writing the index failed in the file system (disk full, read-only, I/O error).

    ``errno`` is the OS error number (None if unknown) and ``path`` the file being
    written. ``insufficient_storage`` is True for a full disk or quota (HTTP 507);
    other causes are a service problem (HTTP 503). The index is left as it was
    before the write unless ``committed`` says the manifest was already replaced.
    """

    code = "index_write_failed"
    public_message = "the index could not be written (nothing was stored); the server log names the problem"

    def __init__(self, message: str, *, errno: int | None, path: str, committed: bool = False) -> None:
        super().__init__(message)
        self.errno = errno
        self.path = path
        self.committed = committed

    @property
    def insufficient_storage(self) -> bool:
        import errno as _errno

        return self.errno in (_errno.ENOSPC, _errno.EDQUOT)

    @property
    def status(self) -> int:  # type: ignore[override]
        return 507 if self.insufficient_storage else 503


class EmbeddingError(InvalidInputError):
    """Embeddings that cannot be encoded; ``field`` names the request field, ``row`` the offending item."""

    code = "invalid_embedding"

    def __init__(self, message: str, *, field: str = "embeddings", row: int | None = None) -> None:
        super().__init__(message, field=field)
        self.row = row


# --- the HTTP boundary -------------------------------------------------------------


class BatchTooLargeError(SemidError, ValueError):
    """A request with more rows than allowed, or that would expand beyond its byte bounds."""

    code = "batch_too_large"
    status = 413


class ApiKeyError(SemidError, PermissionError):
    """A write route called without the configured API key (401) or with another one (403)."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message, field="X-API-Key")
        self.code = "api_key_missing" if missing else "api_key_invalid"
        self.status = 401 if missing else 403


class RateLimitedError(SemidError, RuntimeError):
    """A client sent more requests of one kind than its rate limit allows; retry after ``retry_after`` s."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CommitConflictError(SemidError, RuntimeError):
    """Another writer committed to an index on object storage first (its manifest changed since this
    writer read it): nothing of this write is in the index; retry it (the writer catches up first)."""

    code = "commit_conflict"
    status = 409


class StoreUnavailableError(SemidError, OSError):
    """The object store holding the index cannot be reached, or refuses (credentials, missing object)."""

    code = "store_unavailable"
    status = 503
    public_message = "the object store holding the index is unreachable; the server log names the problem"


class ReadOnlyReplicaError(SemidError, PermissionError):
    """A write sent to a read-only replica (``semid serve --read-only``): writes go to the writer."""

    code = "read_only_replica"
    status = 403

    def __init__(self, message: str = "this replica is read-only; send writes to the writer") -> None:
        super().__init__(message)


class NotReadyError(SemidError, RuntimeError):
    """The index is not loaded (yet)."""

    code = "not_ready"
    status = 503


# --- installation ------------------------------------------------------------------


class MissingExtraError(SemidError, RuntimeError):
    """A feature needs an optional extra (``pip install 'semid[NAME]'``) that is not installed."""

    code = "missing_extra"
    status = 501

    def __init__(self, message: str, *, extra: str) -> None:
        super().__init__(message)
        self.extra = extra
