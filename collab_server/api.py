"""HTTP API under /api: JSON in and out, errors always `{"error": {"code", "message"}}`."""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import AuthError
from .store import LOCAL_USER_ID, open_document_id

if TYPE_CHECKING:
    from .app import AppContext

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "unprocessable",
          429: "too_many_requests", 503: "unavailable"}


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(status, message)
        self.code = code or _CODES.get(status, "error")


async def error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = getattr(exc, "code", None) or _CODES.get(exc.status_code, "error")
    return JSONResponse({"error": {"code": code, "message": exc.detail}}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def request_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.query_params.get("token")


async def authorize_document(request: Request, raw_id: str, write: bool = False) -> tuple[UUID, UUID, str]:
    """(document id, user id, role) for the caller, or an ApiError. An outsider gets the
    same 404 for a document that exists as for one that does not."""
    ctx: AppContext = request.app.state.ctx
    if ctx.settings.auth == "off":
        return open_document_id(raw_id), LOCAL_USER_ID, "editor"
    try:
        document_id = UUID(raw_id)
    except ValueError:
        raise ApiError(404, "document not found") from None
    try:
        claims = await ctx.tokens.verify(request_token(request))
    except AuthError as exc:
        raise ApiError(401, str(exc)) from None
    user_id = await ctx.access.user_id(str(claims["sub"]))
    if user_id is None:
        raise ApiError(401, "unknown user")
    access = await ctx.access.document_access(user_id, document_id)
    if not access.allowed:
        raise ApiError(404, "document not found")
    if write and access.role not in {"owner", "admin", "editor"}:
        raise ApiError(403, "your role may not edit this document")
    return document_id, user_id, access.role


async def document_presence(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    document_id, _, _ = await authorize_document(request, request.path_params["document_id"])
    try:
        people = await ctx.presence.list(document_id)
    except Exception as exc:
        raise ApiError(503, f"presence unavailable: {exc.__class__.__name__}") from None
    return JSONResponse({"document_id": str(document_id), "presence": people})


routes = [
    Route("/api/documents/{document_id}/presence", document_presence, methods=["GET"]),
]
