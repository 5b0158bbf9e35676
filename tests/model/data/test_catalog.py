import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semid.model.data.catalog import CatalogError, iter_parquet_batches, read_catalog
from semid.model.data.synthetic import synthetic_catalog, write_catalog


def _write(path, ids, emb_array, **extra):
    table = pa.table({"item_id": ids, "embedding": emb_array, **extra})
    pq.write_table(table, path)
    return path


def _fixed(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), values.shape[1])


def test_reads_fixed_size_and_variable_lists(tmp_path):
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    a = read_catalog(_write(tmp_path / "a.parquet", [1, 2, 3, 4], _fixed(emb)))
    b = read_catalog(_write(tmp_path / "b.parquet", [1, 2, 3, 4], pa.array(emb.tolist(), pa.list_(pa.float64()))))
    np.testing.assert_array_equal(a.embeddings, emb)
    np.testing.assert_array_equal(b.embeddings, emb)
    assert a.item_ids.dtype == np.int64


def test_string_ids_and_configurable_columns(tmp_path):
    emb = np.ones((2, 3), dtype=np.float32)
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"sku": ["a", "b"], "vec": _fixed(emb)}), path)
    cat = read_catalog(path, id_column="sku", embedding_column="vec")
    assert cat.item_ids.tolist() == ["a", "b"]


def test_streaming_batches_cover_every_row_once(tmp_path):
    cat = synthetic_catalog(items=1000, dim=8, seed=0)
    path = write_catalog(cat, tmp_path / "s.parquet")
    batches = list(iter_parquet_batches(path, batch_rows=128, keep_columns=["title"]))
    assert len(batches) == 8
    np.testing.assert_array_equal(np.concatenate([b.item_ids for b in batches]), cat.item_ids)
    assert batches[3].start == 384 and batches[3].columns.num_rows == 128


def test_npy_catalog_with_and_without_ids(tmp_path):
    emb = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.save(tmp_path / "e.npy", emb)
    assert read_catalog(tmp_path / "e.npy").item_ids.tolist() == [0, 1, 2, 3, 4]
    np.save(tmp_path / "ids.npy", np.array([10, 11, 12, 13, 14]))
    assert read_catalog(tmp_path / "e.npy", ids_path=tmp_path / "ids.npy").item_ids.tolist() == [10, 11, 12, 13, 14]
    np.save(tmp_path / "short.npy", np.array([1, 2]))
    with pytest.raises(CatalogError, match="2 ids for 5 embeddings"):
        read_catalog(tmp_path / "e.npy", ids_path=tmp_path / "short.npy")


def _bad_case(tmp_path, case):
    emb = np.ones((3, 4), dtype=np.float32)
    p = tmp_path / f"{case}.parquet"
    if case == "missing_column":
        pq.write_table(pa.table({"item_id": [1, 2, 3]}), p)
    elif case == "ragged":
        _write(p, [1, 2, 3], pa.array([[1.0, 2.0], [1.0, 2.0], [1.0]], pa.list_(pa.float32())))
    elif case == "nan":
        emb[2, 1] = np.nan
        _write(p, [1, 2, 3], _fixed(emb))
    elif case == "inf":
        emb[1, 0] = np.inf
        _write(p, [1, 2, 3], _fixed(emb))
    elif case == "empty":
        _write(p, pa.array([], pa.int64()), pa.array([], pa.list_(pa.float32(), 4)))
    elif case == "duplicate_ids":
        _write(p, [1, 2, 1], _fixed(emb))
    elif case == "non_numeric":
        _write(p, [1, 2, 3], pa.array([["a"], ["b"], ["c"]], pa.list_(pa.string())))
    elif case == "not_a_list":
        _write(p, [1, 2, 3], pa.array(["x", "y", "z"]))
    elif case == "null_id":
        _write(p, [1, None, 3], _fixed(emb))
    elif case == "corrupt":
        _write(p, [1, 2, 3], _fixed(emb))
        p.write_bytes(p.read_bytes()[:40])
    elif case == "missing_file":
        p = tmp_path / "nope.parquet"
    return p


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_column", "no column 'embedding'"),
        ("ragged", "ragged: row 2 has 1 values"),
        ("nan", "NaN or Inf at row 2"),
        ("inf", "NaN or Inf at row 1"),
        ("empty", "is empty"),
        ("duplicate_ids", "duplicate item_id 1 at rows 0 and 2"),
        ("non_numeric", "expected numeric"),
        ("not_a_list", "expected a list of floats"),
        ("null_id", "null item id at row 1"),
        ("corrupt", "not a readable Parquet file"),
        ("missing_file", "does not exist"),
    ],
)
def test_bad_catalogs_get_a_one_line_error(tmp_path, case, message):
    with pytest.raises(CatalogError, match=message) as err:
        read_catalog(_bad_case(tmp_path, case))
    assert "\n" not in str(err.value)


def test_wrong_dimension_against_expected_is_named(tmp_path):
    emb = np.ones((3, 4), dtype=np.float32)
    p = _write(tmp_path / "d.parquet", [1, 2, 3], _fixed(emb))
    with pytest.raises(CatalogError, match="dimension 4 at row 0; expected 8"):
        list(iter_parquet_batches(p, dim=8))
