"""Parsing and checking single settings: the text of a variable in, a typed value or a
``ConfigError`` naming the variable out.

Kept apart from config.py, which says what a node's settings are (``Settings``, and
``ENV_VARS``, the table the docs are generated from) and how they are loaded
(``load_settings``): the rules for each value are the longer half, and are read one at a
time. Nothing here knows the table or ``Settings``: callers pass the variable's name.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from service.asr.catalogue import NAMES


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


MODEL_NAMES = NAMES  # every official Whisper name (service/asr/catalogue.py)
_BOOLS = ("1", "true", "yes", "0", "false", "no")


def port(name: str, raw: str) -> int:
    value = integer(name, raw)
    if not 1 <= value <= 65535:
        raise ConfigError(f"{name} must be a TCP port (1-65535), got {raw!r}")
    return value


def integer(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def positive_number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


def host(name: str, raw: str) -> str:
    if not raw or any(c.isspace() for c in raw):
        raise ConfigError(f"{name} must be a host name or IP address, got {raw!r}")
    return raw


_HOST_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


def allowed_hosts(raw: str) -> tuple[str, ...]:
    """``*``, or host names / IP addresses without port, brackets optional for IPv6."""
    names = tuple(dict.fromkeys(n.strip().lower().rstrip(".") for n in raw.split(",")))
    names = tuple(n for n in names if n)
    if "*" in names:
        return ("*",)
    for name in names:
        bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
        try:
            ipaddress.ip_address(bare)
            continue
        except ValueError:
            pass
        if not all(_HOST_LABEL.fullmatch(label) for label in bare.split(".")):
            raise ConfigError(
                "IM_API_ALLOWED_HOSTS must be `*` or comma-separated host names or IP "
                f"addresses (no ports), got {raw!r}"
            )
    return tuple(n[1:-1] if n.startswith("[") else n for n in names)


def database_url(url: str) -> None:
    """Only SQLite and PostgreSQL (psycopg 3) are supported: say so now, naming the
    variable, instead of a traceback from the store. An SQLite file must be creatable."""
    from sqlalchemy.exc import ArgumentError

    from service.store.db import parse_url

    try:
        parsed = parse_url(url)
    except (ValueError, ArgumentError) as exc:
        # parse_url's own messages hide the password; SQLAlchemy's may quote the URL whole.
        told = str(exc) if str(exc).startswith("unsupported") else "it cannot be parsed"
        raise ConfigError(f"IM_DATABASE_URL is not usable: {told}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        for parent in Path(parsed.database).expanduser().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(
                        f"IM_DATABASE_URL names an SQLite file under {parent}, which is a file"
                    )
                break


def model(raw: str) -> str:
    """An official name as is; a path resolved, after checking it is a checkpoint file or a
    model folder a converter can read (by its file names: nothing is loaded here)."""
    if raw in MODEL_NAMES:
        return raw
    path = Path(raw).expanduser()
    if path.is_file():
        return str(path.resolve())
    if path.is_dir():
        from service.asr.checkpoint import WeightsError
        from service.asr.converters import folder_kind

        try:
            folder_kind(path)
        except WeightsError as e:
            raise ConfigError(f"IM_MODEL: {e}") from None
        return str(path.resolve())
    looks_like_path = raw.endswith(".pt") or "/" in raw or raw.startswith(".")
    if looks_like_path:
        raise ConfigError(f"IM_MODEL names a file or folder that does not exist: {raw}")
    raise ConfigError(
        f"IM_MODEL must be one of {', '.join(MODEL_NAMES)}, or the path of an openai-whisper "
        f".pt checkpoint, a CTranslate2 model folder or a Hugging Face Whisper folder, got {raw!r}"
    )


def tls(get: Callable[[str], str | None], variable: Callable[[str], str]) -> dict[str, object]:
    """TLS is all or nothing for a node: a certificate and key to present when listening,
    and, for dialing, a CA to verify listeners against (or an explicit opt-out for tests).
    Every file is loaded here, so a wrong path or a key that does not match the
    certificate stops the node at start instead of failing its first call.
    ``get`` gives a setting's value, ``variable`` its environment variable's name."""
    import ssl

    cert, key, ca = get("tls_cert"), get("tls_key"), get("tls_ca")
    insecure_raw = get("tls_insecure")
    if insecure_raw is not None and insecure_raw.lower() not in _BOOLS:
        raise ConfigError(f"IM_TLS_INSECURE must be 1 or 0, got {insecure_raw!r}")
    insecure = insecure_raw is not None and insecure_raw.lower() in ("1", "true", "yes")
    if (cert is None) != (key is None):
        raise ConfigError("IM_TLS_CERT and IM_TLS_KEY go together: set both or neither")
    if cert is None or key is None:
        if ca is not None or insecure:
            raise ConfigError(
                "IM_TLS_CA and IM_TLS_INSECURE need IM_TLS_CERT and IM_TLS_KEY: a node "
                "uses TLS for all its calls or for none"
            )
        return {}
    if ca is None and not insecure:
        raise ConfigError(
            "with TLS on, IM_TLS_CA must name the CA that signed the listeners' certificates "
            "(or set IM_TLS_INSECURE=1, for testing only: nothing is verified)"
        )
    if ca is not None and insecure:
        raise ConfigError("set IM_TLS_CA or IM_TLS_INSECURE, not both")
    paths = {"tls_cert": cert, "tls_key": key} | ({"tls_ca": ca} if ca is not None else {})
    resolved: dict[str, Path] = {}
    for name, raw in paths.items():
        path = Path(raw).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"{variable(name)} names no readable file: {raw}")
        resolved[name] = path
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            resolved["tls_cert"], resolved["tls_key"]
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"IM_TLS_CERT/IM_TLS_KEY cannot be loaded as a PEM certificate and its key: {exc}"
        ) from None
    if "tls_ca" in resolved:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(resolved["tls_ca"])
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"IM_TLS_CA cannot be loaded as PEM certificates: {exc}") from None
    return {**resolved, "tls_insecure": insecure}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- webhooks (service/webhooks/) --------------------------------------------------------

WEBHOOK_SECRET_PREFIX = "whsec_"  # the Standard Webhooks spelling of a signing secret
_ENDPOINT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DEFAULT_ENDPOINT = "default"  # the name of the IM_WEBHOOK_URL endpoint


@dataclass(frozen=True)
class WebhookEndpoint:
    """Where events go and the secret they are signed with. ``name`` keys the endpoint's
    rows in the outbox (so it must stay the same across restarts) and labels its metrics
    (never the URL, which may carry a credential in its query)."""

    name: str
    url: str
    secret: str = field(repr=False)  # "whsec_" + base64 of 24..64 random bytes

    @property
    def key(self) -> bytes:
        return base64.b64decode(self.secret[len(WEBHOOK_SECRET_PREFIX) :])


def webhook_url(name: str, raw: str) -> str:
    """An http(s) URL with a host: the node POSTs to it and follows no redirect."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http:// or https:// URL with a host, got {raw!r}")
    return raw


