"""Read-only headline figures of the served index (the web explorer's health view), and its evaluation report."""

from __future__ import annotations

import json
import threading
import weakref
from pathlib import Path

import numpy as np
from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

from semid.service.api.deps import StateDep
from semid.service.api.schemas import ERRORS, IndexStats
from semid.service.api.threads import in_read_thread
from semid.service.index.snapshot import IndexSnapshot

router = APIRouter(tags=["look-up"])

REPORT_URL = "/v1/stats/report"
# the file names `semid evaluate` writes (semid.service.evaluation.run; a sibling layer, so not imported)
REPORT_FILE, METRICS_FILE = "report.html", "metrics.json"
MAX_METRICS_BYTES = 64 << 20

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


def _report_info(report_dir: Path | None, fingerprint: str) -> dict | None:
    """The evaluation report in ``report_dir`` if one exists for this index's checkpoint, else None."""
    if report_dir is None:
        return None
    report, metrics_path = Path(report_dir) / REPORT_FILE, Path(report_dir) / METRICS_FILE
    try:
        if not report.is_file() or metrics_path.stat().st_size > MAX_METRICS_BYTES:
            return None
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or metrics.get("checkpoint_fingerprint") != fingerprint:
        return None
    items = metrics.get("items")
    return {"url": REPORT_URL, "items": items if isinstance(items, int) else None}


def index_stats(snapshot: IndexSnapshot, report_dir: Path | None) -> dict:
    figures = snapshot_stats(snapshot)
    return {**figures, "report": _report_info(report_dir, figures["fingerprint"])}


@router.get("/v1/stats", response_model=IndexStats, responses=ERRORS)
async def stats(state: StateDep) -> dict:
    """Headline figures of the served index: items, base-code collision rate, fallback items, per-level usage."""
    return await in_read_thread(index_stats, state.index.snapshot, state.settings.report_dir)


@router.get(REPORT_URL, include_in_schema=False)
async def report(state: StateDep) -> FileResponse:
    """The `semid evaluate` report of this index (SEMID_REPORT_DIR), when its checkpoint matches."""
    report_dir = state.settings.report_dir
    info = await in_read_thread(_report_info, report_dir, state.index.fingerprint)
    if info is None or report_dir is None:
        raise HTTPException(404, "no evaluation report for this index (SEMID_REPORT_DIR: a `semid evaluate` output)")
    return FileResponse(Path(report_dir) / REPORT_FILE, media_type="text/html")
