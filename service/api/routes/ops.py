"""Operations: liveness and readiness."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from semid.service.api.deps import catch_up
from semid.service.api.schemas import ErrorResponse, Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}})
async def readyz(request: Request) -> dict | JSONResponse:
    """Readiness: the index and checkpoint are loaded; the snapshot version, role and process answering."""
    state = request.app.state.semid
    if state is None:
        return JSONResponse({"error": {"code": "not_ready", "message": "the index is loading"}}, status_code=503)
    await catch_up(state)
    index = state.index
    return {
        "status": "ready",
        "items": len(index),
        "fingerprint": index.fingerprint,
        "version": index.version,
        "role": "replica" if state.settings.read_only else "writer",
        "pid": os.getpid(),
    }
