"""Who a client is (a signed JWT) and what it may do with a document (its workspace role).

Only HS256 is accepted with the shared secret, so `alg: none` and algorithm confusion
(an RS256 public key used as an HMAC secret) are refused by construction.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import asyncpg
import jwt

from .config import Settings

WRITE_ROLES = frozenset({"owner", "admin", "editor"})
ALGORITHMS = ["HS256"]


class AuthError(Exception):
    """The token is missing or not valid: HTTP 401 / close 4401."""


@dataclass(frozen=True, slots=True)
class Access:
    document_exists: bool
    role: str | None  # None: no access
    workspace_id: UUID | None


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
    def __init__(self, secret: str, issuer: str | None = None, audience: str | None = None) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience

    def mint(self, subject: str, ttl_seconds: int = 3600, **claims: object) -> str:
        now = int(time.time())
        payload: dict[str, object] = {"sub": subject, "iat": now, "nbf": now, "exp": now + ttl_seconds, **claims}
        if self._issuer:
            payload["iss"] = self._issuer
        if self._audience:
            payload["aud"] = self._audience
        return jwt.encode(payload, self._secret, algorithm="HS256")

    def verify(self, token: str | None) -> dict[str, object]:
        if not token:
            raise AuthError("missing token")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=ALGORITHMS,
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
        return claims


class AccessResolver:
    """Maps a token subject to a user and a user to their role on a document."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def user_id(self, subject: str) -> UUID | None:
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

    async def document_access(self, user_id: UUID, document_id: UUID) -> Access:
        row = await self._pool.fetchrow(
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
        if row is None or row["gone"]:
            return Access(False, None, None)
        return Access(True, row["role"], row["workspace_id"])
