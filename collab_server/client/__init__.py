"""Client side, in Python: a y-websocket client (`YClient`) and the HTTP API with offline sync
(`ApiClient`, `OfflineSync`), for desktop apps, scripts and tests. Uses only the core's
protocol and the content model, never the server."""

from .offline import ApiClient, ApiClientError, OfflineSync
from .websocket import YClient

__all__ = ["ApiClient", "ApiClientError", "OfflineSync", "YClient"]
