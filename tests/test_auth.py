"""Access control on live connections: tokens, roles, refusal before any byte, revocation, RLS."""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pycrdt import Doc, Text

from collab_server.access.auth import AccessResolver, as_user
from collab_server.client import YClient
from collab_server.core.protocol import encode_sync_step1
from collab_server.runtime.demo import create_demo
from collab_server.storage.postgres import open_document_id
from tests.waiting import eventually

SECRET = "test-secret-test-secret-test-secret"


async def setup_demo(db, server):  # type: ignore[no-untyped-def]
    demo = await create_demo(db, server.ctx.tokens)
    commenter = uuid.uuid4()
    await db.execute(
        "INSERT INTO users (id, cognito_sub, email) VALUES ($1, $2, $3)",
        commenter, f"c-{commenter}", f"{commenter}@x.io",
    )
    await db.execute(
        "INSERT INTO workspace_members (workspace_id, user_id, role) VALUES ($1, $2, 'commenter')",
        demo.workspace, commenter,
    )
    demo.tokens["commenter"] = server.ctx.tokens.mint(str(commenter))
    demo.users["commenter"] = commenter
    return demo


def url(server, demo, role: str, doc: int = 0) -> str:  # type: ignore[no-untyped-def]
    return f"{server.ws_base}/{demo.documents[doc]}?token={demo.tokens[role]}"


@pytest.fixture
async def auth_server(make_server):  # type: ignore[no-untyped-def]
    return await make_server(auth="on", jwt_secret=SECRET)


async def text_of(client: YClient) -> str:
    return str(client.doc.get("content", type=Text))


async def test_editor_writes_readers_read_live_but_cannot_write(auth_server, db) -> None:
    demo = await setup_demo(db, auth_server)
    editor = await YClient(url(auth_server, demo, "editor")).connect()
    viewer = await YClient(url(auth_server, demo, "viewer")).connect()
    commenter = await YClient(url(auth_server, demo, "commenter")).connect()
    editor.doc.get("content", type=Text).insert(0, "from the editor")
    for reader in (viewer, commenter):
        await reader.wait_for(lambda r=reader: str(r.doc.get("content", type=Text)) == "from the editor")
    viewer.doc.get("content", type=Text).insert(0, "VIEWER ")
    commenter.doc.get("content", type=Text).insert(0, "COMMENTER ")
    await viewer.wait_for(lambda: viewer.permission_denied is not None)
    await commenter.wait_for(lambda: commenter.permission_denied is not None)
    editor.doc.get("content", type=Text).insert(15, "!")
    await viewer.wait_for(lambda: "!" in str(viewer.doc.get("content", type=Text)))
    # The denials came after the server handled the edits (in order, per connection): the room
    # never took them, so there is nothing left in flight that could reach the editor.
    room = auth_server.ctx.hub.get(demo.documents[0])
    assert str(room.doc.get("content", type=Text)) == "from the editor!"
    assert await text_of(editor) == "from the editor!"
    # After a reconnect the viewer's client sends its step 2 again: still never applied.
    await viewer.close()
    again = YClient(url(auth_server, demo, "viewer"), doc=viewer.doc)
    await again.connect()
    await again.wait_for(lambda: again.permission_denied is not None)
    assert str(room.doc.get("content", type=Text)) == "from the editor!"
    # A newcomer's step 2 is the room's whole state: still without the viewer's edits.
    newcomer = await YClient(url(auth_server, demo, "editor")).connect()
    assert await text_of(newcomer) == await text_of(editor) == "from the editor!"
    await newcomer.close()
    for c in (editor, commenter, again):
        await c.close()


