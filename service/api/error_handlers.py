"""Errors as HTTP responses: one handler for every semid error, plus the framework's own.

Every error body is ``{"error": {"code", "message", "field"?}}``. A :class:`SemidError` carries its
status, code and field; 5xx errors answer with their ``public_message`` (paths and process ids
go to the server log only) and ``Retry-After: 1`` when the condition is transient (503).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from semid.service.errors import RateLimitedError, SemidError

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body: dict = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status)


async def semid_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, SemidError)
    if err.public_message is None:
        response = error_response(err.status, err.code, str(err), err.field)
        if isinstance(err, RateLimitedError):
            response.headers["Retry-After"] = str(err.retry_after)
        return response
    log.warning("%s on %s %s: %s", err.code, request.method, request.url.path, err)
    response = error_response(err.status, err.code, err.public_message)
    if err.status == 503:
        response.headers["Retry-After"] = "1"
    return response


async def validation_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    errors = err.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    field = "body" if first.get("type") == "json_invalid" else ".".join(loc) or "body"
    message = f"{field}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return error_response(422, "invalid_request", message, field)


async def http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return error_response(err.status_code, code, str(err.detail))


async def unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; see the server log")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SemidError, semid_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
