"""Moving from one checkpoint's IDs to another's: the old -> new map of two indexes (`semid migrate`)
and renumbering a retrained checkpoint to agree with an older one (`semid align`).

The map joins the active items of both indexes on item id: one row per item in either, the side an
item is missing from left null. The report counts items in both / only old / only new and, over
the items in both, the share keeping their level-1 code, their first two codes (of the semantic
ID, what a generator sees), their full base code (the encoder's output, before the dedup digit)
and their full ID.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from semid.model.data.catalog import read_catalog
from semid.model.data.files import write_json_atomically, write_parquet_atomically
from semid.model.training.alignment import agreement, fit_alignment, write_aligned_checkpoint
from semid.model.training.checkpoint import CONFIG_FILE, load_checkpoint
from semid.service.encoder import CheckpointEncoder
from semid.service.ids.layout import IdLayout
from semid.service.index.handle import SemanticIdIndex
from semid.service.index.object_store import parse_store_uri
from semid.service.index.snapshot import IndexSnapshot

BOTH, ONLY_OLD, ONLY_NEW = "both", "only_old", "only_new"


@dataclass(frozen=True)
class IndexIds:
    """The active items of one index: ids, semantic IDs and base codes, in semantic-ID order."""

    path: str
    fingerprint: str
    layout: IdLayout
    snapshot: IndexSnapshot
    rows: np.ndarray  # int64 [N]: active rows, sorted by semantic ID

    @classmethod
    def open(cls, path: str | Path) -> IndexIds:
        index = SemanticIdIndex.open(path, read_only=True)  # a directory or s3://...: only read
        snap = index.snapshot
        return cls(str(path), index.fingerprint, snap.layout, snap, snap.state.order)

    @property
    def item_ids(self) -> np.ndarray:
        return self.snapshot.state.item_ids[self.rows]

    @property
    def semantic_ids(self) -> np.ndarray:
        return self.snapshot.state.semantic_ids[self.rows]

    @property
    def base_codes(self) -> np.ndarray:
        return self.snapshot.state.base_codes[self.rows]


@dataclass
class MigrationReport:
    old: dict[str, Any]
    new: dict[str, Any]
    in_both: int
    only_old: int
    only_new: int
    keeps: dict[str, float | None] = field(default_factory=dict)  # share of the items in both

    def to_dict(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "items_in_both": self.in_both,
            "items_only_old": self.only_old,
            "items_only_new": self.only_new,
            "keeps": self.keeps,
        }

    def lines(self) -> list[str]:
        def pct(share: float | None) -> str:
            return "n/a" if share is None else f"{100 * share:.1f}%"

        k = self.keeps
        return [
            f"{self.in_both} items in both, {self.only_old} only in the old index, {self.only_new} only in the new",
            f"of the items in both: level-1 code kept {pct(k['level1'])}, first two codes {pct(k['first2'])}, "
            f"full base code {pct(k['base_code'])}, full ID {pct(k['full_id'])}",
        ]


def migration_map(old: IndexIds, new: IndexIds) -> tuple[pa.Table, MigrationReport]:
    """The old -> new table (items in both in old semantic-ID order, then only-old, then only-new) and its report."""
    if old.snapshot.id_kind != new.snapshot.id_kind:
        raise ValueError(
            f"the old index has {old.snapshot.id_kind} item ids and the new one {new.snapshot.id_kind} ids; "
            "a migration map needs one kind"
        )
    state_new = new.snapshot.state
    new_row = new.snapshot.lookup_items(old.item_ids)  # row in the new index per old item, -1 if gone
    in_both = new_row >= 0
    seen = np.zeros(state_new.rows, dtype=bool)
    seen[new_row[in_both]] = True
    only_new = new.rows[~seen[new.rows]]
    both_old = np.flatnonzero(in_both)
    gone = np.flatnonzero(~in_both)
    old_part = np.concatenate([both_old, gone])  # positions in old.rows
    n_rows = old_part.shape[0] + only_new.shape[0]
    new_rows = np.concatenate([new_row[both_old], np.full(gone.shape[0], -1), only_new])
    status = [BOTH] * both_old.shape[0] + [ONLY_OLD] * gone.shape[0] + [ONLY_NEW] * only_new.shape[0]
    item_ids = np.concatenate([old.item_ids[old_part], state_new.item_ids[only_new]])
    old_sid = _padded(old.semantic_ids[old_part], n_rows)
    new_sid = np.zeros((n_rows, new.layout.width), dtype=np.int64)
    new_sid[new_rows >= 0] = state_new.semantic_ids[new_rows[new_rows >= 0]]
    table = pa.table(
        {
            "item_id": pa.array(item_ids.tolist()) if old.snapshot.id_kind == "str" else pa.array(item_ids, pa.int64()),
            "status": pa.array(status, pa.string()),
            "old_semantic_id": _id_lists(old_sid, np.arange(n_rows) < old_part.shape[0]),
            "new_semantic_id": _id_lists(new_sid, new_rows >= 0),
            "old_token": _tokens(old.layout, old_sid, np.arange(n_rows) < old_part.shape[0]),
            "new_token": _tokens(new.layout, new_sid, new_rows >= 0),
        }
    )
    both_rows_old = old.rows[both_old]
    both_rows_new = new_row[both_old]
    keeps = _keeps(old, new, both_rows_old, both_rows_new)
    report = MigrationReport(
        old=_side(old),
        new=_side(new),
        in_both=int(both_old.shape[0]),
        only_old=int(gone.shape[0]),
        only_new=int(only_new.shape[0]),
        keeps=keeps,
    )
    return table, report


def _keeps(old: IndexIds, new: IndexIds, rows_old: np.ndarray, rows_new: np.ndarray) -> dict[str, float | None]:
    """Shares of the items in both keeping their first 1 and 2 codes, base code and full ID
    (None where the two layouts have no such common part, or no item is in both)."""
    so, sn = old.snapshot.state, new.snapshot.state
    sid_old, sid_new = so.semantic_ids[rows_old], sn.semantic_ids[rows_new]
    levels = min(old.layout.levels, new.layout.levels)

    def share(same: np.ndarray) -> float | None:
        return float(same.mean()) if same.shape[0] else None  # no item in both: nothing to share

    def prefix(depth: int) -> float | None:
        if depth > levels:
            return None
        return share((sid_old[:, :depth] == sid_new[:, :depth]).all(axis=1))

    same_shape = old.layout.levels == new.layout.levels
    return {
        "level1": prefix(1),
        "first2": prefix(2),
        "base_code": share((so.base_codes[rows_old] == sn.base_codes[rows_new]).all(axis=1)) if same_shape else None,
        "full_id": share((sid_old == sid_new).all(axis=1)) if same_shape else None,
    }


def _side(ids: IndexIds) -> dict[str, Any]:
    return {"index": ids.path, "fingerprint": ids.fingerprint, "items": int(ids.rows.shape[0])}


def _padded(sids: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, sids.shape[1]), dtype=np.int64)
    out[: sids.shape[0]] = sids
    return out


def _id_lists(sids: np.ndarray, valid: np.ndarray) -> pa.Array:
    """list<int32> per row, null where ``valid`` is False."""
    n, width = sids.shape
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    values = pa.array(sids.reshape(-1).astype(np.int32), pa.int32())
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(~valid))


def _tokens(layout: IdLayout, sids: np.ndarray, valid: np.ndarray) -> pa.Array:
    tokens = np.full(sids.shape[0], None, dtype=object)
    if valid.any():
        tokens[valid] = layout.tokens(sids[valid])
    return pa.array(tokens.tolist(), pa.string())


def write_migration(
    old_index: str | Path, new_index: str | Path, out: str | Path, report_path: str | Path | None = None
) -> MigrationReport:
    """`semid migrate`: write the map (Parquet, atomically) and optionally the report (JSON)."""
    table, report = migration_map(IndexIds.open(old_index), IndexIds.open(new_index))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomically(out, table)
    if report_path is not None:
        write_json_atomically(Path(report_path), report.to_dict())
    return report


# --- stable retraining ------------------------------------------------------------------------


@dataclass
class AlignmentSummary:
    fingerprint: str
    items: int  # catalog items both sides coded
    before: list[float]  # agreement with the old codes at depth 1..L, unaligned
    after: list[float]  # the same after alignment

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "items": self.items, "before": self.before, "after": self.after}

    def lines(self) -> list[str]:
        def fmt(values: list[float]) -> str:
            return " / ".join(f"{100 * v:.1f}%" for v in values)

        return [
            f"agreement with the old codes on {self.items} items (first 1 .. {len(self.before)} codes):",
            f"  before {fmt(self.before)}",
            f"  after  {fmt(self.after)}",
        ]


def old_codes_for(target: str | Path, item_ids: np.ndarray, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(catalog positions, base codes [n, L]) of the old side: a checkpoint encodes the catalog; an index
    gives the base codes it holds for the catalog's items (items it lacks are left out)."""
    if parse_store_uri(target) is None and (Path(target) / CONFIG_FILE).is_file():
        encoder = CheckpointEncoder.from_dir(Path(target), alternatives=1)
        codes = encoder.encode(embeddings, alternatives=1).base_codes
        return np.arange(codes.shape[0]), codes
    snap = SemanticIdIndex.open(target, read_only=True).snapshot  # a directory or s3://...
    rows = snap.lookup_items(item_ids)
    found = np.flatnonzero(rows >= 0)
    return found, snap.state.base_codes[rows[found]]


