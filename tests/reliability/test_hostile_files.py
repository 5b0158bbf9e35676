"""Hostile files (issue 22, items 3-6): writers that never follow a planted symlink, and the trie, vocab and
index readers bounding what a crafted file may cost before it is refused."""

from __future__ import annotations

import io
import json
import tracemalloc
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from semid.model.data import files
from semid.model.data.synthetic import synthetic_catalog, write_catalog
from semid.service.cli import main
from semid.service.generation import vocab as vocab_module
from semid.service.generation.trie import InvalidTrieError, SemanticIdTrie
from semid.service.generation.vocab import InvalidVocabError, SemanticIdVocab
from semid.service.ids.layout import IdLayout

VICTIM_TEXT = b"precious: must never be overwritten\n"


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_checkpoint, tiny_catalog_file) -> Path:
    from semid.service.assign import assign_catalog

    index_dir = tmp_path_factory.mktemp("hostile") / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=index_dir)
    return index_dir


def _plant(directory: Path, name: str, tmp_path: Path) -> Path:
    """A symlink at ``directory/name`` to a victim file; returns the victim."""
    victim = tmp_path / f"victim-{name.strip('.')}"
    victim.write_bytes(VICTIM_TEXT)
    (directory / name).symlink_to(victim)
    return victim


def _invoke(*args: object) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


# --- writers (item 5) ----------------------------------------------------------------------------------


def test_export_does_not_write_through_a_planted_temp_symlink(index, tmp_path):
    out = tmp_path / "out" / "ids.parquet"
    out.parent.mkdir()
    victim = _plant(out.parent, f".{out.name}.tmp", tmp_path)  # the fixed temp name semid 0.7.0 wrote to
    _invoke("export", "--index", index, "--out", out)
    assert victim.read_bytes() == VICTIM_TEXT
    assert pq.read_table(out).num_rows == 600


def test_migrate_does_not_write_through_a_planted_temp_symlink(index, tmp_path):
    out = tmp_path / "map.parquet"
    victim = _plant(tmp_path, f".{out.name}.tmp", tmp_path)
    _invoke("migrate", "--from", index, "--to", index, "--out", out)
    assert victim.read_bytes() == VICTIM_TEXT
    assert pq.read_table(out).num_rows == 600


