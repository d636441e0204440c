"""HTTP API under /api: JSON in and out (binary for Yjs), the same tokens and roles as the WebSocket.

One module per concept; each declares its `endpoints`, from which both the Starlette routes and
the OpenAPI document (/api/openapi.json) are built.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from . import changes, comments, documents, presence, stats, sync, versions, workspaces
from .access import authorize_document
from .errors import ApiError, error_response, exception_handlers
from .openapi import Endpoint, openapi_endpoint
from .openapi import routes as _routes

try:
    VERSION = _version("collab-server")
except PackageNotFoundError:  # running from a checkout that is not installed
    VERSION = "0.0.0"

endpoints: list[Endpoint] = [
    *workspaces.endpoints,
    *documents.endpoints,
    *changes.endpoints,
    *sync.endpoints,
    *versions.endpoints,
    *comments.endpoints,
    *presence.endpoints,
    *stats.endpoints,
]
endpoints.append(openapi_endpoint(list(endpoints), VERSION))
routes = _routes(endpoints)

__all__ = [
    "ApiError", "Endpoint", "authorize_document", "endpoints", "error_response", "exception_handlers",
    "routes",
]
