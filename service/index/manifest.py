"""``manifest.json``: the single source of truth of which segments form an index.

Each segment entry records the SHA-256 of the file's bytes (``sha256``), and ``faiss``
records the row count and SHA-256 of the ``faiss.index`` written with it, so bit rot
is detected instead of trusted. Both are optional: manifests written before checksums
existed have neither, and their files are read unverified. A segment written with a
vector file (large batch writes, see ``segment_vectors.py``) also records that file's SHA-256
(``vectors_sha256``); an index with such segments does not use ``faiss.index``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semid.service.errors import CorruptIndexError, InvalidInputError, InvalidLayoutError
from semid.service.ids.layout import IdLayout
from semid.service.index.store import write_json_atomically

FORMAT_VERSION = 1  # what an index without segment vector files is written as (readable by every build)
VECTOR_FILES_VERSION = 2  # an index with segment vector files: builds before them refuse it instead of misreading
READABLE_VERSIONS = (FORMAT_VERSION, VECTOR_FILES_VERSION)
MANIFEST_NAME = "manifest.json"
SEGMENTS_DIR = "segments"
FAISS_NAME = "faiss.index"
CHECKPOINT_DIR = "checkpoint"
LOCK_NAME = "index.lock"
ID_KINDS = ("int", "str")
SEGMENT_NAME_RE = re.compile(r"seg-([0-9]{6,})\.parquet")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, kw_only=True)
class SegmentInfo:
    name: str
    rows: int
    sha256: str | None = None  # None: written before checksums were recorded
    vectors_sha256: str | None = None  # set: the vectors are in a segment vector file (``segment_vectors.py``)

    @property
    def has_vector_file(self) -> bool:
        return self.vectors_sha256 is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "rows": self.rows}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.vectors_sha256 is not None:
            out["vectors_sha256"] = self.vectors_sha256
        return out


@dataclass(frozen=True, kw_only=True)
class VectorsInfo:
    """The ``faiss.index`` last written together with a manifest: its vector count and checksum."""

    rows: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "sha256": self.sha256}


@dataclass(frozen=True, kw_only=True)
class Manifest:
    checkpoint_fingerprint: str
    layout: IdLayout
    id_kind: str
    vector_dim: int
    keep_columns: tuple[str, ...] = ()
    segments: tuple[SegmentInfo, ...] = ()
    faiss: VectorsInfo | None = None  # None: not recorded (older manifest)
    created_at: str = field(default_factory=lambda: now_iso())
    updated_at: str = field(default_factory=lambda: now_iso())
    format_version: int = FORMAT_VERSION  # as read; written: see ``written_version``

    def __post_init__(self) -> None:
        if self.id_kind not in ID_KINDS:
            raise InvalidInputError(f"id_kind is {self.id_kind!r}; expected one of {ID_KINDS}", field="id_kind")
        if isinstance(self.vector_dim, bool) or not isinstance(self.vector_dim, int) or self.vector_dim < 1:
            raise InvalidInputError(f"vector_dim is {self.vector_dim!r}; expected an int >= 1", field="vector_dim")
        if not isinstance(self.checkpoint_fingerprint, str) or not self.checkpoint_fingerprint:
            raise InvalidInputError("checkpoint_fingerprint must be a non-empty string", field="fingerprint")
        keep = tuple(self.keep_columns)
        if any(not isinstance(c, str) or not c for c in keep) or len(set(keep)) != len(keep):
            raise InvalidInputError(f"keep_columns {keep!r} must be distinct non-empty names", field="keep_columns")
        if set(keep) & RESERVED_COLUMNS:
            raise InvalidInputError(
                f"keep_columns {sorted(set(keep) & RESERVED_COLUMNS)} clash with index columns",
                field="keep_columns",
            )
        object.__setattr__(self, "keep_columns", keep)

    @property
    def item_count(self) -> int:
        return sum(s.rows for s in self.segments)

    @property
    def has_vector_files(self) -> bool:
        """Some segment keeps its vectors in a vector file: then ``faiss.index`` is not used."""
        return any(s.has_vector_file for s in self.segments)

    @property
    def written_version(self) -> int:
        return VECTOR_FILES_VERSION if self.has_vector_files else FORMAT_VERSION

    @property
    def version(self) -> int:
        """The highest segment number: every commit writes a segment numbered one above it, so it only
        grows (0 for an empty index). Readers use it to never swap a newer snapshot for an older one."""
        numbers = [int(m.group(1)) for s in self.segments if (m := SEGMENT_NAME_RE.fullmatch(s.name))]
        return max(numbers, default=0)

    def next_segment_name(self) -> str:
        return f"seg-{self.version + 1:06d}.parquet"

    def with_segment(self, segment: SegmentInfo) -> Manifest:
        return replace(self, segments=(*self.segments, segment), updated_at=now_iso())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.written_version,
            "checkpoint_fingerprint": self.checkpoint_fingerprint,
            "layout": self.layout.to_dict(),
            "id_kind": self.id_kind,
            "vector_dim": self.vector_dim,
            "keep_columns": list(self.keep_columns),
            "item_count": self.item_count,
            "segments": [s.to_dict() for s in self.segments],
            **({"faiss": self.faiss.to_dict()} if self.faiss is not None else {}),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "manifest") -> Manifest:
        """Parse and validate; any problem raises ``CorruptIndexError`` naming ``source``."""
        try:
            if not isinstance(data, Mapping):
                raise TypeError("top level is not an object")
            version = data["format_version"]
            if isinstance(version, bool) or version not in READABLE_VERSIONS:
                raise ValueError(f"format_version is {version!r}; this build reads {list(READABLE_VERSIONS)}")
            segments = tuple(_segment(s) for s in _list(data["segments"], "segments"))
            names = [s.name for s in segments]
            if len(set(names)) != len(names):
                raise ValueError("a segment is listed twice")
            manifest = cls(
                checkpoint_fingerprint=data["checkpoint_fingerprint"],
                layout=IdLayout.from_dict(data["layout"]),
                id_kind=data["id_kind"],
                vector_dim=data["vector_dim"],
                keep_columns=tuple(_list(data.get("keep_columns", []), "keep_columns")),
                segments=segments,
                faiss=_vectors(data["faiss"]) if data.get("faiss") is not None else None,
                created_at=str(data.get("created_at", "")),
                updated_at=str(data.get("updated_at", "")),
            )
            if data.get("item_count", manifest.item_count) != manifest.item_count:
                raise ValueError(f"item_count is {data['item_count']} but the segments hold {manifest.item_count} rows")
        except KeyError as exc:
            raise CorruptIndexError(f"{source}: missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError, InvalidLayoutError) as exc:
            raise CorruptIndexError(f"{source}: {exc}") from None
        return manifest


RESERVED_COLUMNS = frozenset(
    {"item_id", "semantic_id", "base_code", "fallback", "embedding_hash", "recodes", "vector", "token"}
    | {"packed_id", "packed_base"}  # the codes of a segment with a vector file (segments.PACKED_COLUMNS)
)


def read_manifest(index_dir: Path) -> Manifest:
    """Raises ``FileNotFoundError`` if absent, ``CorruptIndexError`` if unreadable."""
    path = index_dir / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptIndexError(f"{path}: cannot read: {exc}") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptIndexError(f"{path}: not valid JSON: {exc}") from None
    return Manifest.from_dict(data, source=str(path))


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    write_json_atomically(index_dir / MANIFEST_NAME, manifest.to_dict(), kind="manifest")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _list(value: Any, name: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{name} is not a list")
    return value


def _segment(entry: Any) -> SegmentInfo:
    if not isinstance(entry, Mapping):
        raise TypeError("a segments entry is not an object")
    name, rows = entry["name"], entry["rows"]
    if not isinstance(name, str) or SEGMENT_NAME_RE.fullmatch(name) is None:
        raise ValueError(f"segment name {name!r} is not seg-NNNNNN.parquet")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"segment {name} rows is {rows!r}; expected an int >= 0")
    return SegmentInfo(
        name=name,
        rows=rows,
        sha256=_sha256(entry.get("sha256"), f"segment {name}"),
        vectors_sha256=_sha256(entry.get("vectors_sha256"), f"segment {name} vectors"),
    )


def _vectors(entry: Any) -> VectorsInfo:
    if not isinstance(entry, Mapping):
        raise TypeError("faiss is not an object")
    rows = entry["rows"]
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"faiss rows is {rows!r}; expected an int >= 0")
    sha256 = _sha256(entry["sha256"], "faiss")
    if sha256 is None:
        raise ValueError("faiss sha256 is null")
    return VectorsInfo(rows=rows, sha256=sha256)


def _sha256(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or SHA256_RE.fullmatch(value) is None:
        raise ValueError(f"{what} sha256 is {value!r}; expected 64 lowercase hex digits")
    return value
