"""Settings: defaults, validation messages that name the variable, and the README table."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    ],
)
def test_bad_values_are_refused_naming_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(env)


def test_every_setting_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for variable, _doc in ENV_VARS.values():
        assert f"`{variable}`" in readme, f"{variable} missing from the README's table"


def test_a_public_api_needs_a_token_unless_told_otherwise():
    with pytest.raises(ConfigError, match="IM_API_TOKEN"):
        load_settings({"IM_API_HOST": "0.0.0.0"})
    assert load_settings({"IM_API_HOST": "0.0.0.0", "IM_API_TOKEN": "x" * 16}).api_token
    assert load_settings({"IM_API_HOST": "0.0.0.0", "IM_ALLOW_UNAUTHENTICATED_API": "1"})
    assert load_settings({"IM_API_HOST": "::1"}).api_host == "::1"  # loopback needs none
    with pytest.raises(ConfigError, match="16"):
        load_settings({"IM_API_TOKEN": "short"})


def test_the_token_never_appears_in_the_settings_repr():
    secret = "s3cret-s3cret-s3cret"
    assert secret not in repr(load_settings({"IM_API_TOKEN": secret}))
