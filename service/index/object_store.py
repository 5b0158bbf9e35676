"""An index on object storage (``s3://bucket/prefix``): the few S3 calls the index makes, with boto3.

Why boto3 (optional extra ``semid[s3]``): the manifest is the commit point, so it must be written
conditionally. S3's ``PutObject`` takes ``If-None-Match: *`` (create only if absent) and ``If-Match:
<etag>`` (replace only the version read: compare-and-swap) and answers 412 otherwise; boto3 exposes
both (``IfNoneMatch``/``IfMatch``), ``pyarrow.fs.S3FileSystem`` and s3fs do not. ``GetObject`` with
``If-None-Match: <etag>`` answers 304 when the manifest is unchanged, so a reader polls cheaply.

The endpoint, credentials and region come from the standard variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), read by botocore itself. Every
failure to reach the store is a ``StoreUnavailableError``; a lost compare-and-swap is a
``CommitConflictError``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semid.service.errors import (
    CommitConflictError,
    IndexNotFoundError,
    InvalidInputError,
    MissingExtraError,
    StoreUnavailableError,
)
from semid.service.index.store import create_temp_file, fsync_path

URI_RE = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<rest>.*)$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
SUPPORTED_SCHEMES = ("s3",)
CHUNK_BYTES = 8 << 20
CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 30.0
ATTEMPTS = 3  # botocore's retries of throttling and transient errors, before StoreUnavailableError
DELETE_BATCH = 1000  # S3's DeleteObjects takes at most 1,000 keys


@dataclass(frozen=True)
class StoreLocation:
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


def parse_store_uri(text: str | os.PathLike[str]) -> StoreLocation | None:
    """``s3://bucket/prefix`` as a ``StoreLocation``; None for a local path (no scheme).

    Raises ``InvalidInputError`` (field ``index``) for another scheme or a malformed URI.
    """
    match = URI_RE.match(os.fspath(text))
    if match is None:
        return None
    scheme, rest = match["scheme"], match["rest"]
    if scheme == "file":
        return None
    if scheme not in SUPPORTED_SCHEMES:
        raise InvalidInputError(
            f"--index {text}: scheme {scheme}:// is not supported; use a local directory or s3://bucket/prefix "
            "(S3 or an S3-compatible store: set AWS_ENDPOINT_URL)",
            field="index",
        )
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not BUCKET_RE.match(bucket):
        raise InvalidInputError(f"--index {text}: {bucket!r} is not a valid bucket name", field="index")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise InvalidInputError(f"--index {text}: the prefix has an empty, '.' or '..' part", field="index")
    return StoreLocation(bucket=bucket, prefix=prefix)


def index_location(text: str | os.PathLike[str]) -> str | Path:
    """An ``--index`` value as given: the URI of an index on object storage, else a local Path
    (``Path("s3://b/p")`` would fold the ``//`` and name a local directory)."""
    return os.fspath(text) if parse_store_uri(text) is not None else local_path(text)


def local_path(text: str | os.PathLike[str]) -> Path:
    """A local ``--index`` (a path, or ``file://path``) as a Path."""
    raw = os.fspath(text)
    return Path(raw[len("file://") :]) if raw.startswith("file://") else Path(raw)


@dataclass(frozen=True)
class StoreObject:
    name: str  # relative to the index's prefix
    size: int
    modified: float  # seconds since the epoch


class ObjectStore:
    """The objects of one index in one bucket. Thread-safe (a boto3 client is)."""

    def __init__(self, location: StoreLocation) -> None:
        self.location = location
        self._client = _client()

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def get(self, name: str, *, if_none_match: str | None = None) -> tuple[bytes, str] | None:
        """The object's bytes and ETag; None when ``if_none_match`` is its ETag (304: unchanged).
        Raises ``IndexNotFoundError`` if it does not exist."""
        args: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self.location.key(name)}
        if if_none_match is not None:
            args["IfNoneMatch"] = if_none_match
        with self._calls(name) as calls:
            try:
                reply = calls.get_object(**args)
            except calls.exceptions.NoSuchKey:
                raise IndexNotFoundError(f"no index at {self.location.uri} ({name} missing)") from None
            except calls.exceptions.ClientError as err:
                if _status(err) == 304:
                    return None
                raise
            return reply["Body"].read(), reply["ETag"]

    def exists(self, name: str) -> bool:
        with self._calls(name) as calls:
            try:
                calls.head_object(Bucket=self.location.bucket, Key=self.location.key(name))
            except calls.exceptions.ClientError as err:
                if _status(err) == 404:
                    return False
                raise
            return True

    def put(self, name: str, data: bytes, *, if_match: str | None = None, create_only: bool = False) -> str:
        """Write an object; returns its ETag. ``if_match``: only over the version with that ETag;
        ``create_only``: only if absent. Either refused: ``CommitConflictError``."""
        args: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self.location.key(name), "Body": data}
        if if_match is not None:
            args["IfMatch"] = if_match
        if create_only:
            args["IfNoneMatch"] = "*"
        with self._calls(name) as calls:
            try:
                return str(calls.put_object(**args)["ETag"])
            except calls.exceptions.ClientError as err:
                if _status(err) in (409, 412):  # 409: a concurrent conditional write to the same key
                    raise CommitConflictError(
                        f"{self.location.uri}/{name} was written by another writer first "
                        f"({'it exists' if create_only else 'it changed since this writer read it'}); "
                        "nothing of this write is in the index: retry it"
                    ) from None
                raise

    def upload_file(self, name: str, path: Path) -> None:
        with self._calls(name) as calls:
            calls.upload_file(str(path), self.location.bucket, self.location.key(name))

    def download(self, name: str, final: Path, *, sha256: str | None) -> None:
        """Stream the object into ``final`` (temp file, fsync, rename), checking its SHA-256 if given."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp, f = create_temp_file(final)
        try:
            digest = hashlib.sha256()
            with f, self._calls(name) as calls:
                try:
                    body = calls.get_object(Bucket=self.location.bucket, Key=self.location.key(name))["Body"]
                except calls.exceptions.NoSuchKey:
                    raise StoreUnavailableError(
                        f"{self.location.uri}/{name} is listed by the manifest but missing from the store"
                    ) from None
                for chunk in iter(lambda: body.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if sha256 is not None and digest.hexdigest() != sha256:
                raise StoreUnavailableError(
                    f"{self.location.uri}/{name} does not match its recorded checksum (sha256 {sha256[:16]}..., "
                    f"object {digest.hexdigest()[:16]}...)"
                )
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(final.parent)

    def list(self, prefix: str) -> list[str]:
        """Names (relative to the index's prefix) of the objects under ``prefix``."""
        with self._calls(prefix) as calls:
            pages = calls.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self.location.key(prefix)
            )
            start = len(self.location.key(""))
            return [obj["Key"][start:] for page in pages for obj in page.get("Contents", ())]

    def entries(self, prefix: str) -> list[StoreObject]:
        """The objects under ``prefix`` with their size and last-modified time (seconds since the epoch)."""
        with self._calls(prefix) as calls:
            pages = calls.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self.location.key(prefix)
            )
            start = len(self.location.key(""))
            return [
                StoreObject(obj["Key"][start:], int(obj["Size"]), obj["LastModified"].timestamp())
                for page in pages
                for obj in page.get("Contents", ())
            ]

    def delete(self, names: list[str]) -> None:
        """Delete objects, 1,000 a call (S3's most); a refusal of any is ``StoreUnavailableError``."""
        for start in range(0, len(names), DELETE_BATCH):
            batch = names[start : start + DELETE_BATCH]
            with self._calls(batch[0]) as calls:
                reply = calls.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": self.location.key(n)} for n in batch], "Quiet": True},
                )
            refused = reply.get("Errors") or []
            if refused:
                first = refused[0]
                raise StoreUnavailableError(
                    f"the store refused to delete {len(refused)} object(s), e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )

    def _calls(self, name: str) -> _Calls:
        return _Calls(self, name)


class _Calls:
    """Context of one store call: the client, and any failure to reach the store as ``StoreUnavailableError``."""

    def __init__(self, store: ObjectStore, name: str) -> None:
        self._store, self._name = store, name

    def __enter__(self) -> Any:
        return self._store._client

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(err, (BotoCoreError, ClientError)):
            where = f"{self._store.location.uri}/{self._name} (endpoint {self._store.endpoint})"
            raise StoreUnavailableError(f"object store unreachable or refusing: {where}: {err}") from err


def iter_files(directory: Path) -> Iterator[Path]:
    """Every file under ``directory``, sorted (a checkpoint copied to the store)."""
    yield from sorted(p for p in directory.rglob("*") if p.is_file())


def _client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as err:
        raise MissingExtraError(
            f"an index on object storage needs the optional extra: pip install 'semid[s3]' ({err})", extra="s3"
        ) from None
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
    )
    return boto3.session.Session().client("s3", config=config)


def _status(err: Any) -> int | None:
    return err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
