"""The FastAPI application: lifespan-built state, error mapping, middleware, routes under /v1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from semid.service import __version__
from semid.service.api.docs import add_offline_docs
from semid.service.api.error_handlers import add_error_handlers
from semid.service.api.fast_reads import FastReadsMiddleware
from semid.service.api.http_guard import BodyGuardMiddleware
from semid.service.api.limits import default_body_limit
from semid.service.api.observability import MetricsMiddleware, ServiceMetrics
from semid.service.api.ratelimit import RateLimitMiddleware, RateLimits
from semid.service.api.routes import lookups, router
from semid.service.api.settings import ServiceSettings
from semid.service.api.state import ServiceState


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
        version=__version__,
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

    # the web explorer: static files shipped in the package (ui/), read-only, no network fetch
    @app.get("/ui", include_in_schema=False)
    def explorer() -> RedirectResponse:
        return RedirectResponse("ui/")  # relative: never echoes the client's Host header

    app.mount("/ui", StaticFiles(directory=Path(__file__).parent / "ui", html=True), name="ui")

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        current = request.app.state.semid
        if current is not None:
            metrics.items.set(len(current.index))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    add_error_handlers(app)
    # innermost: the guard, the metrics and the rate limit see every request the fast path answers
    if settings.fast_reads:
        app.add_middleware(FastReadsMiddleware, routes=lookups.router.routes)
    app.add_middleware(RateLimitMiddleware, limits=RateLimits(settings))
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
