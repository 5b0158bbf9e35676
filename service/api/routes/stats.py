"""Read-only headline figures of the served index (the web explorer's health view; computed in
semid.service.statistics), and its evaluation report."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

from semid.service.api.deps import StateDep
from semid.service.api.schemas import ERRORS, IndexStats
from semid.service.api.threads import in_read_thread
from semid.service.index.snapshot import IndexSnapshot
from semid.service.statistics import snapshot_stats

router = APIRouter(tags=["look-up"])

REPORT_URL = "/v1/stats/report"
# the file names `semid evaluate` writes (semid.service.evaluation.run; a sibling layer, so not imported)
REPORT_FILE, METRICS_FILE = "report.html", "metrics.json"
MAX_METRICS_BYTES = 64 << 20


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
