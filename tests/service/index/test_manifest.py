"""manifest.json: what is written reads back the same, and every damaged field is refused naming the file."""

from __future__ import annotations

import json

import pytest

from semid.service.errors import CorruptIndexError, InvalidInputError
from semid.service.ids.layout import IdLayout
from semid.service.index.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    VECTOR_FILES_VERSION,
    Manifest,
    SegmentInfo,
    VectorsInfo,
    read_manifest,
    write_manifest,
)

LAYOUT = IdLayout(codebook_sizes=(4, 4, 4), dedup_size=4)
SHA = "ab" * 32


def manifest(**fields) -> Manifest:
    base = {
        "checkpoint_fingerprint": "f" * 32,
        "layout": LAYOUT,
        "id_kind": "int",
        "vector_dim": 3,
        "keep_columns": ("title",),
        "segments": (SegmentInfo(name="seg-000001.parquet", rows=5, sha256=SHA),),
        "faiss": VectorsInfo(rows=5, sha256=SHA),
    }
    return Manifest(**(base | fields))


def test_written_manifest_reads_back_equal(tmp_path):
    written = manifest(
        segments=(
            SegmentInfo(name="seg-000001.parquet", rows=5, sha256=SHA),
            SegmentInfo(name="seg-000002.parquet", rows=2),
        )
    )
    write_manifest(tmp_path, written)
    assert read_manifest(tmp_path) == written
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # no temporary file left behind
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert data["item_count"] == 7
    assert "sha256" not in data["segments"][1]  # an unrecorded checksum is left out, not written as null


def test_version_is_the_highest_segment_number_and_only_grows():
    m = manifest(
        segments=(SegmentInfo(name="seg-000010.parquet", rows=1), SegmentInfo(name="seg-000003.parquet", rows=1))
    )
    assert m.version == 10
    assert m.next_segment_name() == "seg-000011.parquet"
    grown = m.with_segment(SegmentInfo(name=m.next_segment_name(), rows=4))
    assert grown.version == 11 and grown.item_count == 6
    assert m.item_count == 2  # the manifest is immutable: with_segment returned a new one
    assert manifest(segments=()).version == 0


def test_a_segment_vector_file_raises_the_written_format_version():
    plain = manifest()
    assert plain.to_dict()["format_version"] == FORMAT_VERSION
    with_file = manifest(segments=(SegmentInfo(name="seg-000001.parquet", rows=5, sha256=SHA, vectors_sha256=SHA),))
    assert with_file.has_vector_files
    assert with_file.to_dict()["format_version"] == VECTOR_FILES_VERSION


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda d: d.update(format_version=99), "format_version is 99"),
        (lambda d: d.update(format_version=True), "format_version is True"),
        (lambda d: d.pop("layout"), "missing key 'layout'"),
        (lambda d: d["segments"].append(dict(d["segments"][0])), "listed twice"),
        (lambda d: d["segments"][0].update(name="seg-1.parquet"), "is not seg-NNNNNN.parquet"),
        (lambda d: d["segments"][0].update(name="../seg-000001.parquet"), "is not seg-NNNNNN.parquet"),
        (lambda d: d["segments"][0].update(rows=-1), "rows is -1"),
        (lambda d: d["segments"][0].update(rows=True), "rows is True"),
        (lambda d: d["segments"][0].update(sha256="AB" * 32), "64 lowercase hex digits"),
        (lambda d: d["segments"][0].update(sha256="ab" * 31), "64 lowercase hex digits"),
        (lambda d: d.update(item_count=6), "item_count is 6 but the segments hold 5 rows"),
        (lambda d: d["faiss"].update(sha256=None), "faiss sha256 is null"),
        (lambda d: d.update(segments={}), "segments is not a list"),
        (lambda d: d.update(id_kind="uuid"), "id_kind"),
        (lambda d: d.update(vector_dim=0), "vector_dim"),
        (lambda d: d.update(keep_columns=["semantic_id"]), "clash with index columns"),
    ],
)
def test_a_damaged_manifest_is_refused_naming_the_file(tmp_path, damage, said):
    data = manifest().to_dict()
    damage(data)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(CorruptIndexError) as err:
        read_manifest(tmp_path)
    assert str(tmp_path / MANIFEST_NAME) in str(err.value)
    assert said in str(err.value)


@pytest.mark.parametrize("raw", [b"", b"{not json", b"\xff\xfe", b"[]", b"null"])
def test_unreadable_bytes_are_a_corrupt_index_not_a_crash(tmp_path, raw):
    (tmp_path / MANIFEST_NAME).write_bytes(raw)
    with pytest.raises(CorruptIndexError, match=MANIFEST_NAME):
        read_manifest(tmp_path)


def test_a_missing_manifest_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path)


def test_reserved_or_repeated_keep_columns_are_refused_when_built():
    with pytest.raises(InvalidInputError) as err:
        manifest(keep_columns=("title", "title"))
    assert err.value.field == "keep_columns"
    with pytest.raises(InvalidInputError, match="clash"):
        manifest(keep_columns=("packed_id",))
