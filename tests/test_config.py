"""Settings: defaults, parsing, and one clear line for a bad value."""

from pathlib import Path

import pytest

from collab_server.config import ConfigError, Settings, mask_url


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.data_dir, s.auth) == ("127.0.0.1", 8080, Path(".collab"), "on")
    assert s.database_url is None and s.redis_url is None
    assert s.room_grace_seconds == 30.0
    assert s.commit_window_ms <= 10
    assert s.presence_ttl_seconds == 300
    assert s.ping_interval + s.ping_timeout <= 30
    assert s.max_message_bytes >= 1024 * 1024


def test_environment_overrides() -> None:
    s = Settings.from_env(
        {"COLLAB_PORT": "9001", "COLLAB_AUTH": "off", "DATABASE_URL": "postgresql://u:p@db:5432/x",
         "REDIS_URL": "redis://r:6379/1", "COLLAB_DATA_DIR": "/tmp/x"}
    )
    assert (s.port, s.auth, s.data_dir) == (9001, "off", Path("/tmp/x"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COLLAB_PORT": "eighty"}, "COLLAB_PORT='eighty' is invalid: not a number"),
        ({"COLLAB_PORT": "70000"}, "COLLAB_PORT='70000' is invalid: expected a port number between 0 and 65535"),
        ({"COLLAB_AUTH": "maybe"}, "COLLAB_AUTH='maybe' is invalid: expected 'on' or 'off'"),
        ({"DATABASE_URL": "mysql://u:secret@h/db"}, "DATABASE_URL='mysql://u:***@h/db' is invalid"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL='http://x' is invalid"),
        ({"COLLAB_ROOM_GRACE_SECONDS": "-1"}, "COLLAB_ROOM_GRACE_SECONDS='-1' is invalid"),
        ({"COLLAB_DB_POOL_MIN": "12"}, "COLLAB_DB_POOL_MIN must not exceed COLLAB_DB_POOL_MAX"),
    ],
)
def test_bad_values_fail_with_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    assert "secret" not in str(err.value)


def test_mask_url() -> None:
    assert mask_url("postgresql://me:hunter2@h:5432/db") == "postgresql://me:***@h:5432/db"
    assert mask_url("postgresql://h/db") == "postgresql://h/db"
