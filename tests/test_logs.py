"""Log lines: one valid JSON object each, with tokens redacted wherever they appear."""

from __future__ import annotations

import logging

import orjson
import pytest

from collab_server.runtime.logs import JsonFormatter


def line(msg: str, *args: object, exc: bool = False, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("collab.test", logging.INFO, __file__, 1, msg, args, None)
    if exc:
        try:
            raise ValueError('failed for "/ws/doc?token=secret-in-exc"')
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
    for key, value in extra.items():
        setattr(record, key, value)
    text = JsonFormatter().format(record)
    assert "\n" not in text
    parsed = orjson.loads(text)  # raises if the line is not JSON
    assert isinstance(parsed, dict)
    assert "secret" not in text, text
    return parsed


@pytest.mark.parametrize(
    "message",
    [
        'upgrade "GET /ws/doc?token=secret1" refused',
        "path /ws/doc?token=secret2\\\" with a backslash and a quote",
        "GET /ws/doc?x=1&access_token=secret3&y=2",
        'nested quote: {"url": "/ws/doc?token=secret4"}',
        "tab\there token=secret5\tend",
    ],
)
def test_every_line_is_json_and_tokens_are_redacted(message: str) -> None:
    parsed = line(message)
    assert "***" in str(parsed["msg"])


def test_extra_fields_and_tracebacks_are_redacted_too() -> None:
    parsed = line(
        "connection closed", exc=True,
        path='/ws/doc?token=secret-extra"', nested={"query": "token=secret-nested", "list": ["token=secret-l"]},
    )
    assert parsed["path"] == '/ws/doc?token=***"'
    assert parsed["nested"] == {"query": "token=***", "list": ["token=***"]}
    assert "token=***" in str(parsed["exc"])


def test_what_the_interpreter_would_print_itself_is_a_json_line_too() -> None:
    import subprocess
    import sys

    script = (
        "import threading\n"
        "from collab_server.runtime import logs\n"
        "logs.setup('info')\n"
        "class Bad:\n"
        "    def __del__(self):\n"
        "        raise OSError(9, 'Bad file descriptor')\n"
        "Bad()\n"
        "t = threading.Thread(target=lambda: 1 / 0, name='worker')\n"
        "t.start(); t.join()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2, result.stderr
    entries = [orjson.loads(ln) for ln in lines]  # each one JSON
    assert "Bad file descriptor" in entries[0]["exc"] and "ZeroDivisionError" in entries[1]["exc"]