def webhook_secret(name: str, raw: str) -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of 24 to 64 random bytes. The
    message never shows the value (it is a credential)."""
    if not raw.startswith(WEBHOOK_SECRET_PREFIX):
        raise ConfigError(
            f"{name} must be a Standard Webhooks secret, 'whsec_' followed by base64 "
            '(e.g. python3 -c "import base64, secrets; '
            "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\")"
        )
    try:
        key = base64.b64decode(raw[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name}: the part after 'whsec_' is not valid base64") from None
    if not 24 <= len(key) <= 64:
        raise ConfigError(f"{name} must hold 24 to 64 bytes of key, it holds {len(key)}")
    return raw


def webhooks(raw: str) -> tuple[WebhookEndpoint, ...]:
    """``IM_WEBHOOKS``: a JSON list of ``{"name", "url", "secret"}`` objects, given inline
    (the value starts with ``[``) or as the path of a file holding it (which keeps the
    secrets out of the environment)."""
    var = "IM_WEBHOOKS"
    text = raw
    if not raw.lstrip().startswith("["):
        path = Path(raw).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{var} must be a JSON list or the path of a file holding one; cannot read "
                f"{raw!r}: {exc}"
            ) from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{var} is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ConfigError(f'{var} must be a JSON list of {{"name", "url", "secret"}} objects')
    endpoints: list[WebhookEndpoint] = []
    for i, item in enumerate(items):
        where = f"{var}[{i}]"
        if not isinstance(item, dict) or set(item) != {"name", "url", "secret"}:
            raise ConfigError(f'{where} must be an object with exactly "name", "url", "secret"')
        if not all(isinstance(v, str) for v in item.values()):
            raise ConfigError(f"{where}: name, url and secret must be strings")
        if not _ENDPOINT_NAME.fullmatch(item["name"]):
            raise ConfigError(
                f"{where}.name must be 1-32 of a-z, 0-9, '_', '-' (starting with a letter "
                f"or digit), got {item['name']!r}"
            )
        endpoints.append(
            WebhookEndpoint(
                item["name"],
                webhook_url(f"{where}.url", item["url"]),
                webhook_secret(f"{where}.secret", item["secret"]),
            )
        )
    return tuple(endpoints)


def webhook_endpoints(
    url: str | None, secret: str | None, listed: tuple[WebhookEndpoint, ...]
) -> tuple[WebhookEndpoint, ...]:
    """Every endpoint: IM_WEBHOOK_URL (named ``default``) and those of IM_WEBHOOKS, each
    name once."""
    if (url is None) != (secret is None):
        raise ConfigError("IM_WEBHOOK_URL and IM_WEBHOOK_SECRET go together: set both or neither")
    endpoints = list(listed)
    if url is not None and secret is not None:
        endpoints.insert(
            0,
            WebhookEndpoint(
                DEFAULT_ENDPOINT,
                webhook_url("IM_WEBHOOK_URL", url),
                webhook_secret("IM_WEBHOOK_SECRET", secret),
            ),
        )
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(
            f"webhook endpoint names must differ, {', '.join(twice)} is used twice "
            f"('{DEFAULT_ENDPOINT}' is IM_WEBHOOK_URL's)"
        )
    return tuple(endpoints)
