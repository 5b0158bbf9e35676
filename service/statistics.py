"""Headline figures of one index snapshot: items, retired rows, base-code collisions, fallback items and, per
position, codes used and prefix fan-out. The HTTP route (`GET /v1/stats`) and the web explorer's health view
show them; they are computed here, beside the index, not in the HTTP layer.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from semid.service.index.snapshot import IndexSnapshot

_cache_lock = threading.Lock()
_cache: list[tuple[weakref.ref, dict]] = []  # the last snapshot's figures: snapshots are immutable


def snapshot_stats(snapshot: IndexSnapshot) -> dict:
    """Items, base-code collisions, fallback count and per-position usage of one snapshot (cached per snapshot)."""
    with _cache_lock:
        for ref, figures in _cache:
            if ref() is snapshot:
                return figures
    figures = _compute(snapshot)
    with _cache_lock:
        _cache[:] = [(weakref.ref(snapshot), figures)]
    return figures


def _compute(snapshot: IndexSnapshot) -> dict:
    layout, state = snapshot.layout, snapshot.state
    packed = state.sorted_packed  # active rows, sorted: a prefix of length p is a run of equal packed >> shift
    mask = (1 << layout.bits) - 1
    levels, parents = [], 1
    for pos, size in enumerate(layout.sizes):
        shift = layout.bits * (layout.width - 1 - pos)
        prefixes = packed >> shift
        nodes = int(np.count_nonzero(prefixes[1:] != prefixes[:-1]) + 1) if packed.shape[0] else 0
        used = int(np.count_nonzero(np.bincount(prefixes & mask, minlength=size))) if packed.shape[0] else 0
        levels.append(
            {
                "position": pos + 1,
                "dedup": pos == layout.levels,
                "codebook_size": int(size),
                "codes_used": used,
                "usage": used / size,
                "prefixes": nodes,
                "mean_fanout": nodes / parents if parents else 0.0,
            }
        )
        parents = nodes
    return {
        "items": len(snapshot),
        "retired": int(state.rows - state.size),
        "fingerprint": snapshot.manifest.checkpoint_fingerprint,
        "levels_count": layout.levels,
        "base_codes": snapshot.base_code_stats(),
        "fallback": int(np.count_nonzero(state.fallback[state.active])),
        "keep_columns": list(snapshot.keep_columns),
        "levels": levels,
    }
