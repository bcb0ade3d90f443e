"""Settings: defaults, validation messages that name the variable, and the docs' table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.api import create_app
from service.config import ENV_VARS, ConfigError, load_settings


def test_defaults(tmp_path):
    s = load_settings({"IM_DATA_DIR": str(tmp_path)})
    assert (s.api_host, s.api_port, s.model, s.device, s.call_port) == (
        "127.0.0.1",
        8080,
        "tiny.en",
        "auto",
        7000,
    )
    assert s.database_url == f"sqlite:///{tmp_path.resolve() / 'intellimeet.db'}"
    assert s.model_dir == tmp_path.resolve() / "models"
    assert s.advertise_host  # never empty: a listener must report a dialable address


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"IM_API_PORT": "eighty"}, "IM_API_PORT"),
        ({"IM_API_PORT": "70000"}, "IM_API_PORT"),
        ({"IM_CALL_PORT": "0"}, "IM_CALL_PORT"),
        ({"IM_MODEL": "large-v9"}, "IM_MODEL"),
        ({"IM_MODEL": "/no/such/model.pt"}, "IM_MODEL"),
        ({"IM_DEVICE": "tpu"}, "IM_DEVICE"),
        ({"IM_DATABASE_URL": "just-a-path.db"}, "IM_DATABASE_URL"),
        ({"IM_LOG_LEVEL": "LOUD"}, "IM_LOG_LEVEL"),
        ({"IM_VAD_AGGRESSIVENESS": "4"}, "IM_VAD_AGGRESSIVENESS"),
        ({"IM_HELLO_TIMEOUT_S": "-1"}, "IM_HELLO_TIMEOUT_S"),
        ({"IM_API_HOST": "two words"}, "IM_API_HOST"),
        # Only SQLite and PostgreSQL (psycopg): a traceback from the store, before.
        ({"IM_DATABASE_URL": "mysql://x"}, "IM_DATABASE_URL"),
        ({"IM_DATABASE_URL": "postgresql+asyncpg://u@h/db"}, "IM_DATABASE_URL"),
        ({"IM_DATABASE_URL": "postgresql://u:pw@h:port/db"}, "IM_DATABASE_URL"),
        ({"IM_DATABASE_URL": "sqlite:////etc/passwd/calls.db"}, "IM_DATABASE_URL"),
        ({"IM_DATA_DIR": "/etc/passwd"}, "IM_DATA_DIR"),
        ({"IM_MODEL_DIR": "/etc/passwd"}, "IM_MODEL_DIR"),
        ({"IM_HTTP_MAX_CONNECTIONS": "0"}, "IM_HTTP_MAX_CONNECTIONS"),
        ({"IM_HTTP_MAX_CONNECTIONS": "many"}, "IM_HTTP_MAX_CONNECTIONS"),
        ({"IM_HTTP_IDLE_TIMEOUT_S": "0"}, "IM_HTTP_IDLE_TIMEOUT_S"),
        ({"IM_HTTP_IDLE_TIMEOUT_S": "86400"}, "IM_HTTP_IDLE_TIMEOUT_S"),
        ({"IM_API_ALLOWED_HOSTS": "api.example:8080"}, "IM_API_ALLOWED_HOSTS"),
        ({"IM_API_ALLOWED_HOSTS": "evil host"}, "IM_API_ALLOWED_HOSTS"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(env)


def test_every_setting_is_documented_in_operating_md():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "operating.md").read_text()
    for variable, _doc in ENV_VARS.values():
        assert f"`{variable}`" in doc, f"{variable} missing from docs/operating.md's table"


def test_a_public_api_needs_a_token_unless_told_otherwise(node_factory):
    with pytest.raises(ConfigError, match="IM_API_TOKEN"):
        load_settings({"IM_API_HOST": "0.0.0.0"})
    with_token = load_settings({"IM_API_HOST": "0.0.0.0", "IM_API_TOKEN": "x" * 16})
    assert (with_token.api_host, with_token.api_token) == ("0.0.0.0", "x" * 16)
    # Told otherwise, the public API is served as asked, and with no token to present.
    told = {"IM_API_HOST": "0.0.0.0", "IM_ALLOW_UNAUTHENTICATED_API": "1"}
    settings = load_settings(told)
    assert settings.api_host == "0.0.0.0" and settings.api_token == ""
    assert settings.allow_unauthenticated_api is True
    open_api = create_app(node_factory(**told)).test_client()
    assert open_api.get("/sessions", headers={"Host": "192.0.2.7"}).status_code == 200
    assert load_settings({"IM_API_HOST": "::1"}).api_host == "::1"  # loopback needs none
    with pytest.raises(ConfigError, match="16"):
        load_settings({"IM_API_TOKEN": "short"})


def test_the_token_never_appears_in_the_settings_repr():
    secret = "s3cret-s3cret-s3cret"
    assert secret not in repr(load_settings({"IM_API_TOKEN": secret}))


@pytest.mark.slow  # starts the node's command twice
def test_a_bad_store_or_data_dir_is_a_configuration_error_from_the_command(tmp_path):
    """What `python -m service` prints: the variable and exit status 2, no traceback."""
    root = Path(__file__).resolve().parents[1]
    for env, variable in [
        ({"IM_DATABASE_URL": "mysql://x"}, "IM_DATABASE_URL"),
        ({"IM_DATA_DIR": "/etc/passwd"}, "IM_DATA_DIR"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "service"],
            env={**os.environ, "IM_DATA_DIR": str(tmp_path), **env},
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"configuration error: {variable}"), proc.stderr


def test_http_bounds_and_allowed_hosts(tmp_path):
    s = load_settings({"IM_DATA_DIR": str(tmp_path)})
    assert (s.http_max_connections, s.http_idle_timeout_s, s.api_allowed_hosts) == (256, 10.0, ())
    s = load_settings(
        {
            "IM_HTTP_MAX_CONNECTIONS": "64",
            "IM_HTTP_IDLE_TIMEOUT_S": "2.5",
            "IM_API_ALLOWED_HOSTS": " API.example., [2001:db8::1],192.0.2.1 ,",
        }
    )
    assert (s.http_max_connections, s.http_idle_timeout_s) == (64, 2.5)
    assert s.api_allowed_hosts == ("api.example", "2001:db8::1", "192.0.2.1")
    assert load_settings({"IM_API_ALLOWED_HOSTS": "*"}).api_allowed_hosts == ("*",)
