"""Every setting of a node, read from ``IM_*`` environment variables once at start.

Validation happens here, before any socket is opened or model loaded, so that a typo in a
deployment fails in the first second with a message naming the variable, not minutes later
inside a call. The rules for single values are in service/configcheck.py.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from service import configcheck as check
from service.asr.catalogue import DOWNLOAD_BASE
from service.codec_table import LABELS, OPUS_BITRATE_MAX, OPUS_BITRATE_MIN, PREFERENCE
from service.configcheck import ConfigError, WebhookEndpoint

__all__ = ["ENV_VARS", "ConfigError", "Settings", "load_settings"]

COMPUTE_TYPES = ("auto", "float32", "int8", "float16")  # service/asr/precision.py
DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Settings:
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_token: str = field(default="", repr=False)  # never printed, never logged
    allow_unauthenticated_api: bool = False
    # Host names the API answers to besides its own (loopback, IM_API_HOST, the host
    # name); ("*",): any. Refusing the rest is what stops DNS rebinding.
    api_allowed_hosts: tuple[str, ...] = ()
    http_max_connections: int = 256
    http_idle_timeout_s: float = 10.0
    data_dir: Path = Path("data")
    database_url: str = ""  # derived from data_dir when empty
    node_id: str = ""  # derived from the host name when empty (node_id_from_host)
    model: str = "tiny.en"
    final_model: str = ""  # the post-call pass's model; empty: the live model
    postcall: bool = True  # a post-call pass for every call that ends
    model_dir: Path = Path()  # derived from data_dir when empty
    media_dir: Path = Path()  # derived from data_dir when empty; resolved once, at load
    device: str = "auto"
    compute_type: str = "auto"
    model_download_base: str = DOWNLOAD_BASE
    call_host: str = "0.0.0.0"
    call_port: int = 7000
    advertise_host: str = ""  # the host put in a listening session's "address"
    log_level: str = "INFO"
    hello_timeout_s: float = 5.0
    connect_timeout_s: float = 10.0
    tls_cert: Path | None = None  # with tls_key: every call of this node runs over TLS
    tls_key: Path | None = None
    tls_ca: Path | None = None  # what a dialer verifies the listener's certificate against
    tls_insecure: bool = False  # dial TLS without verifying anything (tests only)
    vad: str = "silero"
    vad_aggressiveness: int = 2
    utterance_end_silence_ms: int = 500
    max_utterance_s: float = 15.0
    partial_interval_s: float = 1.0
    asr_prompt_chars: int = 200
    asr_max_batch: int = 0  # 0: auto (16 on CUDA, 1 on CPU)
    asr_admit_wait_s: float = 2.0  # admission (asr/headroom.py): median final queue wait
    asr_admit_busy: float = 0.8  # admission: share of the worker's time finals may take
    asr_short_context: bool = False  # on a CPU, short audio encoded over its own length
    max_calls: int = 32
    codecs: tuple[str, ...] = tuple(c.label for c in PREFERENCE)  # what this node sends and plays
    opus_bitrate: int = 20_000
    opus_frame_ms: int = 20
    record: bool = True  # record both sides of every call (a call's `record` overrides)
    record_lossless: bool = True  # the local side also as FLAC, for the post-call pass
    recordings_dir: Path = Path()  # derived from data_dir when empty (service/recordings/)
    recording_retention_days: int = 0  # 0: keep recordings until deleted
    hangup_drain_s: float = 30.0  # longest a hang-up waits for both sides' last finals
    # Webhooks (service/webhooks/): one endpoint from URL and secret, more from IM_WEBHOOKS;
    # every endpoint at once is `webhook_endpoints`.
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    webhooks: tuple[WebhookEndpoint, ...] = field(default=(), repr=False)
    webhook_max_pending: int = 10_000
    webhook_retry_max_s: float = 300.0
    metrics_token: str = field(default="", repr=False)  # GET /metrics only; never logged

    @property
    def webhook_endpoints(self) -> tuple[WebhookEndpoint, ...]:
        return check.webhook_endpoints(
            self.webhook_url or None, self.webhook_secret or None, self.webhooks
        )

    @property
    def sqlite_path(self) -> Path | None:
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix) :])
        return None


# name -> (environment variable, documentation); docs/operating.md's table is generated
# from this and the defaults of Settings (python -m service.configdoc, tests/test_docs.py).
ENV_VARS: dict[str, tuple[str, str]] = {
    "api_host": ("IM_API_HOST", "Address the control API binds to."),
    "api_port": ("IM_API_PORT", "Port of the control API."),
    "api_token": (
        "IM_API_TOKEN",
        "Bearer token every API call but /healthz must carry (at least 16 characters).",
    ),
    "allow_unauthenticated_api": (
        "IM_ALLOW_UNAUTHENTICATED_API",
        "Set to 1 to serve the API on a non-loopback address without a token.",
    ),
    "api_allowed_hosts": (
        "IM_API_ALLOWED_HOSTS",
        "More host names (comma-separated) the API answers to besides its own; `*`: any.",
    ),
    "http_max_connections": (
        "IM_HTTP_MAX_CONNECTIONS",
        "Most HTTP connections open at once; when full, the longest-idle one is closed.",
    ),
    "http_idle_timeout_s": (
        "IM_HTTP_IDLE_TIMEOUT_S",
        "Seconds an HTTP connection may take to send a request head, or stay idle.",
    ),
    "data_dir": ("IM_DATA_DIR", "Directory for the database and converted model weights."),
    "database_url": (
        "IM_DATABASE_URL",
        "SQLAlchemy URL of the transcript store (default: SQLite file in the data directory).",
    ),
    "node_id": (
        "IM_NODE_ID",
        "This node's name on its calls, stable across restarts: nodes sharing a database "
        "need distinct ones (1-64 of `A-Za-z0-9._-`).",
    ),
    "model": (
        "IM_MODEL",
        "Whisper model: an official name (`tiny.en` ... `large-v3-turbo`), a .pt checkpoint, "
        "or a CTranslate2 or Hugging Face Whisper folder.",
    ),
    "final_model": (
        "IM_FINAL_MODEL",
        "Model of the post-call pass over each ended call's recording (any IM_MODEL value; "
        "default: the live model).",
    ),
    "postcall": (
        "IM_POSTCALL",
        "Set to 0 to run no post-call pass when a call ends (POST .../revisions still does).",
    ),
    "model_dir": (
        "IM_MODEL_DIR",
        "Where checkpoints are cached, named as in ~/.cache/whisper (default: DATA/models).",
    ),
    "media_dir": (
        "IM_MEDIA_DIR",
        "The only folder `file:` inputs and recordings may use, paths relative to it "
        "(default: DATA/media).",
    ),
    "device": ("IM_DEVICE", "Compute device: `auto` (CUDA when torch sees a GPU), `cpu`, `cuda`."),
    "compute_type": (
        "IM_COMPUTE_TYPE",
        "`auto` (float16 on CUDA, float32 on a CPU), `float32`, `int8` (CPU), `float16` (CUDA).",
    ),
    "model_download_base": (
        "IM_MODEL_DOWNLOAD_BASE",
        "URL that official checkpoints are downloaded from (`<base>/<sha256>/<name>.pt`).",
    ),
    "call_host": ("IM_CALL_HOST", "Address listening calls bind to."),
    "call_port": ("IM_CALL_PORT", "Default port for `listen` sessions that name none."),
    "advertise_host": (
        "IM_ADVERTISE_HOST",
        "Host reported in a listening session's address (default: this host's address).",
    ),
    "log_level": ("IM_LOG_LEVEL", "Logging level: DEBUG, INFO, WARNING, ERROR."),
    "hello_timeout_s": ("IM_HELLO_TIMEOUT_S", "Seconds a new connection has to send its hello."),
    "connect_timeout_s": ("IM_CONNECT_TIMEOUT_S", "Seconds a dial may take to connect."),
    "tls_cert": (
        "IM_TLS_CERT",
        "PEM certificate (chain) a listening call presents; with IM_TLS_KEY, calls use TLS.",
    ),
    "tls_key": ("IM_TLS_KEY", "PEM private key of IM_TLS_CERT."),
    "tls_ca": (
        "IM_TLS_CA",
        "PEM CA bundle a dialing call verifies the listener's certificate and address against.",
    ),
    "tls_insecure": (
        "IM_TLS_INSECURE",
        "Set to 1 to dial TLS without verifying the listener (testing only).",
    ),
    "vad": ("IM_VAD", "Voice activity detector: `silero` (onnxruntime) or `webrtc`."),
    "vad_aggressiveness": ("IM_VAD_AGGRESSIVENESS", "webrtcvad aggressiveness, 0 (lax) to 3."),
    "utterance_end_silence_ms": (
        "IM_UTTERANCE_END_SILENCE_MS",
        "Silence that ends an utterance, in milliseconds.",
    ),
    "max_utterance_s": ("IM_MAX_UTTERANCE_S", "Longest utterance sent to Whisper, in seconds."),
    "partial_interval_s": (
        "IM_PARTIAL_INTERVAL_S",
        "Seconds of new speech between live partial transcripts; 0 turns partials off.",
    ),
    "asr_prompt_chars": (
        "IM_ASR_PROMPT_CHARS",
        "Characters of a speaker's committed transcript given to Whisper as context; 0: none.",
    ),
    "asr_admit_wait_s": (
        "IM_ASR_ADMIT_WAIT_S",
        "New transcribing calls get 503 asr_saturated while finals' median queue wait over "
        "the last 20 s is above this (seconds).",
    ),
    "asr_admit_busy": (
        "IM_ASR_ADMIT_BUSY",
        "... or while finals would keep the ASR worker busier than this share of the last "
        "20 s with one more call (0.05..1; 1: only the wait counts).",
    ),
    "asr_short_context": (
        "IM_ASR_SHORT_CONTEXT",
        "1: on a CPU, encode short utterances over their own length plus 2 s instead of "
        "Whisper's 30 s window: finals about 0.6 s sooner on 2 cores, but whispered speech "
        "less accurate (docs/benchmarks.md, Short context). No effect on a GPU.",
    ),
    "asr_max_batch": (
        "IM_ASR_MAX_BATCH",
        "Most utterances (of all calls) decoded in one batch; 0: 16 on CUDA, 1 on CPU.",
    ),
    "max_calls": (
        "IM_MAX_CALLS",
        "Most calls (listening, connecting or connected) at once; more get 503 too_many_calls.",
    ),
    "codecs": (
        "IM_CODECS",
        "Audio codecs this node offers, comma-separated: `opus,pcm16` (default) or `pcm16`.",
    ),
    "opus_bitrate": ("IM_OPUS_BITRATE", "Opus bitrate in bit/s, 16000 to 24000."),
    "opus_frame_ms": ("IM_OPUS_FRAME_MS", "Opus frame length: 20 (default) or 10 ms."),
    "record": (
        "IM_RECORD",
        "Set to 0 to record no call by default (a call's `record` field overrides it).",
    ),
    "record_lossless": (
        "IM_RECORD_LOSSLESS",
        "Set to 0 to record this node's own side as Ogg Opus only: by default it is also "
        "kept as FLAC (about 66 MB per hour of speech), which the post-call pass "
        "transcribes instead (docs/recordings.md).",
    ),
    "recordings_dir": (
        "IM_RECORDINGS_DIR",
        "Where call recordings (Ogg Opus, both sides; FLAC, the local one) are kept "
        "(default: DATA/recordings).",
    ),
    "recording_retention_days": (
        "IM_RECORDING_RETENTION_DAYS",
        "Days a call's recording is kept before it is deleted; 0: until deleted by hand.",
    ),
    "hangup_drain_s": (
        "IM_HANGUP_DRAIN_S",
        "Longest a hang-up waits for both sides' last transcripts before closing, in seconds.",
    ),
    "webhook_url": (
        "IM_WEBHOOK_URL",
        "URL every event is POSTed to, signed (Standard Webhooks); with IM_WEBHOOK_SECRET.",
    ),
    "webhook_secret": (
        "IM_WEBHOOK_SECRET",
        "Signing secret of IM_WEBHOOK_URL: `whsec_` and the base64 of 24 to 64 random bytes.",
    ),
    "webhooks": (
        "IM_WEBHOOKS",
        'More endpoints: a JSON list of `{"name", "url", "secret"}`, or the path of a file '
        "holding one.",
    ),
    "webhook_max_pending": (
        "IM_WEBHOOK_MAX_PENDING",
        "Most undelivered events kept per endpoint; past it the oldest are dropped (counted).",
    ),
    "webhook_retry_max_s": (
        "IM_WEBHOOK_RETRY_MAX_S",
        "Longest wait between two tries of one event (backoff from 1 s, doubling, jittered).",
    ),
    "metrics_token": (
        "IM_METRICS_TOKEN",
        "Bearer token for GET /metrics alone (a scraper need not hold IM_API_TOKEN).",
    ),
}


# name -> (lowest, highest, how an error states the range when "lo..hi" would mislead)
INT_RANGES: dict[str, tuple[int, int, str | None]] = {
    "asr_max_batch": (0, 256, "0 (auto) or 1..256"),
    "asr_prompt_chars": (0, 400, None),
    "vad_aggressiveness": (0, 3, None),
    "max_calls": (1, 1000, None),
    "http_max_connections": (16, 100_000, None),
    "opus_bitrate": (OPUS_BITRATE_MIN, OPUS_BITRATE_MAX, f"{OPUS_BITRATE_MIN}..{OPUS_BITRATE_MAX}"),
    "utterance_end_silence_ms": (100, 5000, None),
    "recording_retention_days": (0, 36_500, "0 (keep) or 1..36500"),
    "webhook_max_pending": (100, 10_000_000, None),
}


# On/off settings: 1/true/yes or 0/false/no, any case.
FLAGS = (
    "record",
    "record_lossless",
    "allow_unauthenticated_api",
    "postcall",
    "asr_short_context",
)
TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build validated settings from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    raw = {f.name: env.get(ENV_VARS[f.name][0]) for f in fields(Settings)}
    defaults = Settings()
    values: dict[str, object] = {}

    def get(key: str) -> str | None:
        value = raw[key]
        return value.strip() if value is not None and value.strip() != "" else None

    for key, parse in (
        ("api_host", check.host),
        ("call_host", check.host),
        ("advertise_host", check.host),
    ):
        if (v := get(key)) is not None:
            values[key] = parse(ENV_VARS[key][0], v)
    for key in ("api_port", "call_port"):
        if (v := get(key)) is not None:
            values[key] = check.port(ENV_VARS[key][0], v)
    for key in FLAGS:
        if (v := get(key)) is not None:
            if v.lower() not in (*TRUE, *FALSE):
                raise ConfigError(f"{ENV_VARS[key][0]} must be 1 or 0, got {v!r}")
            values[key] = v.lower() in TRUE
    if (v := get("asr_admit_busy")) is not None:
        busy = check.positive_number("IM_ASR_ADMIT_BUSY", v)
        if not 0.05 <= busy <= 1:
            raise ConfigError(f"IM_ASR_ADMIT_BUSY must be 0.05..1, got {v!r}")
        values["asr_admit_busy"] = busy
    for key in (
        "hello_timeout_s",
        "connect_timeout_s",
        "max_utterance_s",
        "hangup_drain_s",
        "asr_admit_wait_s",
    ):
        if (v := get(key)) is not None:
            values[key] = check.positive_number(ENV_VARS[key][0], v)
    for key, (lo, hi, expected) in INT_RANGES.items():
        if (v := get(key)) is not None:
            name = ENV_VARS[key][0]
            number = check.integer(name, v)
            if not lo <= number <= hi:
                raise ConfigError(f"{name} must be {expected or f'{lo}..{hi}'}, got {v!r}")
            values[key] = number
    if (v := get("http_idle_timeout_s")) is not None:
        timeout = check.positive_number("IM_HTTP_IDLE_TIMEOUT_S", v)
        if timeout > 3600:
            raise ConfigError(f"IM_HTTP_IDLE_TIMEOUT_S must be at most 3600, got {v!r}")
        values["http_idle_timeout_s"] = timeout
    if (v := get("api_allowed_hosts")) is not None:
        values["api_allowed_hosts"] = check.allowed_hosts(v)
    if (v := get("vad")) is not None:
        if v not in ("silero", "webrtc"):
            raise ConfigError(f"IM_VAD must be silero or webrtc, got {v!r}")
        values["vad"] = v
    if (v := get("partial_interval_s")) is not None:
        try:
            interval = float(v)
        except ValueError:
            raise ConfigError(f"IM_PARTIAL_INTERVAL_S must be a number, got {v!r}") from None
        if not (interval == 0 or 0.2 <= interval <= 30):
            raise ConfigError(f"IM_PARTIAL_INTERVAL_S must be 0 or 0.2..30, got {v!r}")
        values["partial_interval_s"] = interval
    if (v := get("codecs")) is not None:
        offered = tuple(c.strip().lower() for c in v.split(",") if c.strip())
        if not offered or any(c not in LABELS for c in offered):
            raise ConfigError(f"IM_CODECS must list opus and/or pcm16, got {v!r}")
        values["codecs"] = tuple(dict.fromkeys(offered))
    if (v := get("opus_frame_ms")) is not None:
        if v not in ("10", "20"):
            raise ConfigError(f"IM_OPUS_FRAME_MS must be 10 or 20, got {v!r}")
        values["opus_frame_ms"] = int(v)
    for key in ("webhook_url", "webhook_secret"):  # checked as a pair, below
        if (v := get(key)) is not None:
            values[key] = v
    if (v := get("webhooks")) is not None:
        values["webhooks"] = check.webhooks(v)
    if (v := get("webhook_retry_max_s")) is not None:
        most = check.positive_number("IM_WEBHOOK_RETRY_MAX_S", v)
        if not 1 <= most <= 86_400:
            raise ConfigError(f"IM_WEBHOOK_RETRY_MAX_S must be 1..86400, got {v!r}")
        values["webhook_retry_max_s"] = most
    if (v := get("metrics_token")) is not None:
        if len(v) < 16:
            raise ConfigError("IM_METRICS_TOKEN must be at least 16 characters")
        values["metrics_token"] = v
    if (v := get("api_token")) is not None:
        if len(v) < 16:
            raise ConfigError("IM_API_TOKEN must be at least 16 characters")
        values["api_token"] = v
    if (v := get("log_level")) is not None:
        if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"IM_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {v!r}")
        values["log_level"] = v.upper()
    if (v := get("device")) is not None:
        if v not in DEVICE_CHOICES and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ConfigError(f"IM_DEVICE must be auto, cpu, cuda or cuda:N, got {v!r}")
        values["device"] = v
    if (v := get("model")) is not None:
        values["model"] = check.model(v)
    if (v := get("final_model")) is not None:
        values["final_model"] = check.model(v)
    if (v := get("compute_type")) is not None:
        if v not in COMPUTE_TYPES:
            raise ConfigError(
                f"IM_COMPUTE_TYPE must be one of {', '.join(COMPUTE_TYPES)}, got {v!r}"
            )
        values["compute_type"] = v
    if (v := get("model_download_base")) is not None:
        if not v.startswith(("http://", "https://")):
            raise ConfigError(f"IM_MODEL_DOWNLOAD_BASE must be an http(s) URL, got {v!r}")
        values["model_download_base"] = v.rstrip("/")

    data_dir = Path(get("data_dir") or defaults.data_dir).expanduser().resolve()
    values["data_dir"] = data_dir
    values["model_dir"] = Path(get("model_dir") or data_dir / "models").expanduser().resolve()
    values["media_dir"] = Path(get("media_dir") or data_dir / "media").expanduser().resolve()
    values["recordings_dir"] = (
        Path(get("recordings_dir") or data_dir / "recordings").expanduser().resolve()
    )
    url = get("database_url") or f"sqlite:///{data_dir / 'intellimeet.db'}"
    if "://" not in url:
        raise ConfigError(f"IM_DATABASE_URL must be an SQLAlchemy URL, got {url!r}")
    for key in ("data_dir", "model_dir", "recordings_dir"):
        path = Path(str(values[key]))
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{ENV_VARS[key][0]} must be a directory, but {path} is a file")
    check.database_url(url)
    values["database_url"] = url
    if (v := get("node_id")) is not None:
        if not NODE_ID.fullmatch(v):
            raise ConfigError(f"IM_NODE_ID must be 1-64 of A-Z, a-z, 0-9, '.', '_', '-', got {v!r}")
        values["node_id"] = v
    else:
        values["node_id"] = node_id_from_host()

    values.update(check.tls(get, lambda key: ENV_VARS[key][0]))

    settings = Settings(**values)  # type: ignore[arg-type]
    settings.webhook_endpoints  # noqa: B018  # checks the pair and the names now, at start
    if (
        not settings.api_token
        and not settings.allow_unauthenticated_api
        and not check.is_loopback(settings.api_host)
    ):
        raise ConfigError(
            f"refusing to serve the API on {settings.api_host} without IM_API_TOKEN: anyone "
            "who can reach it could place calls; set IM_API_TOKEN (or "
            "IM_ALLOW_UNAUTHENTICATED_API=1 if something else guards the port)"
        )
    if not settings.advertise_host:
        settings = _with_advertise_host(settings)
    return settings


NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def node_id_from_host() -> str:
    """The default IM_NODE_ID: the host name, cut to what an id may hold. Stable while the
    host keeps its name; a container's name changes with the container, so a fleet of
    containers sets IM_NODE_ID."""
    import socket

    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip("-")
    return name or "node"


def _with_advertise_host(settings: Settings) -> Settings:
    """Pick the address a peer should dial when the operator did not say.

    A wildcard bind says nothing useful to a peer, so fall back to the address of the
    interface that routes outward (no packet is sent: connecting a UDP socket only
    consults the routing table), and to loopback on an isolated host.
    """
    import dataclasses
    import socket

    host = settings.call_host
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("192.0.2.1", 9))  # TEST-NET-1, never routed anywhere real
                host = s.getsockname()[0]
        except OSError:
            host = "127.0.0.1"
    return dataclasses.replace(settings, advertise_host=host)
