"""Errors are JSON with the right status; malformed input on every kind of endpoint; OpenAPI."""

from __future__ import annotations

import base64
from typing import Any

import httpx
from starlette.routing import Route

from .conftest import World, error_of

OCTET = {"Content-Type": "application/octet-stream"}


async def test_openapi_describes_every_route(world: World) -> None:
    spec = (await world.api(None).get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.") and spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    routes = [r for r in world.server.app.routes if isinstance(r, Route) and r.path.startswith("/api/")]
    assert len(routes) >= 19  # one per path; 25 operations
    for route in routes:
        for method in route.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                assert method.lower() in spec["paths"].get(route.path, {}), f"{method} {route.path}"
    create = spec["paths"]["/api/workspaces/{workspace_id}/documents"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["required"] == ["title"]
    assert {"401", "404", "413", "415", "422"} <= set(create["responses"])
    updates = spec["paths"]["/api/documents/{document_id}/updates"]["post"]
    assert "application/octet-stream" in updates["requestBody"]["content"]


async def test_routing_errors_are_json(world: World) -> None:
    missing = await world.api().get("/api/nothing-here")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    wrong = await world.api().put(f"/api/documents/{world.doc()}")
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "method_not_allowed"
    for path in ("/api/documents/not-a-uuid", f"/api/documents/{world.doc()}/comments/not-a-uuid/resolve",
                 "/api/workspaces/not-a-uuid/changes"):
        method = "POST" if path.endswith("resolve") else "GET"
        response = await world.api().request(method, path)
        assert response.status_code == 404 and error_of(response)["code"] == "not_found", path


async def test_malformed_query_parameters(world: World) -> None:
    api, changes = world.api(), f"/api/workspaces/{world.ws}/changes"
    for params in ({"since": "abc"}, {"since": "12"}, {"since": "1.2.3"}, {"since": "-1.5"}):
        response = await api.get(changes, params=params)
        assert response.status_code == 400 and error_of(response)["code"] == "bad_cursor", params
    for params in ({"limit": "0"}, {"limit": "many"}, {"limit": "100000"}, {"wait": "-1"}, {"wait": "soon"},
                   {"wait": "nan"}):
        assert (await api.get(changes, params=params)).status_code == 400, params
    assert (await api.get(changes, params={"wait": "999", "since": "0"})).status_code == 200  # capped, not refused

    state = f"/api/documents/{world.doc()}/state"
    bad = await api.get(state, params={"sv": "***not base64***"})
    assert bad.status_code == 400 and "base64" in error_of(bad)["message"]
    not_a_vector = await api.get(state, params={"sv": base64.b64encode(b"\xff\xff\xff").decode()})
    assert not_a_vector.status_code == 400 and "state vector" in error_of(not_a_vector)["message"]
    assert (await api.get(f"/api/workspaces/{world.ws}/search")).status_code == 400
    assert (await api.get(f"/api/documents/{world.doc()}/versions", params={"before": "x"})).status_code == 400
    assert (await api.get(f"/api/documents/{world.doc()}/comments", params={"resolved": "maybe"})).status_code == 400


async def test_malformed_bodies(world: World) -> None:
    api = world.api()
    updates = f"/api/documents/{world.doc()}/updates"
    assert (await api.post(updates, content=b"\x00\x00", headers={"Content-Type": "text/plain"})).status_code == 415
    assert (await api.post(updates, json={"update": "AAA="})).status_code == 415
    assert (await api.post(updates, content=b"", headers=OCTET)).status_code == 400
    invalid = await api.post(updates, content=b"\x05\xff\xff\xff\xff", headers=OCTET)
    assert invalid.status_code == 400 and error_of(invalid)["code"] == "bad_request"

    create = f"/api/workspaces/{world.ws}/documents"
    plain = await api.post(create, content=b'{"title": "x"}', headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and error_of(plain)["code"] == "unsupported_media_type"
    not_json = await api.post(create, content=b'{"title": ', headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and "JSON" in error_of(not_json)["message"]
    for body, words in (({}, "title is required"), ({"title": 5}, "title must be a string"),
                        ({"title": "   "}, "may not be empty"), ({"title": "x", "owner": "me"}, "unknown field"),
                        ({"title": "x", "type": "spreadsheet"}, "must be one of"), ({"title": "x" * 501}, "longer"),
                        ([1, 2], "JSON object"), ({"title": "x", "metadata": []}, "metadata must be an object")):
        response = await api.post(create, json=body)
        assert response.status_code == 422 and words in error_of(response)["message"], (body, response.text)
        assert error_of(response)["code"] == "unprocessable"
    assert (await api.patch(f"/api/documents/{world.doc()}", json={})).status_code == 422

    comments = f"/api/documents/{world.doc()}/comments"
    for body in ({"content": ""}, {"content": "hi", "mentions": ["someone"]}, {"content": "hi", "position": "top"},
                 {"content": True}):
        assert (await world.api("commenter").post(comments, json=body)).status_code == 422, body
    thread = (await world.api("commenter").post(comments, json={"content": "hi"})).json()["id"]
    for method, path, body in (("PATCH", f"{comments}/{thread}", {}), ("PATCH", f"{comments}/{thread}", {"content": 1}),
                               ("POST", f"{comments}/{thread}/replies", {"content": " "}),
                               ("PATCH", f"/api/documents/{world.doc()}", {"title": ""}),
                               ("PATCH", f"/api/documents/{world.doc()}", {"settings": "dark"})):
        response = await world.api("commenter" if "comments" in path else "editor").request(method, path, json=body)
        assert response.status_code == 422, (path, body, response.text)
    versions = f"/api/documents/{world.doc()}/versions"
    assert (await api.post(versions, json={"change_description": 5})).status_code == 422
    assert (await api.post(versions, content=b"x", headers={"Content-Type": "text/plain"})).status_code == 415


async def test_oversized_bodies_get_413(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(max_message_bytes=4096)  # open mode
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as api:
        big = await api.post("/api/documents/big/updates", content=b"\x00" * 5000, headers=OCTET)
        assert big.status_code == 413 and error_of(big)["code"] == "payload_too_large"

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(5):
                yield b"\x00" * 1000

        streamed = await api.post("/api/documents/big/updates", content=chunks(), headers=OCTET)  # no length
        assert streamed.status_code == 413
        local = (await api.get("/api/workspaces")).json()["workspaces"][0]["id"]
        doc = await api.post(f"/api/workspaces/{local}/documents", json={"title": "x", "content": "y" * 5000})
        assert doc.status_code == 413


async def test_nul_anywhere_in_a_request_is_stored_as_the_replacement_character(world: World) -> None:
    """PostgreSQL's text and jsonb refuse NUL; the API replaces it with U+FFFD at the boundary
    (as `content` does for what editors type), never a 500."""
    api, doc = world.api(), world.doc()
    search = await api.get(f"/api/workspaces/{world.ws}/search", params={"q": "a\x00b"})
    assert search.status_code == 200, search.text
    changes = await api.get(f"/api/workspaces/{world.ws}/changes", params={"since": "\x00"})
    assert changes.status_code == 400 and error_of(changes)["code"] == "bad_cursor"
    assert (await api.get(f"/api/documents/{doc}/state", params={"sv": "\x00"})).status_code == 400
    created = await api.post(f"/api/workspaces/{world.ws}/documents", json={
        "title": "T\x00itle", "content": "body\x00 text\n", "metadata": {"k\x00": ["v\x00"]}, "settings": {"s": "\x00"},
    })
    assert created.status_code == 201, created.text
    new = created.json()["id"]
    got = (await api.get(f"/api/documents/{new}")).json()
    assert got["title"] == "T\ufffditle" and got["metadata"] == {"k\ufffd": ["v\ufffd"]}
    patched = await api.patch(f"/api/documents/{new}", json={"title": "\x00", "metadata": {"x": "\x00"}})
    assert patched.status_code == 200, patched.text
    put = await api.put(f"/api/documents/{new}/content", content=b"put\x00 this\n",
                        headers={"Content-Type": "text/markdown"})
    assert put.status_code == 200, put.text
    assert (await api.get(f"/api/documents/{new}/content")).text.strip() == "put\ufffd this"
    comment = await api.post(f"/api/documents/{doc}/comments",
                             json={"content": "c\x00", "anchor_text": "\x00", "position": {"\x00": 1}})
    assert comment.status_code == 201, comment.text
    assert comment.json()["content"] == "c\ufffd"
    version = await api.post(f"/api/documents/{doc}/versions", json={"change_description": "v\x00"})
    assert version.status_code == 201, version.text
    assert version.json()["change_description"] == "v\ufffd"


async def test_an_unexpected_error_closes_the_keep_alive_connection(world: World) -> None:
    """After a 500 the server says so with `Connection: close` rather than dropping the socket."""
    from collab_server.api.errors import unexpected_error

    response = await unexpected_error(None, RuntimeError("boom"))  # type: ignore[arg-type]
    assert response.status_code == 500 and response.headers["connection"] == "close"


async def test_out_of_range_and_empty_parameters_are_400_and_described(world: World) -> None:
    """What schemathesis found: an integer past PostgreSQL's `int` (500 before), an empty number,
    a position past 64 bits; and the OpenAPI document now says so (formats, bounds, required)."""
    api, doc = world.api(), world.doc()
    versions = await api.get(f"/api/documents/{doc}/versions", params={"before": "2948462140"})
    assert versions.status_code == 400 and "at most" in error_of(versions)["message"]
    changes = f"/api/workspaces/{world.ws}/changes"
    assert (await api.get(changes, params={"wait": ""})).status_code == 400
    for since in ("99999999999999999999.1", "1.99999999999999999999"):
        response = await api.get(changes, params={"since": since})
        assert response.status_code == 400 and error_of(response)["code"] == "bad_cursor", since
    assert (await api.get(f"/api/documents/{doc}/versions/99999999999")).status_code == 404

    spec = (await world.api(None).get("/api/openapi.json")).json()["paths"]

    def param(path: str, name: str, method: str = "get") -> dict[str, Any]:
        return next(p for p in spec[path][method]["parameters"] if p["name"] == name)

    assert param("/api/documents/{document_id}", "document_id")["schema"] == {"type": "string", "format": "uuid"}
    number = param("/api/documents/{document_id}/versions/{version_number}", "version_number")["schema"]
    assert number == {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
    q = param("/api/workspaces/{workspace_id}/search", "q")
    assert q["required"] is True and q["schema"]["maxLength"] == 200
    assert param("/api/documents/{document_id}/versions", "before")["schema"]["maximum"] == 2**31 - 1
    assert "pattern" in param("/api/workspaces/{workspace_id}/changes", "since")["schema"]
    assert param("/api/documents/{document_id}/state", "sv")["schema"]["contentEncoding"] == "base64"


async def test_options_and_405_name_every_method_of_the_path(world: World) -> None:
    path = f"/api/documents/{world.doc()}"
    options = await world.api(None).options(path)
    assert options.status_code == 204 and options.headers["allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH"
    wrong = await world.api().put(path)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH"
    assert error_of(wrong)["code"] == "method_not_allowed"
    comments = await world.api().delete(f"/api/documents/{world.doc()}/comments")
    assert comments.status_code == 405 and comments.headers["allow"] == "GET, HEAD, OPTIONS, POST"
