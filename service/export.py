"""`semid export`: one row per item (item_id, semantic_id, token), ready to train a generative model on;
optionally the token vocabulary (JSON) and the trie of valid IDs (npz) of the same snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from semid.model.data.files import write_parquet_atomically
from semid.service.generation.trie import SemanticIdTrie
from semid.service.generation.vocab import SemanticIdVocab
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.snapshot import IndexSnapshot

LAYOUT_METADATA = b"semid.layout"  # the layout, as JSON, in the Parquet schema metadata


def export_table(index: SemanticIdIndex | IndexSnapshot) -> pa.Table:
    """Items in semantic-ID order; semantic_id is base code then dedup digit. The schema metadata
    holds the layout (``semid.layout``), so a reader knows every position's range."""
    state = index.state
    order = state.order
    sids = state.semantic_ids[order]
    width = index.layout.width
    ids = state.item_ids[order]
    item_ids = pa.array(ids.tolist()) if index.id_kind == "str" else pa.array(ids, pa.int64())
    flat = pa.array(sids.reshape(-1).astype(np.int32), pa.int32())
    offsets = pa.array(np.arange(0, sids.shape[0] * width + 1, width, dtype=np.int32))
    semantic_id = pa.ListArray.from_arrays(offsets, flat)
    tokens = pa.array(index.layout.tokens(sids))
    table = pa.table({"item_id": item_ids, "semantic_id": semantic_id, "token": tokens})
    return table.replace_schema_metadata({LAYOUT_METADATA: json.dumps(index.layout.to_dict()).encode()})


def export_index(
    index_dir: str | Path,
    out: str | Path,
    *,
    vocab: str | Path | None = None,
    trie: str | Path | None = None,
    vocab_offset: int = 0,
    special_tokens: bool = False,
) -> int:
    """Write the items to ``out`` (Parquet) and, if asked, the vocab (JSON) and trie (npz), all from one
    snapshot. Returns the number of items."""
    snapshot = SemanticIdIndex.open(index_dir, read_only=True).snapshot  # a reader: never writes
    table = export_table(snapshot)
    for path in (vocab, trie):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if vocab is not None:
        SemanticIdVocab.for_layout(snapshot.layout, offset=vocab_offset, special_tokens=special_tokens).save(vocab)
    if trie is not None:
        SemanticIdTrie.from_snapshot(snapshot).save(trie)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomically(out, table)
    return table.num_rows
