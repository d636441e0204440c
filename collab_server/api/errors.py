"""Every error is JSON: `{"error": {"code", "message"}}` with its HTTP status, including Starlette's
own 404/405 and anything unexpected (500, or 503 when PostgreSQL is unreachable)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from collab_server.storage.db import UNAVAILABLE_ERRORS

log = logging.getLogger("collab.api")

CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "unprocessable",
    429: "too_many_requests", 500: "internal_error", 503: "unavailable",
}


class ApiError(HTTPException):
    def __init__(
        self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, message, headers=dict(headers) if headers else None)
        self.code = code or CODES.get(status, "error")


def error_body(status: int, message: str, code: str | None = None) -> dict[str, dict[str, str]]:
    return {"error": {"code": code or CODES.get(status, "error"), "message": message}}


async def error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = error_body(exc.status_code, str(exc.detail), getattr(exc, "code", None))
    headers = exc.headers
    if headers and "Allow" in headers:  # Starlette joins a set: the same order every time
        headers = {**headers, "Allow": ", ".join(sorted(m.strip() for m in headers["Allow"].split(",")))}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Last resort (Starlette re-raises afterwards, so the traceback is still logged). The server
    then drops the keep-alive connection, so the response says so (`Connection: close`)."""
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return JSONResponse(error_body(503, "the database is unavailable; retry shortly"), status_code=503,
                            headers={"Retry-After": "2", "Connection": "close"})
    return JSONResponse(error_body(500, "internal error"), status_code=500, headers={"Connection": "close"})


Handler = Callable[[Request, Exception], Awaitable[Response]]
exception_handlers: dict[type[Exception] | int, Handler] = {
    HTTPException: error_response,
    Exception: unexpected_error,
}