def test_evaluate_does_not_write_through_planted_temp_symlinks(index, tiny_catalog_file, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    victims = [_plant(out, f".{name}.tmp", tmp_path) for name in ("metrics.json", "report.html")]
    _invoke("evaluate", "--index", index, "--catalog", tiny_catalog_file, "--out", out)
    assert [v.read_bytes() for v in victims] == [VICTIM_TEXT, VICTIM_TEXT]
    assert "summary" in json.loads((out / "metrics.json").read_text())


def test_write_catalog_does_not_write_through_a_planted_temp_symlink(tmp_path):
    path = tmp_path / "catalog.parquet"
    victim = _plant(tmp_path, f"{path.name}.tmp", tmp_path)
    write_catalog(synthetic_catalog(items=50, dim=4, seed=0), path)
    assert victim.read_bytes() == VICTIM_TEXT
    assert pq.read_table(path).num_rows == 50


def test_a_symlink_at_the_final_name_is_replaced_not_followed(index, tmp_path):
    out = tmp_path / "ids.parquet"
    victim = _plant(tmp_path, out.name, tmp_path)
    _invoke("export", "--index", index, "--out", out)
    assert victim.read_bytes() == VICTIM_TEXT
    assert not out.is_symlink() and pq.read_table(out).num_rows == 600


def test_the_temporary_file_is_created_exclusively(tmp_path, monkeypatch):
    """Even a temporary name guessed in advance is never written through: the file is created with O_EXCL."""
    fixed = uuid.UUID(int=0)
    monkeypatch.setattr(files.uuid, "uuid4", lambda: fixed)
    final = tmp_path / "trie.npz"
    victim = _plant(tmp_path, files.temp_path_for(final).name, tmp_path)
    with pytest.raises(FileExistsError):
        files.write_bytes_atomically(final, b"data")
    assert victim.read_bytes() == VICTIM_TEXT
    assert not final.exists()


# --- trie files (item 3) ---------------------------------------------------------------------------------


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _trie_zip(path: Path, *, sizes, keys=None, items=None, big: dict | None = None) -> Path:
    """A trie file with the given members; ``big`` = {member: (dtype, n)}: a deflated member of n zero values."""
    small = {"format": np.array("semid-trie"), "version": np.array(1), "sizes": np.asarray(sizes, dtype=np.int64)}
    if keys is not None:
        small["keys"] = np.asarray(keys, dtype=np.int64)
    if items is not None:
        small["items"] = np.asarray(items)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in small.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            zf.writestr(f"{key}.npy", buf.getvalue())
        for key, (dtype, n) in (big or {}).items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                f.write(_npy_header(dtype, (n,)))
                left, chunk = n * np.dtype(dtype).itemsize, bytes(1 << 20)
                while left:
                    f.write(chunk[: min(left, len(chunk))])
                    left -= min(left, len(chunk))
    return path


def _peak_bytes(fn) -> tuple[int, BaseException | None]:
    """Peak traced allocation (NumPy's arrays included) while ``fn`` runs, and what it raised."""
    tracemalloc.start()
    try:
        fn()
        raised = None
    except Exception as exc:  # noqa: BLE001 - returned for the caller to assert on
        raised = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, raised


def test_a_trie_of_thousands_of_positions_is_refused(tmp_path):
    """0.7.0 derived a radix table per depth: quadratic in positions (16,000 positions: 32 s, 2 GB)."""
    path = _trie_zip(tmp_path / "wide.npz", sizes=[1] * 4000, keys=[0], items=[7])
    with pytest.raises(InvalidTrieError, match="4000 positions; expected at most 26"):
        SemanticIdTrie.load(path)
    with pytest.raises(InvalidTrieError, match="positions"):
        SemanticIdTrie.from_bytes(path.read_bytes())


def test_a_trie_with_codes_beyond_int32_is_refused(tmp_path):
    """0.7.0 accepted sizes >= 2**31 and stored the codes as int32 (wrapped)."""
    size = (1 << 31) + 5
    path = _trie_zip(tmp_path / "big.npz", sizes=[size], keys=[size - 1], items=[0])
    with pytest.raises(InvalidTrieError, match="more than 1048576 codes"):
        SemanticIdTrie.load(path)


def test_a_trie_declaring_huge_string_items_is_refused_before_reading_them(tmp_path):
    """A few hundred KB of deflated zeros declaring 3 items of 10M characters (120 MB) each."""
    path = _trie_zip(tmp_path / "items.npz", sizes=[4, 4], keys=[0, 1, 2], big={"items": ("<U10000000", 3)})
    assert path.stat().st_size < 1 << 20
    peak, raised = _peak_bytes(lambda: SemanticIdTrie.load(path))
    assert isinstance(raised, InvalidTrieError), raised
    assert "declares" in str(raised) or "characters" in str(raised)
    assert peak < 8 << 20, f"peak {peak / 1e6:.0f} MB"


def test_a_deflated_keys_bomb_is_refused_before_it_is_inflated(tmp_path):
    """16M zero keys (128 MB) deflated to ~128 KB: refused from the zip entry's sizes, never decompressed."""
    path = _trie_zip(tmp_path / "keys.npz", sizes=[1 << 20, 1 << 20], items=[], big={"keys": ("<i8", 1 << 24)})
    peak, raised = _peak_bytes(lambda: SemanticIdTrie.load(path))
    assert isinstance(raised, InvalidTrieError) and "expected at most 32x" in str(raised), raised
    assert peak < 8 << 20, f"peak {peak / 1e6:.0f} MB"


def test_a_trie_member_whose_header_disagrees_with_its_entry_is_refused(tmp_path):
    path = tmp_path / "lying.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, arr in {"format": np.array("semid-trie"), "version": np.array(1), "sizes": np.array([4, 4])}.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr)
            zf.writestr(f"{key}.npy", buf.getvalue())
        zf.writestr("keys.npy", _npy_header("<i8", (1 << 40,)) + bytes(64))  # declares 8 TB, holds 64 bytes
        zf.writestr("items.npy", _npy_header("<i8", (8,)) + bytes(64))
    with pytest.raises(InvalidTrieError, match="in a zip entry of 64 bytes"):
        SemanticIdTrie.load(path)


def test_long_string_items_are_refused_when_building_and_saved_tries_still_load(tmp_path):
    sids = np.array([[0, 1], [1, 0]])
    with pytest.raises(InvalidTrieError, match="1025 characters"):
        SemanticIdTrie.from_semantic_ids(sids, ["a", "b" * 1025], sizes=(2, 2))
    trie = SemanticIdTrie.from_semantic_ids(sids, ["a", "b" * 1024], sizes=(2, 2))
    trie.save(tmp_path / "t.npz")
    assert SemanticIdTrie.load(tmp_path / "t.npz").item_of([1, 0]) == "b" * 1024


# --- vocab files (item 4) --------------------------------------------------------------------------------


def _vocab_file(path: Path, sizes: list[int], tokens: list | None = None) -> Path:
    data = {
        "format": "semid-vocab",
        "version": 1,
        "layout": {"codebook_sizes": sizes, "dedup_size": 1},
        "offset": 0,
        "size": sum(sizes) + 1,
        "special_tokens": {},
        "tokens": tokens or [],
    }
    path.write_text(json.dumps(data))
    return path


def test_a_tiny_vocab_declaring_four_million_codes_is_refused_at_once(tmp_path):
    """0.7.0 built the 4M-token table before comparing (9.3 s, 2.9 GB) for a 150-byte file."""
    path = _vocab_file(tmp_path / "v.json", [4194304])
    peak, raised = _peak_bytes(lambda: SemanticIdVocab.load(path))
    assert isinstance(raised, InvalidVocabError) and "at most 1048576" in str(raised), raised
    assert peak < 1 << 20, f"peak {peak / 1e6:.0f} MB"


def test_a_vocab_listing_fewer_tokens_than_its_layout_is_refused_before_building_them(tmp_path):
    path = _vocab_file(tmp_path / "v.json", [300_000], tokens=[{"id": 0, "token": "<a_0>", "level": 0, "code": 0}])
    peak, raised = _peak_bytes(lambda: SemanticIdVocab.load(path))
    assert isinstance(raised, InvalidVocabError) and "lists 1 tokens" in str(raised), raised
    assert peak < 1 << 20, f"peak {peak / 1e6:.0f} MB"


def test_a_vocab_file_larger_than_any_vocab_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(vocab_module, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "v.json"
    path.write_text(" " * 5000 + "{}")
    with pytest.raises(InvalidVocabError, match="larger than 1000 bytes"):
        SemanticIdVocab.load(path)


def test_a_vocab_with_flat_ids_beyond_int32_is_refused():
    layout = IdLayout(codebook_sizes=(4,), dedup_size=2)
    with pytest.raises(InvalidVocabError, match="int32"):
        SemanticIdVocab.for_layout(layout, offset=(1 << 31) - 3)
    assert SemanticIdVocab.for_layout(layout, offset=(1 << 31) - 7).end == (1 << 31) - 1


# --- index segments (item 6) -----------------------------------------------------------------------------

_OPEN_AND_MEASURE = """
import json, sys
import pyarrow as pa
from semid.service.index.handle import SemanticIdIndex
try:
    SemanticIdIndex.open(sys.argv[1])
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"arrow_peak": pa.default_memory_pool().max_memory(), "error": error}))
"""


def _unchecked_index(tmp_path: Path) -> tuple[Path, Path]:
    """A 40-item index with a kept ``title`` column whose manifest no longer records the segment's sha256
    (as an index written before checksums existed); returns (index dir, its one segment)."""
    from tests.service.index.test_handle import filled_index

    index_dir = tmp_path / "idx"
    filled_index(index_dir, np.random.default_rng(0))
    manifest_path = index_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["segments"]:
        entry.pop("sha256", None)
    manifest_path.write_text(json.dumps(manifest))
    (segment,) = [index_dir / "segments" / s["name"] for s in manifest["segments"]]
    return index_dir, segment


def _open_in_subprocess(index_dir: Path) -> dict:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _OPEN_AND_MEASURE, str(index_dir)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_tampered_kept_column_is_refused_before_it_is_decoded(tmp_path):
    """The kept column rewritten as one 4 MB string, dictionary-encoded (a file of a few KB), the Arrow schema
    saying plain strings and the checksum dropped: 0.7.0 decoded all 40 x 4 MB."""
    import pyarrow as pa

    index_dir, segment = _unchecked_index(tmp_path)
    table = pq.read_table(segment)
    huge = pa.DictionaryArray.from_arrays(pa.array(np.zeros(table.num_rows, np.int32)), pa.array(["x" * (4 << 20)]))
    table = table.set_column(table.column_names.index("title"), "title", huge)
    pq.write_table(table, segment, compression="zstd", store_schema=False)  # read back as plain strings
    assert segment.stat().st_size < 1 << 20
    result = _open_in_subprocess(index_dir)
    assert result["error"] is not None and "kept columns decode to more than" in result["error"], result
    assert result["arrow_peak"] < 32 << 20, result


def test_an_index_without_segment_checksums_opens_with_a_warning(tmp_path, caplog):
    from semid.service.index.check import check_index
    from semid.service.index.handle import SemanticIdIndex

    index_dir, _ = _unchecked_index(tmp_path)
    with caplog.at_level("WARNING", logger="semid.service.index.handle"):
        assert len(SemanticIdIndex.open(index_dir)) == 40
    assert any("no recorded checksum" in r.getMessage() for r in caplog.records), caplog.text
    report = check_index(index_dir)
    assert report.ok and any("no recorded checksum" in note for note in report.notes)


def test_trie_string_items_wider_than_the_cap_are_refused_from_the_header(tmp_path):
    items = np.array(["a", "b", "c"], "U2000")
    path = _trie_zip(tmp_path / "wide-items.npz", sizes=[4, 4], keys=[0, 1, 2], items=items)
    with pytest.raises(InvalidTrieError, match="strings of up to 2000 characters; expected at most 1024"):
        SemanticIdTrie.load(path)
