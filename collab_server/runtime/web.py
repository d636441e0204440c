"""The page at `/` (the editor) and `/console`, served from the esbuild bundle in `web/dist`.

Nothing is fetched from elsewhere at run time: the bundle holds Tiptap, Yjs and the provider. `make run`
and `make test` build it when it is missing or older than its sources; a checkout where it was never
built answers 503 with the command that builds it, instead of a blank page.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIST = Path(__file__).resolve().parents[2] / "web" / "dist"
# Scripts only from this origin (the bundle), no framing: a document's content can never run as code here.
# Inline style attributes are allowed (ProseMirror and the carets set them); images may come from anywhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src * data: blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _page(name: str) -> Route:
    async def serve(request: Request) -> Response:
        path = WEB_DIST / name
        if not path.is_file():
            return JSONResponse({"error": {"code": "web_not_built", "message": "the web page is not built: run "
                                           "`make web` (it needs Node.js and npm)"}}, status_code=503)
        return FileResponse(path, headers={"Cache-Control": "no-cache", **SECURITY_HEADERS})

    serve.__name__ = f"page_{name.split('.')[0]}"
    return Route("/" if name == "index.html" else f"/{name.split('.')[0]}", serve, methods=["GET", "HEAD"])


routes: list[BaseRoute] = [
    _page("index.html"),
    _page("console.html"),
    Mount("/static", StaticFiles(directory=WEB_DIST, check_dir=False), name="static"),
]