async def expect_refusal(target: str, status: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    with pytest.raises(websockets.InvalidStatus) as err:
        async with websockets.connect(target, additional_headers=headers or {}, open_timeout=5):
            pass
    response = err.value.response
    assert response.status_code == status
    return json.loads(response.body)  # type: ignore[no-any-return]


async def test_refusals_happen_before_any_byte(auth_server, db) -> None:
    demo = await setup_demo(db, auth_server)
    doc = demo.documents[0]
    base = f"{auth_server.ws_base}/{doc}"
    body = await expect_refusal(url(auth_server, demo, "outsider"), 403)
    assert body == {"error": {"code": "forbidden", "message": "no access to this document"}}
    assert (await expect_refusal(base, 401))["error"]["message"] == "missing token"
    forged = jwt.encode({"sub": str(demo.users["editor"]), "exp": time.time() + 60}, "x" * 32, algorithm="HS256")
    assert "invalid token" in (await expect_refusal(f"{base}?token={forged}", 401))["error"]["message"]
    expired = jwt.encode({"sub": str(demo.users["editor"]), "exp": time.time() - 60}, SECRET, algorithm="HS256")
    assert (await expect_refusal(f"{base}?token={expired}", 401))["error"]["message"] == "token expired"
    none_alg = jwt.encode({"sub": str(demo.users["editor"]), "exp": time.time() + 60}, None, algorithm="none")
    assert "not accepted" in (await expect_refusal(f"{base}?token={none_alg}", 401))["error"]["message"]
    ghost = auth_server.ctx.tokens.mint(str(uuid.uuid4()))
    assert (await expect_refusal(f"{base}?token={ghost}", 401))["error"]["message"] == "unknown user"
    # The header form works as well as the query parameter.
    await expect_refusal(base, 403, {"Authorization": f"Bearer {demo.tokens['outsider']}"})
    async with websockets.connect(base, additional_headers={"Authorization": f"Bearer {demo.tokens['viewer']}"}):
        pass
    # A document id that is not a UUID: refused before the upgrade, token or not.
    for query in (f"?token={demo.tokens['editor']}", ""):
        body = await expect_refusal(f"{auth_server.ws_base}/not-a-uuid{query}", 400)
        assert body["error"]["code"] == "bad_document_id"


async def test_outsider_raw_socket_asking_for_everything_gets_nothing(auth_server, db) -> None:
    demo = await setup_demo(db, auth_server)
    writer = await YClient(url(auth_server, demo, "editor")).connect()
    writer.doc.get("content", type=Text).insert(0, "secret plans")
    await asyncio.sleep(0.1)
    with pytest.raises(websockets.InvalidStatus) as err:
        async with websockets.connect(url(auth_server, demo, "outsider")) as ws:
            await ws.send(encode_sync_step1(b"\x00"))
    assert b"secret" not in err.value.response.body
    await writer.close()


async def test_revocation_and_downgrade_reach_open_connections(auth_server, db) -> None:
    demo = await setup_demo(db, auth_server)
    await asyncio.wait_for(auth_server.ctx.revocation.listening.wait(), 5)
    editor = await YClient(url(auth_server, demo, "editor")).connect()
    viewer = await YClient(url(auth_server, demo, "viewer")).connect()
    await db.execute(
        "UPDATE workspace_members SET role = 'viewer' WHERE user_id = $1", demo.users["editor"]
    )
    room = auth_server.ctx.hub.get(demo.documents[0])
    started = time.monotonic()
    await editor.wait_for(lambda: all(c.info.role == "viewer" for c in room.connections), timeout=5)
    editor.doc.get("content", type=Text).insert(0, "after downgrade")
    await editor.wait_for(lambda: editor.permission_denied is not None, timeout=3)
    assert str(room.doc.get("content", type=Text)) == ""
    await db.execute("DELETE FROM workspace_members WHERE user_id = $1", demo.users["viewer"])
    await asyncio.wait_for(viewer.closed.wait(), 5)
    assert viewer.close_code == 4403
    assert time.monotonic() - started < 5
    assert not editor.closed.is_set()
    await editor.close()


async def test_a_reconnect_needs_no_database_round_trip_until_access_changes(auth_server, db) -> None:
    demo = await setup_demo(db, auth_server)
    await asyncio.wait_for(auth_server.ctx.revocation.listening.wait(), 5)
    access = auth_server.ctx.access
    first = await YClient(url(auth_server, demo, "editor")).connect()
    await first.close()
    before = access.lookups
    again = await YClient(url(auth_server, demo, "editor")).connect()  # same user, same document
    assert access.lookups == before
    await again.close()
    # Removing the member notifies every process; the cached answer is gone with it.
    await db.execute("DELETE FROM workspace_members WHERE user_id = $1", demo.users["editor"])
    body = await eventually(lambda: _refusal_or_none(url(auth_server, demo, "editor")), lambda b: b is not None,
                            what="the removed member refused")
    assert body["error"]["code"] == "forbidden"


async def _refusal_or_none(target: str) -> dict[str, Any] | None:
    try:
        async with websockets.connect(target, open_timeout=5):
            return None
    except websockets.InvalidStatus as exc:
        return json.loads(exc.response.body)  # type: ignore[no-any-return]


async def test_row_level_security_hides_documents_from_non_members(auth_server, db) -> None:
    demo = await setup_demo(db, auth_server)
    resolver = AccessResolver(auth_server.ctx.pool)
    assert (await resolver.document_access(demo.users["editor"], demo.documents[0])).allowed
    outsider = await resolver.document_access(demo.users["outsider"], demo.documents[0])
    assert not outsider.visible and not outsider.allowed
    async with auth_server.ctx.pool.acquire() as conn, conn.transaction():
        await as_user(conn, demo.users["outsider"])
        assert await conn.fetchval("SELECT count(*) FROM documents") == 0
        assert await conn.fetchval("SELECT current_user") == "collab_user"


async def test_message_rate_limit(make_server, db) -> None:
    server = await make_server(rate_messages_per_second=20)
    client = await YClient(server.ws_url("busy")).connect()
    text = client.doc.get("content", type=Text)
    for i in range(200):
        text.insert(0, str(i))
        await asyncio.sleep(0)
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 4429 and client.close_reason == "message rate limit exceeded"


async def test_connection_rate_limit_per_address(make_server) -> None:
    server = await make_server(rate_connections_per_minute=3, rate_connections_burst=3)
    for _ in range(3):
        async with websockets.connect(server.ws_url("r")):
            pass
    body = await expect_refusal(server.ws_url("r"), 429)
    assert body["error"]["code"] == "too_many_requests"


async def test_a_trusted_proxy_passes_the_client_address_an_untrusted_one_does_not(make_server) -> None:
    """Behind a trusted proxy each client has its own budget; X-Forwarded-For from anyone else is
    ignored (it would let a client pick a fresh address for every connection)."""
    trusted = await make_server(rate_connections_per_minute=1, rate_connections_burst=1)  # trusts loopback
    alice, bob = {"X-Forwarded-For": "203.0.113.5"}, {"X-Forwarded-For": "198.51.100.7, 127.0.0.1"}
    async with websockets.connect(trusted.ws_url("p"), additional_headers=alice):
        pass
    assert (await expect_refusal(trusted.ws_url("p"), 429, alice))["error"]["code"] == "too_many_requests"
    async with websockets.connect(trusted.ws_url("p"), additional_headers=bob):  # its own budget
        room = trusted.ctx.hub.get(open_document_id("p"))
        assert room is not None and {c.info.address for c in room.connections} == {"198.51.100.7"}
    untrusting = await make_server(rate_connections_per_minute=1, rate_connections_burst=1, trusted_proxies=())
    async with websockets.connect(untrusting.ws_url("p"), additional_headers=alice):
        pass
    await expect_refusal(untrusting.ws_url("p"), 429, bob)  # the header is not believed: same address


async def test_a_burst_lets_a_reconnect_storm_through(make_server) -> None:
    server = await make_server(rate_connections_per_minute=1, rate_connections_burst=40)
    clients = [await YClient(server.ws_url("storm")).connect() for _ in range(40)]
    await expect_refusal(server.ws_url("storm"), 429)
    for c in clients:
        await c.close()


async def test_refused_upgrades_log_one_info_line_each_and_no_error(auth_server, db, caplog) -> None:
    demo = await setup_demo(db, auth_server)
    caplog.set_level(logging.DEBUG)
    doc = demo.documents[0]
    refusals = [
        (f"{auth_server.ws_base}/not-a-uuid", 400),
        (f"{auth_server.ws_base}/{doc}", 401),
        (f"{auth_server.ws_base}/{doc}?token={demo.tokens['outsider']}", 403),
        (f"ws://127.0.0.1:{auth_server.port}/elsewhere", 404),
    ]
    for target, status in refusals:
        await expect_refusal(target, status)
    refused = [r for r in caplog.records if r.getMessage() == "upgrade refused"]
    assert [getattr(r, "status", None) for r in refused] == [status for _, status in refusals]
    assert all(r.levelno == logging.INFO for r in refused)
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, loud
    assert demo.tokens["outsider"] not in "".join(str(getattr(r, "path", "")) for r in refused)


async def test_tokens_never_reach_the_logs(auth_server, db, caplog) -> None:
    demo = await setup_demo(db, auth_server)
    caplog.set_level("DEBUG")
    from collab_server.runtime.logs import JsonFormatter

    client = await YClient(url(auth_server, demo, "editor")).connect()
    await client.close()
    await asyncio.sleep(0.1)
    formatted = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert demo.tokens["editor"] not in formatted


class _JwksHandler(BaseHTTPRequestHandler):
    keys: ClassVar[dict[str, Any]] = {"keys": []}
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = json.dumps(self.keys).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk(private_key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return jwk


async def test_jwks_rs256_tokens_with_key_rotation(make_server, db) -> None:
    http = HTTPServer(("127.0.0.1", 0), _JwksHandler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        key1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _JwksHandler.keys = {"keys": [_jwk(key1, "k1")]}
        server = await make_server(
            auth="on", jwt_secret=SECRET, jwks_url=f"http://127.0.0.1:{http.server_port}/jwks", jwks_cooldown_seconds=0
        )
        demo = await setup_demo(db, server)
        # Cognito-style subject: users.cognito_sub, not the users.id.
        claims = {"sub": "demo-editor", "exp": time.time() + 300}
        token1 = jwt.encode(claims, key1, algorithm="RS256", headers={"kid": "k1"})
        async with websockets.connect(f"{server.ws_base}/{demo.documents[0]}?token={token1}"):
            pass
        _JwksHandler.keys = {"keys": [_jwk(key1, "k1"), _jwk(key2, "k2")]}  # rotation: a new kid appears
        token2 = jwt.encode(claims, key2, algorithm="RS256", headers={"kid": "k2"})
        async with websockets.connect(f"{server.ws_base}/{demo.documents[0]}?token={token2}"):
            pass
        # Algorithm confusion: an HS256 token "signed" with the RSA public key is refused.
        pem = key1.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = base64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
        payload = base64url(json.dumps(claims).encode())
        signature = base64url(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        await expect_refusal(f"{server.ws_base}/{demo.documents[0]}?token={header}.{payload}.{signature}", 401)
        unknown = jwt.encode(claims, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                             algorithm="RS256", headers={"kid": "k9"})
        await expect_refusal(f"{server.ws_base}/{demo.documents[0]}?token={unknown}", 401)
    finally:
        http.shutdown()


async def test_open_mode_creates_documents_from_room_names(server, db) -> None:
    doc = Doc()
    async with YClient(server.ws_url("my%20notes"), doc=doc) as client:
        client.doc.get("content", type=Text).insert(0, "x")
        await asyncio.sleep(0.05)
    from collab_server.storage.postgres import open_document_id

    assert await db.fetchval("SELECT title FROM documents WHERE id = $1", open_document_id("my notes")) == "my notes"


async def test_an_unexpected_failure_while_opening_is_a_503_not_a_hang(auth_server, db, monkeypatch) -> None:
    demo = await setup_demo(db, auth_server)

    async def broken(subject: str) -> None:
        raise RuntimeError("the user lookup broke")

    monkeypatch.setattr(auth_server.ctx.access, "user_id", broken)
    body = await expect_refusal(url(auth_server, demo, "editor"), 503)
    assert body["error"]["code"] == "unavailable"
    monkeypatch.undo()
    client = await YClient(url(auth_server, demo, "editor")).connect()  # the server is unharmed
    await client.close()
