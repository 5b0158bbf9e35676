"""The explorer's map: a 2-D projection of a seeded sample of items, by PCA of their code vectors.

The sample is ``size`` active items drawn with ``numpy.random.default_rng(seed)`` (capped at ``MAX_MAP_ITEMS``),
so one snapshot and one seed always give the same points. Their code vectors (the quantized latents the k-NN
index holds, decoded from each item's ID by the checkpoint) are centred and projected on the two leading
principal components; each axis's sign is fixed (its largest loading positive) so the picture does not flip.
Items sharing a base code share a code vector, so they land on one point. Cached per snapshot and seed.
"""

from __future__ import annotations

import numpy as np

from semid.service.encoder import CheckpointEncoder
from semid.service.errors import InvalidInputError
from semid.service.explorer.cache import SnapshotCache
from semid.service.explorer.terms import text_columns
from semid.service.index.snapshot import IndexSnapshot

DEFAULT_MAP_ITEMS = 2_000
MAX_MAP_ITEMS = 5_000
MAX_SEED = 2**32 - 1
CAPTION_CHARS = 80

_cache = SnapshotCache(max_entries=8)


def code_map(snapshot: IndexSnapshot, encoder: CheckpointEncoder, *, seed: int, size: int) -> dict:
    """``{"seed", "size", "items", "columns", "explained_variance", "points": [{item_id, semantic_id, x, y,
    caption}]}``; points in ID order, caption the first kept text column (or null)."""
    _check("seed", seed, 0, MAX_SEED)
    _check("size", size, 1, MAX_MAP_ITEMS)
    return _cache.get(snapshot, (seed, size), lambda: _project(snapshot, encoder, seed, size))


def _check(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInputError(f"{name} is {value!r}; expected an int in {lo}..{hi}", field=name)


def _project(snapshot: IndexSnapshot, encoder: CheckpointEncoder, seed: int, size: int) -> dict:
    state, levels = snapshot.state, snapshot.layout.levels
    total = len(snapshot)
    picked = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    rows = state.order[picked]  # active rows in ID order
    sids = state.semantic_ids[rows]
    xy, explained = _pca2(encoder.vectors(sids[:, :levels]).astype(np.float64))
    columns = text_columns(state.kept_schema)
    captions = [_caption(kept.get(columns[0])) if columns else None for kept in state.kept_rows(rows)]
    ids = state.item_ids[rows].tolist()
    points = [
        {
            "item_id": int(item_id) if state.id_kind == "int" else str(item_id),
            "semantic_id": sid,
            "x": round(float(x), 5),
            "y": round(float(y), 5),
            "caption": caption,
        }
        for item_id, sid, (x, y), caption in zip(ids, sids.tolist(), xy, captions, strict=True)
    ]
    return {
        "seed": seed,
        "size": size,
        "items": total,
        "columns": columns,
        "explained_variance": [round(float(v), 4) for v in explained],
        "points": points,
    }


def _pca2(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates on the two leading principal components (zeros where there are fewer), and the share of
    the variance each explains. An eigendecomposition of the smaller Gram matrix (d x d, or n x n when the
    vectors are longer than the sample), not an SVD of the sample: far cheaper for a few thousand rows."""
    n, d = vectors.shape
    xy, explained = np.zeros((n, 2)), np.zeros(2)
    if n < 2:
        return xy, explained
    centred = vectors - vectors.mean(axis=0)
    k = min(2, n, d)
    if d <= n:
        values, vecs = np.linalg.eigh(centred.T @ centred)  # ascending
        axes = vecs[:, ::-1][:, :k].T
    else:
        values, vecs = np.linalg.eigh(centred @ centred.T)
        axes = (centred.T @ vecs[:, ::-1][:, :k]).T
        axes /= np.maximum(np.linalg.norm(axes, axis=1, keepdims=True), 1e-300)
    values = np.clip(values[::-1], 0.0, None)
    axes *= np.where(axes[np.arange(k), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]  # no flips
    xy[:, :k] = centred @ axes.T
    if values.sum() > 0:
        explained[:k] = values[:k] / values.sum()
    return xy, explained


def _caption(value: object) -> str | None:
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value)
    return None if value is None else str(value)[:CAPTION_CHARS]
