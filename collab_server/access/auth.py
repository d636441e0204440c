"""Who a client is (a signed JWT) and what it may do with a document (its workspace role).

Only HS256 is accepted with the shared secret, so `alg: none` and algorithm confusion
(an RS256 public key used as an HMAC secret) are refused by construction.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import jwt

from collab_server.config import Settings

WRITE_ROLES = frozenset({"owner", "admin", "editor"})
ALGORITHMS = ["HS256"]
JWKS_ALGORITHMS = ["RS256", "ES256"]


class _Carrier(Protocol):
    """An HTTP request or a WebSocket upgrade: headers and query parameters."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def query_params(self) -> Mapping[str, str]: ...


def token_from(conn: _Carrier) -> str | None:
    """A bearer token from `Authorization: Bearer`, else `?token=` (browsers cannot set
    headers on a WebSocket). Works for HTTP requests and WebSockets alike."""
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return conn.query_params.get("token") or None


class AuthError(Exception):
    """The token is missing or not valid: HTTP 401 / close 4401."""


@dataclass(frozen=True, slots=True)
class Access:
    visible: bool  # False: no such document, or row-level security hides it from this user
    gone: bool  # visible but soft-deleted (or its workspace is)
    role: str | None
    workspace_id: UUID | None

    @property
    def allowed(self) -> bool:
        return self.visible and not self.gone and self.role is not None


def load_secret(settings: Settings) -> str:
    """COLLAB_JWT_SECRET, or one generated once into the data directory for local use."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = Path(settings.data_dir) / "jwt-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    return secret


class TokenVerifier:
    """HS256 with the shared secret; RS256/ES256 with keys from a JWKS URL when configured.

    Each key type is only ever used with its own algorithms, which rules out algorithm
    confusion; `alg: none` is in no allow-list.
    """

    def __init__(
        self,
        secret: str,
        issuer: str | None = None,
        audience: str | None = None,
        jwks_url: str | None = None,
        jwks_cooldown: float = 30.0,
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        # PyJWKClient caches keys and refetches the set when it meets an unknown kid, at most
        # once per cooldown, so random kids cannot make us hammer the identity provider.
        self._jwks = (
            jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=600, timeout=5, cooldown_duration=jwks_cooldown)
            if jwks_url
            else None
        )

    def mint(self, subject: str, ttl_seconds: int = 3600, **claims: object) -> str:
        now = int(time.time())
        payload: dict[str, object] = {"sub": subject, "iat": now, "nbf": now, "exp": now + ttl_seconds, **claims}
        if self._issuer:
            payload["iss"] = self._issuer
        if self._audience:
            payload["aud"] = self._audience
        return jwt.encode(payload, self._secret, algorithm="HS256")

    async def verify(self, token: str | None) -> dict[str, object]:
        if not token:
            raise AuthError("missing token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("invalid token: malformed") from None
        alg = header.get("alg")
        if alg in ALGORITHMS:
            return self._decode(token, self._secret, ALGORITHMS)
        if alg in JWKS_ALGORITHMS and self._jwks is not None:
            try:
                key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWKClientError as exc:
                raise AuthError(f"invalid token: no usable signing key ({exc})") from None
            return self._decode(token, key.key, [key.algorithm_name] if key.algorithm_name else JWKS_ALGORITHMS)
        raise AuthError(f"invalid token: algorithm {alg!r} is not accepted")

    def _decode(self, token: str, key: object, algorithms: list[str]) -> dict[str, object]:
        try:
            return jwt.decode(
                token,
                key,  # type: ignore[arg-type]
                algorithms=algorithms,
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["sub", "exp"], "verify_aud": self._audience is not None},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc.__class__.__name__}") from None


class AccessResolver:
    """Maps a token subject to a user and a user to their role on a document.

    Answers are cached for `ttl` seconds, so a reconnecting client (or a storm of them after a
    restart) opens its socket without a database round trip. Every access change invalidates the
    cache at once (`invalidate`, called by the revocation watcher on each NOTIFY and after it
    reconnects), so the TTL only bounds what a missed notification could leave stale."""

    def __init__(self, pool: asyncpg.Pool, ttl: float = 30.0, max_entries: int = 100_000) -> None:
        self._pool = pool
        self._ttl = ttl
        self._max = max_entries
        self._users: dict[str, tuple[float, UUID | None]] = {}
        self._access: dict[tuple[UUID, UUID], tuple[float, Access]] = {}
        self.lookups = 0  # database round trips made (for tests and metrics)

    def invalidate(self) -> None:
        self._users.clear()
        self._access.clear()

    def _fresh(self, entry: tuple[float, Any] | None) -> bool:
        return entry is not None and entry[0] > time.monotonic()

    def _store(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= self._max:
            cache.clear()
        cache[key] = (time.monotonic() + self._ttl, value)

    async def user_id(self, subject: str) -> UUID | None:
        cached = self._users.get(subject)
        if self._fresh(cached):
            return cached[1]  # type: ignore[index]
        found = await self._lookup_user(subject)
        if found is not None:  # an unknown subject is not cached: the user may be created any moment
            self._store(self._users, subject, found)
        return found

    async def _lookup_user(self, subject: str) -> UUID | None:
        self.lookups += 1
        try:
            as_uuid: UUID | None = UUID(subject)
        except ValueError:
            as_uuid = None
        row = await self._pool.fetchrow(
            """
            SELECT id FROM users
            WHERE deleted_at IS NULL AND (cognito_sub = $1 OR id = $2)
            ORDER BY (cognito_sub = $1) DESC LIMIT 1
            """,
            subject,
            as_uuid,
        )
        return row["id"] if row else None

    async def document_access(self, user_id: UUID, document_id: UUID, *, fresh: bool = False) -> Access:
        """The user's role on a document, read under row-level security as that user (cached
        unless `fresh`, which the revocation re-check asks for)."""
        key = (user_id, document_id)
        cached = self._access.get(key)
        if not fresh and self._fresh(cached):
            return cached[1]  # type: ignore[index]
        access = await self._lookup_access(user_id, document_id)
        self._store(self._access, key, access)
        return access

    async def _lookup_access(self, user_id: UUID, document_id: UUID) -> Access:
        self.lookups += 1
        async with self._pool.acquire() as conn, conn.transaction():
            await as_user(conn, user_id)
            row = await conn.fetchrow(
                """
                SELECT d.workspace_id,
                       (d.deleted OR w.deleted_at IS NOT NULL) AS gone,
                       m.role::text AS role
                FROM documents d
                JOIN workspaces w ON w.id = d.workspace_id
                LEFT JOIN workspace_members m
                       ON m.workspace_id = d.workspace_id AND m.user_id = $1 AND m.is_active
                WHERE d.id = $2
                """,
                user_id,
                document_id,
            )
        if row is None:
            return Access(False, False, None, None)
        return Access(True, bool(row["gone"]), row["role"], row["workspace_id"])


async def as_user(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Make the rest of this transaction run as `collab_user` for `user_id`, so row-level
    security applies (the server's own role bypasses it for internal work)."""
    await conn.execute(
        "SELECT set_config('role', 'collab_user', true), set_config('app.current_user_id', $1, true)",
        str(user_id),
    )
