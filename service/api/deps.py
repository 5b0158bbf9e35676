"""Request dependencies: the loaded service state and the API key of write routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from semid.service.api.ratelimit import charge_write
from semid.service.api.state import ServiceState
from semid.service.errors import ApiKeyError, NotReadyError


async def get_state(request: Request) -> ServiceState:
    state = request.app.state.semid
    if state is None:
        raise NotReadyError("the index is not loaded yet")
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
ApiKeyHeader = Annotated[str | None, Header(alias="X-API-Key", description="API key for write routes.")]


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
