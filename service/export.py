"""`semid export`: one row per item (item_id, semantic_id, token), ready to train a generative model on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semid.service.index.handle import SemanticIdIndex


def export_table(index: SemanticIdIndex) -> pa.Table:
    """Items in semantic-ID order; semantic_id is base code then dedup digit."""
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
    return pa.table({"item_id": item_ids, "semantic_id": semantic_id, "token": tokens})


def export_index(index_dir: str | Path, out: str | Path) -> int:
    index = SemanticIdIndex.open(index_dir)
    table = export_table(index)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return table.num_rows
