"""Endpoints are declared once, with what the OpenAPI document needs, and become Starlette routes.

Because routes are generated from the same declarations the document is built from, a route
cannot exist without being described (a test checks it against the app's routing table).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import CODES
from .payload import PG_INT_MAX, JSONOut, Param, Schema

Handler = Callable[[Request], Awaitable[Response]]
Body = Schema | Literal["binary", "markdown"] | None
Produces = Literal["json", "binary", "markdown"]

_MEDIA = {"json": "application/json", "binary": "application/octet-stream", "markdown": "text/markdown"}
_PATH_PARAM = re.compile(r"{(\w+)(?::\w+)?}")
# Every path parameter is an id (a UUID) but the version number; anything else is a 404.
_PATH_SCHEMAS: dict[str, dict[str, Any]] = {"version_number": {"type": "integer", "minimum": 1, "maximum": PG_INT_MAX}}
_ID_SCHEMA = {"type": "string", "format": "uuid"}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: Body = None
    body_optional: bool = False
    query: tuple[Param, ...] = ()
    produces: Produces = "json"
    success: int = 200
    errors: tuple[int, ...] = ()
    public: bool = False  # no token needed

    def operation(self) -> dict[str, Any]:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": _PATH_SCHEMAS.get(name, _ID_SCHEMA)}
            for name in _PATH_PARAM.findall(self.path)
        ]
        params += [p.openapi() for p in self.query]
        op: dict[str, Any] = {
            "operationId": self.handler.__name__,
            "summary": self.summary,
            "tags": [self.tag],
            "parameters": params,
            "responses": self._responses(),
        }
        if self.public:
            op["security"] = []
        if self.body == "binary":
            op["requestBody"] = {"required": True, "content": {_MEDIA["binary"]: {"schema": {
                "type": "string", "format": "binary", "description": "a Yjs update (v1 encoding)"}}}}
        elif self.body == "markdown":
            op["requestBody"] = {"required": True, "content": {_MEDIA["markdown"]: {"schema": {
                "type": "string", "description": "CommonMark + GFM, UTF-8"}}}}
        elif isinstance(self.body, Schema):
            op["requestBody"] = {"required": not self.body_optional,
                                 "content": {"application/json": {"schema": self.body.openapi()}}}
        return op

    def _responses(self) -> dict[str, Any]:
        media = _MEDIA[self.produces]
        schema = {"type": "string", "format": "binary"} if self.produces == "binary" else (
            {"type": "string"} if self.produces == "markdown" else {"type": "object"})
        out: dict[str, Any] = {str(self.success): {"description": "success", "content": {media: {"schema": schema}}}}
        statuses = set(self.errors) | ({400, 500, 503} if self.public else {400, 401, 404, 500, 503})
        if self.body is not None:
            statuses |= {413, 415} | ({422} if isinstance(self.body, Schema) else set())
        for status in sorted(statuses):
            if status == 304:
                out["304"] = {"description": "not modified (If-None-Match matched the ETag)"}
                continue
            out[str(status)] = {"description": CODES[status].replace("_", " "), "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        return out


def routes(endpoints: Sequence[Endpoint]) -> list[Route]:
    """One route per path, whatever its methods: Starlette answers 405 with the Allow of the
    first route whose path matches, so the methods of a path must share one route. OPTIONS
    answers 204 with the same Allow."""
    by_path: dict[str, dict[str, Handler]] = {}
    for ep in endpoints:
        by_path.setdefault(ep.path, {})[ep.method] = ep.handler
    return [_route(path, handlers) for path, handlers in by_path.items()]


def _route(path: str, handlers: dict[str, Handler]) -> Route:
    methods = {*handlers, "OPTIONS", *(("HEAD",) if "GET" in handlers else ())}
    allow = ", ".join(sorted(methods))

    async def dispatch(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allow})
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    name = "_".join(h.__name__ for h in handlers.values())
    return Route(path, dispatch, methods=sorted(methods), name=name)


def document(endpoints: Sequence[Endpoint], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        openapi_path = _PATH_PARAM.sub(r"{\1}", ep.path)
        paths.setdefault(openapi_path, {})[ep.method.lower()] = ep.operation()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "collab-server HTTP API",
            "version": version,
            "description": "Documents, changes feed, binary Yjs sync, versions and comments. Same tokens and "
                           "roles as the WebSocket; errors are always {\"error\": {\"code\", \"message\"}}.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}}}},
            }},
        },
    }


def openapi_endpoint(endpoints: Sequence[Endpoint], version: str) -> Endpoint:
    """The document describing `endpoints` and itself, built once on first request."""
    built: list[dict[str, Any]] = []

    async def openapi_json(request: Request) -> Response:
        if not built:
            built.append(document([*endpoints, me], version))
        return JSONOut(built[0])

    me = Endpoint("GET", "/api/openapi.json", openapi_json, "This OpenAPI document", "meta", public=True)
    return me