def align_checkpoint(
    checkpoint: str | Path,
    to: str | Path,
    catalog: str | Path,
    out: str | Path,
    *,
    id_column: str = "item_id",
    embedding_column: str = "embedding",
    ids_path: str | Path | None = None,
) -> AlignmentSummary:
    """`semid align`: write ``checkpoint`` renumbered to agree most with ``to`` (an old checkpoint or index)
    on the items of ``catalog``."""
    cat = read_catalog(catalog, id_column=id_column, embedding_column=embedding_column, ids_path=ids_path)
    loaded = load_checkpoint(checkpoint)
    new_codes = CheckpointEncoder(loaded, alternatives=1).encode(cat.embeddings, alternatives=1).base_codes
    positions, old_codes = old_codes_for(to, cat.item_ids, cat.embeddings)
    new_codes = new_codes[positions]
    if old_codes.shape[1] != new_codes.shape[1]:
        raise ValueError(f"{to} has {old_codes.shape[1]} levels and {checkpoint} {new_codes.shape[1]}; cannot align")
    k = loaded.config.model.codebook_size
    if old_codes.size and old_codes.max() >= k:
        raise ValueError(f"{to} has codes >= {k}, the codebook size of {checkpoint}; cannot align")
    if positions.shape[0] == 0:
        raise ValueError(f"no item of {catalog} is in {to}; nothing to align on")
    alignment = fit_alignment(old_codes, new_codes, k)
    before, after = agreement(old_codes, new_codes), agreement(old_codes, alignment.rename(new_codes))
    items = int(positions.shape[0])
    report = {"aligned_to": str(to), "items": items, "agreement_before": before, "agreement_after": after}
    fingerprint = write_aligned_checkpoint(loaded, alignment, out, report)
    return AlignmentSummary(fingerprint=fingerprint, items=items, before=before, after=after)
