"""Segment files: checksummed on write, refused when their bytes change, and their columns read back exactly."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from semid.service.errors import CorruptIndexError
from semid.service.ids.layout import IdLayout
from semid.service.index.segments import (
    PACKED_COLUMNS,
    arrow_to_numpy,
    build_table,
    code_type,
    list_column_to_numpy,
    read_segment_table,
    read_vectors,
    segment_checksum_problem,
    write_segment,
)

LAYOUT = IdLayout(codebook_sizes=(4, 4, 4), dedup_size=4)


def table(n: int = 6, *, vectors: bool = True) -> pa.Table:
    rng = np.random.default_rng(0)
    semantic_ids = rng.integers(0, 4, size=(n, LAYOUT.width))
    return build_table(
        layout=LAYOUT,
        id_kind="str",
        item_ids=np.array([f"it-{i}" for i in range(n)], dtype=object),
        semantic_ids=semantic_ids,
        base_codes=semantic_ids[:, : LAYOUT.levels],
        fallback=np.arange(n) % 2 == 0,
        embedding_hashes=np.arange(n, dtype=np.uint64) * np.uint64(2**61),
        recodes=np.zeros(n, dtype=bool),
        vectors=rng.standard_normal((n, 3)).astype(np.float32) if vectors else None,
        columns={"title": pa.array([f"t{i}" for i in range(n)])},
        keep_columns=["title"],
    )


def test_a_written_segment_reads_back_equal_under_its_checksum(tmp_path):
    path = tmp_path / "seg-000001.parquet"
    written = table()
    sha = write_segment(written, path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_segment_table(path, sha256=sha).equals(written)
    assert segment_checksum_problem(path, sha) is None
    vectors = read_vectors(path, vector_dim=3, sha256=sha)
    assert vectors.dtype == np.float32
    assert np.array_equal(vectors, list_column_to_numpy(written.column("vector"), 3, np.float32))


def test_one_changed_byte_is_refused_by_the_checksum(tmp_path):
    path = tmp_path / "seg-000001.parquet"
    sha = write_segment(table(), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for read in (lambda: read_segment_table(path, sha256=sha), lambda: read_vectors(path, vector_dim=3, sha256=sha)):
        with pytest.raises(CorruptIndexError, match="seg-000001.parquet does not match its checksum"):
            read()
    assert "does not match its checksum" in segment_checksum_problem(path, sha)


def test_a_missing_or_garbled_segment_is_a_corrupt_index(tmp_path):
    missing = tmp_path / "seg-000002.parquet"
    with pytest.raises(CorruptIndexError, match="listed in the manifest but missing"):
        read_segment_table(missing, sha256="0" * 64)
    with pytest.raises(CorruptIndexError, match="listed in the manifest but missing"):
        read_segment_table(missing)
    garbled = tmp_path / "seg-000003.parquet"
    garbled.write_bytes(b"PAR1 not a parquet file")
    with pytest.raises(CorruptIndexError, match="seg-000003.parquet is unreadable"):
        read_segment_table(garbled)  # no checksum recorded: read unverified, still a clear error


def test_a_vector_file_segment_stores_its_codes_packed():
    packed = table(vectors=False)
    assert set(PACKED_COLUMNS.values()) <= set(packed.column_names)
    assert "semantic_id" not in packed.column_names and "vector" not in packed.column_names
    listed = table()
    ids = list_column_to_numpy(listed.column("semantic_id"), LAYOUT.width, np.int64)
    assert arrow_to_numpy(packed.column("packed_id")).tolist() == LAYOUT.pack(ids).tolist()


def test_code_type_is_the_narrowest_that_holds_every_code():
    assert code_type(LAYOUT) == pa.int16()
    assert code_type(IdLayout(codebook_sizes=(40_000, 4), dedup_size=4)) == pa.int32()


@pytest.mark.parametrize(
    ("column", "said"),
    [
        (pa.array([[1.0, 2.0], [3.0]]), "do not all have 2 values"),
        (pa.array([[1.0, 2.0], None]), "null rows"),
        (pa.array([[1.0, None], [3.0, 4.0]]), "contain nulls"),
        (pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0]), 3), "list size is 3; expected 2"),
        (pa.array([1.0, 2.0]), "expected a list"),
    ],
)
def test_a_list_column_of_the_wrong_shape_is_refused(column, said):
    with pytest.raises(ValueError, match=said):
        list_column_to_numpy(column, 2, np.float32)


def test_arrow_to_numpy_respects_a_slice_offset():
    bools = pa.array([True, False, False, True, True, False, True, False, False, True])
    assert arrow_to_numpy(bools.slice(3, 5)).tolist() == [True, True, False, True, False]
    ints = pa.array(np.arange(10, dtype=np.int64))
    assert arrow_to_numpy(ints.slice(4, 3)).tolist() == [4, 5, 6]
    chunked = pa.chunked_array([pa.array([1.5, 2.5], type=pa.float32()), pa.array([3.5], type=pa.float32())])
    out = arrow_to_numpy(chunked)
    assert out.dtype == np.float32 and out.tolist() == [1.5, 2.5, 3.5]
