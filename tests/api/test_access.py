"""Every route's access control, derived from the OpenAPI document so that a new route cannot
be added without being classified here: 401 without a valid token, the same 404 for outsiders
whether or not the thing exists, 403 for roles that may not do it."""

from __future__ import annotations

import uuid

import httpx
import jwt

from tests.test_auth import SECRET

from .conftest import World, error_of

# (method, path) -> who may: public | self (any authenticated user) | manage (an owner or admin of some
# workspace) | read | comment | write
NEEDS = {
    ("GET", "/api/openapi.json"): "public",
    ("GET", "/api/workspaces"): "self",
    ("GET", "/api/me"): "self",
    ("GET", "/api/stats"): "manage",
    ("GET", "/api/workspaces/{workspace_id}/documents"): "read",
    ("POST", "/api/workspaces/{workspace_id}/documents"): "write",
    ("GET", "/api/workspaces/{workspace_id}/search"): "read",
    ("GET", "/api/workspaces/{workspace_id}/changes"): "read",
    ("GET", "/api/documents/{document_id}"): "read",
    ("PATCH", "/api/documents/{document_id}"): "write",
    ("DELETE", "/api/documents/{document_id}"): "write",
    ("GET", "/api/documents/{document_id}/state"): "read",
    ("GET", "/api/documents/{document_id}/state-vector"): "read",
    ("POST", "/api/documents/{document_id}/updates"): "write",
    ("GET", "/api/documents/{document_id}/content"): "read",
    ("PUT", "/api/documents/{document_id}/content"): "write",
    ("GET", "/api/documents/{document_id}/presence"): "read",
    ("GET", "/api/documents/{document_id}/versions"): "read",
    ("POST", "/api/documents/{document_id}/versions"): "write",
    ("GET", "/api/documents/{document_id}/versions/{version_number}"): "read",
    ("POST", "/api/documents/{document_id}/versions/{version_number}/restore"): "write",
    ("GET", "/api/documents/{document_id}/comments"): "read",
    ("POST", "/api/documents/{document_id}/comments"): "comment",
    ("POST", "/api/documents/{document_id}/comments/{comment_id}/replies"): "comment",
    ("PATCH", "/api/documents/{document_id}/comments/{comment_id}"): "comment",
    ("POST", "/api/documents/{document_id}/comments/{comment_id}/resolve"): "comment",
    ("POST", "/api/documents/{document_id}/comments/{comment_id}/reopen"): "comment",
    ("DELETE", "/api/documents/{document_id}/comments/{comment_id}"): "comment",
}


async def test_every_route_is_classified_and_guarded(world: World) -> None:
    spec = (await world.api(None).get("/api/openapi.json")).json()
    operations = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert operations == set(NEEDS)

    comment = (await world.api("commenter").post(f"/api/documents/{world.doc()}/comments",
                                                 json={"content": "hello"})).json()
    version = (await world.api().post(f"/api/documents/{world.doc()}/versions")).json()
    ids = {"workspace_id": world.ws, "document_id": world.doc(), "comment_id": comment["id"],
           "version_number": str(version["version_number"])}
    elsewhere = {**ids, "workspace_id": str(uuid.uuid4()), "document_id": str(uuid.uuid4())}
    forged = jwt.encode({"sub": str(world.demo.users["editor"]), "exp": 2**31}, "x" * 32, algorithm="HS256")

    for (method, template), need in sorted(NEEDS.items()):
        await check_route(world, method, template, need, ids, elsewhere, forged)


async def check_route(
    world: World, method: str, template: str, need: str, ids: dict[str, str], elsewhere: dict[str, str],
    forged: str,
) -> None:
    path, label = template.format(**ids), f"{method} {template}"
    params = {"q": "welcome"} if template.endswith("/search") else None

    async def call(role: str | None, target: str = path, headers: dict[str, str] | None = None) -> httpx.Response:
        return await world.api(role).request(method, target, headers=headers, params=params)

    if need == "public":
        assert (await call(None)).status_code == 200, label
        return
    for response in (await call(None), await call(None, headers={"Authorization": f"Bearer {forged}"})):
        assert response.status_code == 401, label
        assert error_of(response)["code"] == "unauthorized"
    if need == "self":
        mine = (await call("outsider")).json()
        assert mine in ({"workspaces": []}, {"user_id": str(world.demo.users["outsider"]),
                                             "email": "outsider@demo.collab.dev", "name": "Demo Outsider"}), label
        return
    if need == "manage":
        for role in ("outsider", "viewer", "commenter", "editor"):
            response = await call(role)
            assert response.status_code == 403 and error_of(response)["code"] == "forbidden", f"{label} as {role}"
        assert (await call("admin")).status_code == 200, label
        return
    # Outsiders cannot tell an existing workspace/document from a missing one.
    hidden, missing = await call("outsider"), await call("editor", template.format(**elsewhere))
    assert hidden.status_code == missing.status_code == 404, label
    assert error_of(hidden) == error_of(missing), label
    for role in {"comment": ["viewer"], "write": ["viewer", "commenter"]}.get(need, []):
        response = await call(role)
        assert response.status_code == 403, f"{label} as {role}: {response.text}"
        assert error_of(response)["code"] == "forbidden"
    if method == "GET":
        for role in ("viewer", "commenter", "editor"):
            assert (await call(role)).status_code == 200, f"{label} as {role}"


async def test_access_follows_membership_changes(world: World, db) -> None:  # type: ignore[no-untyped-def]
    path = f"/api/documents/{world.doc()}/content"
    assert (await world.api("viewer").get(path)).status_code == 200
    await db.execute("UPDATE workspace_members SET is_active = false WHERE user_id = $1", world.demo.users["viewer"])
    assert (await world.api("viewer").get(path)).status_code == 404
    expired = jwt.encode({"sub": str(world.demo.users["editor"]), "exp": 1}, SECRET, algorithm="HS256")
    response = await world.api(None).get(path, headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401 and error_of(response)["message"] == "token expired"
    assert response.headers["www-authenticate"] == "Bearer"
    # The token may also travel as a query parameter, as on the WebSocket.
    assert (await world.api(None).get(path, params={"token": world.demo.tokens["editor"]})).status_code == 200
