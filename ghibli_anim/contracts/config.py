"""Configuration: every environment variable, declared once.

Each variable has a name, a default, whether it is required (and for which
roles), whether it is secret, and a line of docs. ``load()`` parses them into a
frozen ``Settings``; anything missing or malformed fails start-up with the
variable's name. ``ghibli-anim config`` prints them with secrets masked, and the
README's table is generated from ``VARS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Roles that read the configuration. "embedded" is `ghibli-anim generate`.
ROLES = ("planner", "renderer", "depth", "assembler", "trainer", "web", "client", "embedded")
SERVICES = ("planner", "renderer", "depth", "assembler")
SERVICE_ROLES = frozenset(SERVICES) | {"web"}
# Roles on the bus and the store; the web page reaches jobs only through the planner.
BUS_ROLES = frozenset(SERVICES)

PLANNER_BACKENDS = ("auto", "hf", "openai", "local", "offline")
"""Storyboard LLM backends (ANIM_PLANNER_BACKEND, ``ghibli-anim plan --backend``)."""

GRPC_PORTS = {"planner": 50051, "depth": 50052, "renderer": 50053, "assembler": 50054}
WEB_PORT = 8080


class ConfigError(ValueError):
    """A variable is missing or malformed; the message starts with its name."""


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a number > 0")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be a number >= 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port in 0..65535")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be an integer >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be an integer >= 0")
    return value


def _repairs(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 10:
        raise ValueError("must be an integer in 0..10")
    return value


def _http_url(text: str) -> str:
    from urllib.parse import urlsplit

    if text and (urlsplit(text).scheme not in ("http", "https") or not urlsplit(text).hostname):
        raise ValueError("must be an http:// or https:// URL")
    return text.rstrip("/")


def _target(text: str) -> str:
    """``host:port`` of a gRPC server (an IPv6 host in brackets)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT with a port in 1..65535")
    return text.strip()


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return parse


def _paths(text: str) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser() for p in text.split(os.pathsep) if p.strip())


@dataclass(frozen=True)
class Var:
    name: str
    """The environment variable's name."""
    default: str | None
    """Value when unset; None means no default."""
    doc: str
    """One line for the README and `ghibli-anim config`."""
    parse: Callable[[str], Any] = str
    """Turns the text into a typed value; raises ValueError with the rule."""
    required_for: frozenset[str] = frozenset()
    """Roles that fail start-up when the variable is unset and has no default."""
    secret: bool = False
    """Masked by `ghibli-anim config`, never logged."""


def _v(name, default, doc, parse=str, required_for=(), secret=False) -> Var:
    return Var(name, default, doc, parse, frozenset(required_for), secret)


_S3_ROLES = ("planner", "renderer", "depth", "assembler")

