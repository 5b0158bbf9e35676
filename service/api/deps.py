"""Request dependencies: the loaded service state and the API key of write routes."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

import anyio
from fastapi import Depends, Header, Request

from semid.service.api.ratelimit import charge_write
from semid.service.api.state import ServiceState
from semid.service.errors import ApiKeyError, NotReadyError, ReadOnlyReplicaError, SemidError

log = logging.getLogger(__name__)


async def get_state(request: Request) -> ServiceState:
    state = request.app.state.semid
    if state is None:
        raise NotReadyError("the index is not loaded yet")
    await catch_up(state)
    return state


async def catch_up(state: ServiceState) -> None:
    """Before a request: load what other processes (workers, the writer) committed since this one looked.
    One ``stat`` when nothing changed; a refresh, off the event loop, when the manifest was replaced. If it
    fails (e.g. a segment unreadable) the request is served from the snapshot already held."""
    index = state.index
    if not index.manifest_changed():
        return
    try:
        await anyio.to_thread.run_sync(index.refresh_if_changed)
    except (SemidError, OSError) as err:  # e.g. a segment removed between the manifest read and its own
        log.warning(
            "index %s: serving the snapshot held (version %d): refresh failed: %s", index.path, index.version, err
        )


StateDep = Annotated[ServiceState, Depends(get_state)]
ApiKeyHeader = Annotated[str | None, Header(alias="X-API-Key", description="API key for write routes.")]


def require_writer(state: ServiceState, key: str | None) -> None:
    """Before a write: 403 on a read-only replica (naming the writer's role), then the API key."""
    if state.settings.read_only:
        raise ReadOnlyReplicaError()
    require_api_key(state, key)


def require_api_key(state: ServiceState, key: str | None) -> None:
    """401 without the configured key, 403 with another one (constant-time comparison); then 429 when the
    client is over its write rate limit."""
    expected = state.settings.api_key
    if expected is not None:
        _check_api_key(expected, key)
    charge_write()  # every write route passes here: count the write against its client's rate limit


def _check_api_key(expected: str, key: str | None) -> None:
    if not key:
        raise ApiKeyError("this route writes to the index and needs the X-API-Key header", missing=True)
    if not hmac.compare_digest(key.encode(), expected.encode()):
        raise ApiKeyError("the X-API-Key header is not the configured API key", missing=False)
