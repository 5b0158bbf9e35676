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


@router.get(
    "/readyz", response_model=Health, response_model_exclude_unset=True, responses={503: {"model": ErrorResponse}}
)
async def readyz(request: Request) -> dict | JSONResponse:
    """Readiness: the index and checkpoint are loaded; the snapshot version, role and process answering."""
    state = request.app.state.semid
    if state is None:
        return JSONResponse({"error": {"code": "not_ready", "message": "the index is loading"}}, status_code=503)
    await catch_up(state)
    index = state.index
    body = {
        "status": "ready",
        "items": len(index),
        "fingerprint": index.fingerprint,
        "version": index.version,
        "role": "replica" if state.settings.read_only else "writer",
        "pid": os.getpid(),
    }
    store = index.store_status()
    if store is None:
        return body
    since, seen = store.seconds_since_contact, store.store_version
    body["store"] = {
        "uri": store.uri,
        "version": seen,
        "behind": None if seen is None else seen - index.version,
        "seconds_since_contact": None if since is None else round(since, 3),
        "error": store.error,
    }
    bound = state.settings.store_stale_seconds
    if since is None or since > bound:
        body["status"] = "store_unreachable"
        message = f"the object store has not answered for more than {bound:g} s; serving the cached version"
        return JSONResponse({**body, "error": {"code": "store_unreachable", "message": message}}, status_code=503)
    return body
