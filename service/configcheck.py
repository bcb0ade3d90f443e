"""Parsing and checking single settings: the text of a variable in, a typed value or a
``ConfigError`` naming the variable out.

Kept apart from config.py, which says what a node's settings are (``Settings``, and
``ENV_VARS``, the table the docs are generated from) and how they are loaded
(``load_settings``): the rules for each value are the longer half, and are read one at a
time. Nothing here knows the table or ``Settings``: callers pass the variable's name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path

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
