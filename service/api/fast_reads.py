"""The hot read routes' answers without FastAPI's per-request machinery.

``GET /v1/prefixes/{prefix}``, ``/v1/items/{item_id}`` and ``/v1/ids/{semantic_id}`` are what a fleet of
generative models calls most (prefix pages while decoding, items to map IDs back). Each request spent most of
its time in FastAPI's route matching, dependency solving and query parsing, not in the look-up (a cProfile of
one worker under wrk; the throughput with and without this path: benchmarks/results/serve_workers.md).

:class:`FastReadsMiddleware` answers the plain, successful case of these three routes itself, with the
routes' own bodies (``routes.lookups``: ``item_answer``, ``by_id_answer``, ``prefix_answer``) and response
models, so the bytes and headers are the routes'; anything else (another query parameter, a value out of
range, a look-up that raises, the index not loaded) passes through untouched to the app, which answers it
(errors included) as before. It sits inside the guard, metrics and rate-limit middlewares: they see every
request either way, and the metrics keep the route's template (``scope["route"]``) as their label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from semid.service.api.deps import catch_up
from semid.service.api.routes.lookups import by_id_answer, item_answer, prefix_answer
from semid.service.api.schemas import ItemPublic, PrefixPage
from semid.service.api.state import ServiceState
from semid.service.errors import SemidError
from semid.service.index.snapshot import MAX_PAGE_LIMIT

MAX_QUERY_BYTES = 256  # longer query strings (a cursor is 11 characters) take the app's path


def _prefix_page(state: ServiceState, prefix: str, query: dict[str, str]) -> dict | None:
    if not query.keys() <= {"limit", "cursor"}:
        return None
    limit = None
    if "limit" in query:  # the route's query bounds (1..MAX_PAGE_LIMIT); outside them the app answers 422
        text = query["limit"]
        if not (text.isascii() and text.isdigit() and len(text) <= 6):
            return None
        limit = int(text)
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            return None
    cursor = query.get("cursor")
    if cursor is not None and len(cursor) > 64:
        return None
    return prefix_answer(state, prefix, limit, cursor)


def _item(state: ServiceState, item_id: str, query: dict[str, str]) -> dict | None:
    return None if query else item_answer(state, item_id)


def _by_id(state: ServiceState, semantic_id: str, query: dict[str, str]) -> dict | None:
    return None if query else by_id_answer(state, semantic_id)


Answer = Callable[[ServiceState, str, dict[str, str]], "dict | None"]
# path prefix -> (the route's template, its answer, its response model); the one path parameter is the rest
ROUTES: dict[str, tuple[str, Answer, type[BaseModel]]] = {
    "/v1/prefixes/": ("/v1/prefixes/{prefix}", _prefix_page, PrefixPage),
    "/v1/items/": ("/v1/items/{item_id}", _item, ItemPublic),
    "/v1/ids/": ("/v1/ids/{semantic_id}", _by_id, ItemPublic),
}


class FastReadsMiddleware:
    """Answers the plain case of the hot read routes (module docstring); passes everything else on."""

    def __init__(self, app: ASGIApp, routes: list[Any]) -> None:
        self.app = app
        by_path = {r.path: r for r in routes if isinstance(r, APIRoute) and "GET" in r.methods}
        self.routes = {start: (by_path[path], answer, model) for start, (path, answer, model) in ROUTES.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = None
        if scope["type"] == "http" and scope["method"] == "GET":
            body = await self._answer(scope)
        if body is None:
            await self.app(scope, receive, send)
            return
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope) -> bytes | None:
        path: str = scope["path"]
        start = path[: path.find("/", 4) + 1]  # "/v1/prefixes/" of "/v1/prefixes/12-3"
        found = self.routes.get(start)
        param = path[len(start) :]
        raw_query: bytes = scope.get("query_string", b"")
        if found is None or not param or "/" in param or len(raw_query) > MAX_QUERY_BYTES or scope.get("root_path"):
            return None
        state = scope["app"].state.semid if "app" in scope else None
        if state is None:
            return None
        pairs = parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):  # a parameter given twice: the app decides which one counts
            return None
        route, answer, model = found
        await catch_up(state)
        try:
            content = answer(state, param, query)
            if content is None:
                return None
            body = model.model_validate(content).model_dump_json(by_alias=True).encode()
        except (SemidError, ValueError):  # the app answers it again, with its error body and status
            return None
        scope["route"] = route  # the metrics' label, as routing would set it
        return body
