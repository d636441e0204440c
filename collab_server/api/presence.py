"""Who is in a document right now (live presence from Redis)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .access import authorize_document, context
from .errors import ApiError
from .openapi import Endpoint
from .payload import JSONOut


async def document_presence(request: Request) -> Response:
    # Open mode lists any room name, opened or not (an empty list is the honest answer).
    access = await authorize_document(request, lookup=False)
    try:
        people = await context(request).presence.list(access.document_id)
    except Exception as exc:
        raise ApiError(503, f"presence unavailable: {exc.__class__.__name__}") from None
    return JSONOut({"document_id": access.document_id, "presence": people})


endpoints = [
    Endpoint("GET", "/api/documents/{document_id}/presence", document_presence, "Who is connected", "presence"),
]
