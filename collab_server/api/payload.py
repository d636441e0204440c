"""What goes in and out of a handler: bounded bodies, content types, JSON schemas, query parameters.

The schema classes describe a body once and serve twice: they validate requests (422 naming the
field) and they are what the OpenAPI document prints, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
from starlette.requests import Request
from starlette.responses import Response

from collab_server.content.sanitize import storable_text

from .errors import ApiError

JSON_BODY_LIMIT = 1024 * 1024  # or the message limit, when that is lower
OCTET_STREAM = "application/octet-stream"
MARKDOWN = "text/markdown"


def _default(value: Any) -> Any:
    if isinstance(value, UUID):  # asyncpg's own UUID subclass, which orjson does not take as a UUID
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JSONOut(Response):
    """orjson: fast, and datetimes serialise natively."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_media_type(request: Request, expected: str) -> None:
    if media_type(request) != expected:
        raise ApiError(415, f"the body must be {expected}")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (header or stream)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length")
        if int(declared) > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# -- JSON bodies -------------------------------------------------------------------------------


def storable(value: Any) -> Any:
    """Every string of a JSON value (keys too) as PostgreSQL can store it: text and jsonb refuse
    NUL, so it becomes U+FFFD here, once, at the boundary (see content.sanitize)."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def _uuid(value: Any) -> UUID:
    if not isinstance(value, str):
        raise ValueError
    return UUID(value)


def _uuid_list(value: Any) -> list[UUID]:
    if not isinstance(value, list) or len(value) > 100:
        raise ValueError
    return [_uuid(v) for v in value]


def _of(kind: type) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        # bool is an int in Python; JSON keeps them apart.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError
        return value

    return check


# kind -> (converter raising ValueError, OpenAPI schema)
KINDS: dict[str, tuple[Callable[[Any], Any], dict[str, Any]]] = {
    "string": (_of(str), {"type": "string"}),
    "integer": (_of(int), {"type": "integer"}),
    "boolean": (_of(bool), {"type": "boolean"}),
    "object": (_of(dict), {"type": "object"}),
    "uuid": (_uuid, {"type": "string", "format": "uuid"}),
    "uuid_list": (_uuid_list, {"type": "array", "items": {"type": "string", "format": "uuid"}, "maxItems": 100}),
}

_LABELS = {"string": "a string", "integer": "an integer", "boolean": "true or false", "object": "an object",
           "uuid": "a UUID", "uuid_list": "a list of at most 100 UUIDs"}


@dataclass(frozen=True)
class Field:
    name: str
    kind: str = "string"
    required: bool = False
    max_length: int | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    non_empty: bool = False  # strings: not blank
    description: str = ""

    def check(self, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ApiError(422, f"{self.name} may not be null")
        convert, _ = KINDS[self.kind]
        try:
            value = convert(value)
        except (ValueError, TypeError):
            raise ApiError(422, f"{self.name} must be {_LABELS[self.kind]}") from None
        if isinstance(value, str):
            if self.non_empty and not value.strip():
                raise ApiError(422, f"{self.name} may not be empty")
            if self.max_length is not None and len(value) > self.max_length:
                raise ApiError(422, f"{self.name} is longer than {self.max_length} characters")
            if self.choices is not None and value not in self.choices:
                raise ApiError(422, f"{self.name} must be one of {', '.join(self.choices)}")
        return value

    def openapi(self) -> dict[str, Any]:
        schema = dict(KINDS[self.kind][1])
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.non_empty:
            schema["pattern"] = r"\S"
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.nullable:
            schema["type"] = [schema["type"], "null"]
        if self.description:
            schema["description"] = self.description
        return schema


@dataclass(frozen=True)
class Schema:
    fields: tuple[Field, ...]
    at_least_one: bool = False  # PATCH bodies: an empty object is a mistake, not a no-op

    def validate(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(422, "the body must be a JSON object")
        known = {f.name: f for f in self.fields}
        unknown = sorted(set(body) - set(known))
        if unknown:
            raise ApiError(422, f"unknown field(s): {', '.join(unknown)}")
        out: dict[str, Any] = {}
        for f in self.fields:
            if f.name in body:
                out[f.name] = f.check(body[f.name])
            elif f.required:
                raise ApiError(422, f"{f.name} is required")
        if self.at_least_one and not out:
            raise ApiError(422, f"give at least one of: {', '.join(known)}")
        return out

    def openapi(self) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {f.name: f.openapi() for f in self.fields},
            "required": [f.name for f in self.fields if f.required],
            **({"minProperties": 1} if self.at_least_one else {}),
        }


def has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers


async def read_json(request: Request, schema: Schema, optional: bool = False) -> dict[str, Any]:
    """415 unless application/json, 413 past the limit, 400 if not JSON, 422 if not the schema.
    An `optional` body may be left out entirely (no Content-Type needed then)."""
    if optional and not has_body(request):
        return schema.validate({})
    require_media_type(request, "application/json")
    raw = await read_body(request, min(JSON_BODY_LIMIT, request.app.state.ctx.settings.max_message_bytes))
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body is not valid JSON") from None
    return schema.validate(storable(body) if b"\\u0000" in raw else body)


# -- query parameters --------------------------------------------------------------------------


def query_param(request: Request, name: str) -> str | None:
    """A raw query parameter, storable (no NUL): every query string is read through here or `Param`."""
    raw = request.query_params.get(name)
    return None if raw is None else storable_text(raw)


PG_INT_MAX = 2**31 - 1  # integers go to PostgreSQL `int` columns: past this, 400, not an overflow


@dataclass(frozen=True)
class Param:
    """A query parameter, for parsing and for the OpenAPI document."""

    name: str
    kind: str = "string"  # string | integer | number | boolean
    description: str = ""
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    schema_extra: dict[str, Any] = field(default_factory=dict)
    required: bool = False

    @property
    def upper(self) -> float | None:
        return PG_INT_MAX if self.maximum is None and self.kind == "integer" else self.maximum

    def openapi(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.kind, **self.schema_extra}
        for key, value in (("default", self.default), ("minimum", self.minimum), ("maximum", self.upper)):
            if value is not None:
                schema[key] = value
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        return {"name": self.name, "in": "query", "required": self.required, "schema": schema,
                "description": self.description}

    def read(self, request: Request) -> Any:
        """The parsed value, or the default; 400 for a value that is missing (if required),
        malformed or out of range. An empty string is "absent" only for a string parameter."""
        raw = query_param(request, self.name)
        if raw is None or (raw == "" and self.kind == "string"):
            if self.required:
                raise ApiError(400, f"query parameter {self.name} is required")
            return self.default
        try:
            if self.kind == "integer":
                value: Any = int(raw)
            elif self.kind == "number":
                value = float(raw)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
            elif self.kind == "boolean":
                value = {"true": True, "1": True, "false": False, "0": False}[raw.lower()]
            else:
                value = raw
        except (ValueError, KeyError):
            raise ApiError(400, f"query parameter {self.name} must be a {self.kind}") from None
        if self.minimum is not None and value < self.minimum:
            raise ApiError(400, f"query parameter {self.name} must be at least {self.minimum:g}")
        upper = self.upper
        if upper is not None and value > upper:
            raise ApiError(400, f"query parameter {self.name} must be at most {upper:g}")
        if self.choices is not None and value not in self.choices:
            raise ApiError(400, f"query parameter {self.name} must be one of {', '.join(self.choices)}")
        return value


def limit_param(default: int = 50, maximum: int = 500) -> Param:
    return Param("limit", "integer", "page size", default, 1, maximum)


def decode_base64(raw: str, what: str) -> bytes:
    """Standard or URL-safe base64, padding optional (query strings often lose it)."""
    text = raw.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what} is not valid base64") from None


def encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode()
