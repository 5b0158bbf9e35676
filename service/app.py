"""The FastAPI application: lifespan-built state, error mapping, middleware, routes under /v1."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.arrow_body import BodyTooLargeError
from service.bodies import default_body_limit
from service.docs import add_offline_docs
from service.encoder import EmbeddingError
from service.errors import (
    CorruptIndexError,
    DuplicateSemanticIdError,
    FingerprintMismatchError,
    IndexFullError,
    IndexLockedError,
    IndexWriteError,
    InvalidInputError,
    SemidError,
    UnknownItemError,
    UnknownSemanticIdError,
)
from service.http_guard import BodyGuardMiddleware
from service.observability import MetricsMiddleware, ServiceMetrics
from service.routes import ApiKeyError, BatchTooLargeError, NotReadyError, router
from service.settings import ServiceSettings
from service.state import ServiceState

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[Exception], int]] = [
    (UnknownItemError, 404),
    (UnknownSemanticIdError, 404),
    (DuplicateSemanticIdError, 409),
    (IndexFullError, 409),
    (FingerprintMismatchError, 409),
    (BodyTooLargeError, 413),
    (IndexWriteError, 503),
    (IndexLockedError, 503),
    (CorruptIndexError, 503),
    (InvalidInputError, 422),
]


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body: dict = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status)


def _code_of(err: Exception) -> str:
    return getattr(err, "code", None) or type(err).__name__


# 5xx bodies say what happened, not where: paths and process ids stay in the server log
_PUBLIC_MESSAGE: list[tuple[type[Exception], str]] = [
    (IndexLockedError, "the index is being written by another process; retry later"),
    (CorruptIndexError, "the index cannot be read; the server log names the problem"),
    (IndexWriteError, "the index could not be written (nothing was stored); the server log names the problem"),
]


async def _semid_error(request: Request, err: Exception) -> JSONResponse:
    status = next((s for kind, s in _STATUS if isinstance(err, kind)), 422)
    if isinstance(err, IndexWriteError) and err.insufficient_storage:
        status = 507
    message = next((m for kind, m in _PUBLIC_MESSAGE if isinstance(err, kind)), None)
    if message is None:
        return error_response(status, _code_of(err), str(err), getattr(err, "field", None))
    log.warning("%s on %s %s: %s", _code_of(err), request.method, request.url.path, err)
    response = error_response(status, _code_of(err), message)
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


async def _embedding_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, EmbeddingError)
    return error_response(422, "invalid_embedding", str(err), err.field)


async def _validation_error(request: Request, err: Exception) -> JSONResponse:
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


async def _http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return error_response(err.status_code, code, str(err.detail))


async def _api_key_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, ApiKeyError)
    return error_response(err.status, err.code, str(err), "X-API-Key")


async def _too_large(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, BatchTooLargeError)
    return error_response(413, "batch_too_large", str(err), err.field)


async def _not_ready(request: Request, err: Exception) -> JSONResponse:
    return error_response(503, "not_ready", str(err))


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; see the server log")


def create_app(settings: ServiceSettings | None = None, *, state: ServiceState | None = None) -> FastAPI:
    """Build the app; the index and checkpoint load in the lifespan unless a state is given (tests)."""
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "semid", None) is None:
            app.state.semid = ServiceState.load(settings)
        yield

    app = FastAPI(
        title="semid",
        version="0.2.0",
        summary="Semantic IDs for generative recommenders: encode, assign, look up by ID prefix.",
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would echo the client's Host header into Location
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)
    app.state.semid = state
    app.state.metrics = metrics
    app.state.settings = settings
    app.include_router(router)

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        current = request.app.state.semid
        if current is not None:
            metrics.items.set(len(current.index))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    for kind, handler in [
        (EmbeddingError, _embedding_error),
        (SemidError, _semid_error),
        (RequestValidationError, _validation_error),
        (StarletteHTTPException, _http_error),
        (ApiKeyError, _api_key_error),
        (BatchTooLargeError, _too_large),
        (NotReadyError, _not_ready),
        (Exception, _unexpected),
    ]:
        app.add_exception_handler(kind, handler)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def body_limit() -> int:
        if settings.max_body_bytes is not None:
            return settings.max_body_bytes
        current = app.state.semid
        dim = current.encoder.input_dim if current is not None else 4096
        return default_body_limit(settings.max_batch, dim)

    app.add_middleware(
        BodyGuardMiddleware,
        max_bytes=body_limit,
        idle_timeout=settings.body_idle_timeout,
        total_timeout=settings.body_timeout,
    )
    return app