VARS: tuple[Var, ...] = (
    _v("ANIM_NATS_URL", None, "NATS server URL(s), comma separated.", str, BUS_ROLES),
    _v("ANIM_NATS_USER", "", "NATS user name of this service (empty = anonymous)."),
    _v("ANIM_NATS_PASSWORD", "", "NATS password of this service.", secret=True),
    _v("ANIM_NATS_CREDS", "", "Path of a NATS .creds file (alternative to user/password)."),
    _v("ANIM_STORE", "s3", "Where frames and outputs live: s3 or local.", _choice("s3", "local")),
    _v(
        "ANIM_S3_ENDPOINT",
        None,
        "S3 endpoint host:port (MinIO, SeaweedFS, a cloud bucket).",
        str,
        _S3_ROLES,
    ),
    _v("ANIM_S3_ACCESS_KEY", None, "S3 access key.", str, _S3_ROLES, secret=True),
    _v("ANIM_S3_SECRET_KEY", None, "S3 secret key.", str, _S3_ROLES, secret=True),
    _v("ANIM_S3_BUCKET", "animations", "Bucket for jobs, uploads and LoRAs."),
    _v("ANIM_S3_REGION", "us-east-1", "Region used for signing (no location look-up)."),
    _v("ANIM_S3_SECURE", "false", "Use HTTPS to reach ANIM_S3_ENDPOINT.", _bool),
    _v(
        "ANIM_S3_PUBLIC_ENDPOINT",
        "",
        "Endpoint presigned URLs are signed for (scheme://host:port; empty = ANIM_S3_ENDPOINT).",
    ),
    _v("ANIM_PRESIGN_TTL_S", "900", "Lifetime of presigned URLs, seconds.", _positive_int),
    _v(
        "ANIM_RUNS_DIR",
        "./runs",
        "Folder of the local store (key jobs/{id}/X -> DIR/{id}/X).",
        Path,
    ),
    _v(
        "ANIM_GRPC_PORT",
        "",
        "gRPC port (empty = the service's default: planner 50051, "
        "depth 50052, renderer 50053, assembler 50054).",
        lambda t: _port(t) if t else None,
    ),
    _v("ANIM_GRPC_HOST", "0.0.0.0", "Address the gRPC server binds."),
    _v(
        "ANIM_AUTH_TOKENS_FILE",
        "",
        "File of CLIENT_ID:TOKEN lines; when set, gRPC calls "
        "(but health and reflection) need `authorization: Bearer TOKEN`.",
    ),
    _v("ANIM_TLS_CERT", "", "Server certificate (PEM) for gRPC TLS."),
    _v("ANIM_TLS_KEY", "", "Server private key (PEM) for gRPC TLS."),
    _v("ANIM_TLS_CLIENT_CA", "", "CA (PEM) of client certificates: set it for mutual TLS."),
    _v(
        "ANIM_CLIENT_TOKEN",
        "",
        "Bearer token the CLI and the web page send to the planner.",
        secret=True,
    ),
    _v("ANIM_CLIENT_TLS_CA", "", "CA (PEM) the CLI trusts for a TLS planner; empty = plaintext."),
    _v("ANIM_CLIENT_TLS_CERT", "", "Client certificate (PEM) the CLI presents for mutual TLS."),
    _v("ANIM_CLIENT_TLS_KEY", "", "Client private key (PEM) for mutual TLS."),
    _v(
        "ANIM_PLANNER_TARGET",
        None,
        "Web: HOST:PORT of the planner's gRPC API, reached with the ANIM_CLIENT_* token "
        "and TLS settings.",
        _target,
        ("web",),
    ),
    _v("ANIM_WEB_HOST", "0.0.0.0", "Web: address the HTTP server binds."),
    _v("ANIM_WEB_PORT", str(WEB_PORT), "Web: HTTP port of the page.", _port),
    _v(
        "ANIM_GRPC_KEEPALIVE_S",
        "10",
        "gRPC keepalive: servers and clients ping an idle connection this often and drop it "
        "when no answer comes within as long again, so a dead peer is noticed in twice this.",
        _positive_float,
    ),
    _v(
        "ANIM_WATCH_HEARTBEAT_S",
        "15",
        "Planner: WatchAnimation sends a heartbeat after this many quiet seconds (clients "
        "resume a stream that stays silent for 4 times as long).",
        _positive_float,
    ),
    _v("ANIM_MAX_CONCURRENT_RPCS", "256", "Concurrent gRPC calls a server accepts.", _positive_int),
    _v(
        "ANIM_MAX_JOBS_PER_CLIENT",
        "16",
        "Unfinished jobs one client may have; more get RESOURCE_EXHAUSTED (exact under "
        "concurrent creates; a check reads at most this many jobs).",
        _positive_int,
    ),
    _v(
        "ANIM_ACK_WAIT_S",
        "30",
        "JetStream AckWait of work consumers, seconds; workers heartbeat every third of it.",
        _positive_float,
    ),
    _v(
        "ANIM_MAX_DELIVER", "5", "Deliveries of a work message before the job fails.", _positive_int
    ),
    _v(
        "ANIM_DRAIN_S",
        "20",
        "Seconds a stopping service (SIGTERM) gives the work in hand before handing it back "
        "(nak) and exiting 0; with the rest of the shutdown (~5 s) it must fit the platform's "
        "grace period (Kubernetes' default: 30 s).",
        _positive_float,
    ),
    _v("ANIM_PROFILE", "sd15-ghibli", "Default profile when a request names none."),
    _v("ANIM_PROFILES_FILE", "", "A profiles TOML file that replaces the built-in one."),
    _v(
        "ANIM_MODEL_ROOTS",
        "",
        "Folders (os.pathsep separated) where model paths may point.",
        _paths,
    ),
    _v(
        "ANIM_CACHE_DIR",
        "~/.cache/ghibli-anim",
        "Cache of generated tiny models.",
        lambda t: Path(t).expanduser(),
    ),
    _v(
        "ANIM_PRELOAD",
        "true",
        "Renderer and depth: load the models of ANIM_PROFILE at start, and report ready "
        "and take work only once they are loaded; a model that cannot load (not fetched, "
        "HF_HUB_OFFLINE) ends the process with the reason. false: load them for the first "
        "message (the embedded mode always does). The device is checked at start either way.",
        _bool,
    ),
    _v(
        "ANIM_DEVICE",
        "auto",
        "Torch device: auto, cuda, mps or cpu (the renderer and depth check it at start: "
        "one that is missing or cannot compute ends the process with the reason).",
        _choice("auto", "cuda", "mps", "cpu"),
    ),
    _v(
        "ANIM_DTYPE",
        "auto",
        "Torch dtype: auto, float16, bfloat16 or float32.",
        _choice("auto", "float16", "bfloat16", "float32"),
    ),
    _v(
        "ANIM_LOW_VRAM",
        "false",
        "Renderer: model CPU offload (with an accelerator) and VAE slicing, for small GPUs.",
        _bool,
    ),
    _v(
        "ANIM_COMPILE",
        "false",
        "Renderer: channels_last + torch.compile of the UNet and ControlNet "
        "(slow first frame, faster after).",
        _bool,
    ),
    _v(
        "ANIM_FUSE_LORA",
        "true",
        "Renderer: fuse LoRAs into the weights for inference (unfused again when a job "
        "needs other LoRAs or scales).",
        _bool,
    ),
    _v(
        "ANIM_FRAME_CACHE",
        "4",
        "Renderer: frames kept in memory so the next frame on this replica skips the "
        "store read (0 = off).",
        _non_negative_int,
    ),
    _v(
        "ANIM_RENDER_CONCURRENCY",
        "2",
        "Renderer: works held at once (frames of different jobs): one job's storing, "
        "reading and depth map overlap another's diffusion; model calls on the device "
        "still run one at a time.",
        _positive_int,
    ),
    _v(
        "ANIM_RENDER_AHEAD",
        "true",
        "Renderer: once a frame is rendered, start the job's next frame from it in memory "
        "while the frame is stored and the next work is on its way (used when that work "
        "arrives here, dropped otherwise; off with ANIM_FRAME_CACHE=0).",
        _bool,
    ),
    _v(
        "ANIM_TINY_VAE",
        "false",
        "Planner: decode frames with the profile's tiny autoencoder (TAESD): faster, "
        "slightly softer (set it for renderers too: their ANIM_PRELOAD loads it).",
        _bool,
    ),
    _v(
        "ANIM_PLANNER_BACKEND",
        "auto",
        "Storyboard LLM: auto, hf, openai, local or offline.",
        _choice(*PLANNER_BACKENDS),
    ),
    _v(
        "ANIM_PLANNER_MODEL",
        "openai/gpt-oss-20b",
        "Model the hf and openai planner backends ask for (a hub id, or the server's name); "
        "the default is served by Hugging Face Inference Providers. The seed paper's: "
        "mistralai/Mistral-7B-Instruct-v0.3 (on a server that serves it: ANIM_PLANNER_BASE_URL).",
    ),
    _v(
        "ANIM_PLANNER_PROVIDER",
        "auto",
        "Inference provider of the hf backend (auto = Hugging Face's routing).",
    ),
    _v(
        "ANIM_PLANNER_BASE_URL",
        "",
        "Chat server URL ending before /chat/completions, e.g. http://localhost:8000/v1: "
        "required by the openai backend; for hf, an endpoint replacing the provider.",
        _http_url,
    ),
    _v(
        "ANIM_PLANNER_API_KEY",
        "",
        "Bearer key of the planner's chat server (hf: overrides HF_TOKEN).",
        secret=True,
    ),
    _v(
        "ANIM_PLANNER_TIMEOUT_S",
        "60",
        "Limit of one planner LLM request, seconds (not retried; a local model stops at it).",
        _positive_float,
    ),
    _v(
        "ANIM_PLANNER_RETRIES",
        "3",
        "Retries of a planner LLM call answered 429 or 5xx (or unreachable), with backoff.",
        _non_negative_int,
    ),
    _v(
        "ANIM_PLANNER_REPAIRS",
        "2",
        "Times an invalid storyboard goes back to the LLM with its errors (0..10).",
        _repairs,
    ),
    _v(
        "ANIM_PLANNER_FALLBACK",
        "offline",
        "When the LLM gives no valid storyboard: offline (plan offline, with a warning) or fail.",
        _choice("offline", "fail"),
    ),
    _v(
        "ANIM_PLANNER_LOCAL_MODEL",
        "",
        "Text-generation model of the local backend: a hub id or a folder under ANIM_MODEL_ROOTS.",
    ),
    _v(
        "ANIM_RETENTION_DAYS",
        "0",
        "Finished jobs older than this many days are deleted by "
        "the planner's hourly sweep (0 = keep forever).",
        lambda t: _non_negative(t),
    ),
    _v(
        "ANIM_JOB_TIMEOUT_S",
        "86400",
        "A job not finished this many seconds after it was created (or last resumed) fails "
        "with the state and frame it was in, a job waiting for review (PLANNED) included; "
        "the planner checks every min(60, limit/4) s (0 = no limit).",
        _non_negative,
    ),
    _v(
        "ANIM_METRICS_PORT",
        "",
        "Prometheus metrics at http://ANIM_GRPC_HOST:PORT/metrics (empty = off, 0 = a free "
        "port, logged; the deploy files use 9090).",
        lambda t: _port(t) if t else None,
    ),
    _v(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "OpenTelemetry collector base URL, e.g. http://otel-collector:4318: spans go to "
        "ENDPOINT/v1/traces by OTLP over HTTP (empty = no traces exported; other OTEL_* "
        "variables are read by the SDK).",
        _http_url,
    ),
    _v(
        "ANIM_FAULT",
        "",
        "Test-only fault hooks, e.g. render:3:pause (see "
        "ghibli_anim/runtime/faults.py); inert unless set. Never set it in production.",
    ),
    _v("ANIM_LOG_LEVEL", "INFO", "Log level.", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
    _v("ANIM_LOG_FORMAT", "json", "Log format: json (services) or text.", _choice("json", "text")),
    _v("HF_TOKEN", "", "Hugging Face token (hf planner backend, gated models).", secret=True),
    _v("HF_HOME", "", "Hugging Face cache folder (models are downloaded here)."),
)

_BY_NAME = {v.name: v for v in VARS}


@dataclass(frozen=True)
class Settings:
    """Typed configuration of one process."""

    role: str
    values: Mapping[str, Any] = field(repr=False)

    def __getitem__(self, name: str) -> Any:
        if name not in _BY_NAME:
            raise KeyError(f"{name} is not a declared variable")
        return self.values[name]

    def grpc_port(self) -> int:
        port = self.values["ANIM_GRPC_PORT"]
        if port is not None:
            return port
        if self.role == "web":
            return WEB_PORT
        return GRPC_PORTS.get(self.role, 0)


def _required(var: Var, role: str, env: Mapping[str, str]) -> bool:
    if role not in var.required_for:
        return False
    # S3 settings matter only when the store is S3.
    if var.name.startswith("ANIM_S3_"):
        return env.get("ANIM_STORE", "s3") == "s3"
    return True


def load(role: str, env: Mapping[str, str] | None = None) -> Settings:
    """Parse every variable for ``role``; raise ConfigError naming the first bad one."""
    if role not in ROLES:
        raise ConfigError(f"role: must be one of {', '.join(ROLES)}, got {role!r}")
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for var in VARS:
        raw = env.get(var.name)
        if raw is None or (raw == "" and var.default not in (None, "")):
            raw = var.default
        if raw is None:
            if _required(var, role, env):
                raise ConfigError(f"{var.name}: required for {role} but not set ({var.doc})")
            values[var.name] = None
            continue
        try:
            values[var.name] = var.parse(raw)
        except (ValueError, TypeError) as exc:
            shown = "***" if var.secret else repr(raw)
            raise ConfigError(f"{var.name}: {exc}, got {shown}") from None
    return Settings(role=role, values=values)


def describe(env: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(name, effective value with secrets masked, doc) for `ghibli-anim config`."""
    env = os.environ if env is None else env
    rows = []
    for var in VARS:
        raw = env.get(var.name)
        shown = raw if raw is not None else (var.default if var.default is not None else "")
        if var.secret and shown:
            shown = "***"
        rows.append((var.name, shown, var.doc))
    return rows


def markdown_table() -> str:
    """The README's table of variables."""
    lines = ["| variable | default | required for | secret | meaning |", "|---|---|---|---|---|"]
    for var in VARS:
        default = f"`{var.default}`" if var.default else ""
        roles = ", ".join(sorted(var.required_for))
        lines.append(
            f"| `{var.name}` | {default} | {roles} | {'yes' if var.secret else ''} | {var.doc} |"
        )
    return "\n".join(lines)
