"""SemanticIdVocab round trips on every item of an exported index, the vocab file, and `semid export`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from semid.service.cli import main
from semid.service.errors import InvalidSemanticIdError
from semid.service.generation.trie import SemanticIdTrie
from semid.service.generation.vocab import InvalidVocabError, SemanticIdVocab
from semid.service.ids.layout import IdLayout

OFFSET = 50_257  # appended after a GPT-2 sized vocabulary


@pytest.fixture(scope="module")
def exported(assigned_index, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    args = ["export", "--index", str(assigned_index), "--out", str(out / "items.parquet")]
    args += ["--vocab", str(out / "vocab.json"), "--trie", str(out / "sub" / "trie.npz")]
    result = CliRunner().invoke(main, [*args, "--vocab-offset", str(OFFSET), "--special-tokens"])
    assert result.exit_code == 0, result.output
    assert "wrote the vocab" in result.output and "wrote the trie" in result.output
    return out


def test_vocab_round_trips_every_exported_item(exported):
    rows = pq.read_table(exported / "items.parquet").to_pylist()
    vocab = SemanticIdVocab.load(exported / "vocab.json")
    assert vocab.offset == OFFSET and vocab.special_tokens
    sids = np.array([r["semantic_id"] for r in rows], dtype=np.int64)
    tokens = [r["token"] for r in rows]
    assert len(rows) == 600 and sids.shape[1] == vocab.width == 4
    # tuple -> string -> tuple, against the token column export wrote
    assert vocab.to_strings(sids) == tokens
    assert np.array_equal(vocab.from_strings(tokens), sids)
    # tuple -> flat -> tuple, vectorised and one by one
    flat = vocab.to_flat(sids)
    assert flat.min() >= OFFSET and flat.max() < vocab.eos_id
    assert np.array_equal(vocab.from_flat(flat), sids)
    assert np.array_equal(vocab.strings_to_flat(tokens), flat) and vocab.flat_to_strings(flat) == tokens
    for sid, text, ids in zip(sids[:50].tolist(), tokens, flat.tolist(), strict=False):
        assert vocab.to_string(sid) == text and vocab.from_string(text) == tuple(sid)
        assert "".join(vocab.token(i) for i in ids) == text
        assert [vocab.flat_id(t) for t in vocab.layout.token(sid).replace("><", ">|<").split("|")] == ids
    # each position's tokens have their own ids
    for pos in range(vocab.width):
        assert set(np.unique(flat[:, pos]).tolist()) <= set(
            range(vocab.level_offsets[pos], vocab.level_offsets[pos] + 8)
        )


def test_vocab_file_lists_every_token_once(exported):
    data = json.loads((exported / "vocab.json").read_text())
    ids = [t["id"] for t in data["tokens"]]
    assert ids == list(range(OFFSET, OFFSET + 4 * 8 + 3))
    assert len({t["token"] for t in data["tokens"]}) == len(ids)
    assert data["tokens"][8] == {"id": OFFSET + 8, "token": "<b_0>", "level": 1, "code": 0}
    assert data["special_tokens"] == {"pad": OFFSET + 32, "bos": OFFSET + 33, "eos": OFFSET + 34}
    tampered = json.loads(json.dumps(data))
    tampered["tokens"][3]["id"] = OFFSET + 99
    with pytest.raises(InvalidVocabError):
        SemanticIdVocab.from_json(tampered)
    with pytest.raises(InvalidVocabError):
        SemanticIdVocab.from_json({**data, "offset": 0})  # the tokens still carry the old ids
    with pytest.raises(InvalidVocabError):
        SemanticIdVocab.from_json({**data, "format": "other"})


def test_exported_trie_knows_every_item(exported, assigned_index):
    rows = pq.read_table(exported / "items.parquet").to_pylist()
    saved = SemanticIdTrie.load(exported / "sub" / "trie.npz")
    for trie in (
        saved,
        SemanticIdTrie.from_export(exported / "items.parquet"),
        SemanticIdTrie.from_index(assigned_index),
    ):
        assert trie.sizes == (8, 8, 8, 8) and len(trie) == len(rows)
        for r in rows:
            assert trie.item_of(r["semantic_id"]) == r["item_id"]
        sids = np.array([r["semantic_id"] for r in rows])
        assert trie.items_of(sids).tolist() == [r["item_id"] for r in rows]


def test_export_without_layout_metadata_needs_sizes(exported, tmp_path):
    table = pq.read_table(exported / "items.parquet").replace_schema_metadata(None)
    pq.write_table(table, tmp_path / "bare.parquet")
    with pytest.raises(ValueError, match="sizes"):
        SemanticIdTrie.from_export(tmp_path / "bare.parquet")
    assert len(SemanticIdTrie.from_export(tmp_path / "bare.parquet", sizes=(8, 8, 8, 8))) == table.num_rows


def test_uneven_layout_offsets_and_lenient_codes():
    vocab = SemanticIdVocab.for_layout(IdLayout(codebook_sizes=(3, 5), dedup_size=2), offset=10)
    assert vocab.level_offsets.tolist() == [10, 13, 18] and len(vocab) == 10 and vocab.end == 20
    assert vocab.eos_id is None and vocab.token_strings[3] == "<b_0>"
    assert vocab.to_flat([2, 4, 1]).tolist() == [12, 17, 19]
    # a token of another position, a prompt token or a special is not a code there
    assert vocab.codes_of_flat(np.array([[12, 12, 19], [0, 17, 18]])).tolist() == [[2, -1, 1], [-1, 4, 0]]
    with pytest.raises(InvalidSemanticIdError):
        vocab.from_flat(np.array([[12, 12, 19]]))
    with pytest.raises(InvalidSemanticIdError):
        vocab.to_flat([3, 0, 0])
    for bad in ("<a_1><b_2>", "<a_1><c_2><b_0>", "<a_1><b_2><c_1>x", "<a_3><b_0><c_0>", " <a_1><b_2><c_1>"):
        with pytest.raises(InvalidSemanticIdError):
            vocab.from_string(bad)
    with pytest.raises(InvalidVocabError):
        vocab.flat_id("<sid_eos>")
    with pytest.raises(InvalidVocabError):
        SemanticIdVocab.for_layout(vocab.layout, offset=-1)
