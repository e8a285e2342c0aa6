"""Logging: one JSON object per line for services, plain text for humans.

``setup(settings)`` configures the root logger once per process. Extra fields go
through ``log.info("msg", extra={"job_id": ..., "frame": ...})`` and appear as
keys of the JSON object. Secrets never reach a log line: values of variables
marked secret in the config module are replaced with ``***`` wherever they appear.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable

# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class _Redactor(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Short values would redact ordinary words; real secrets are longer.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            record.msg = self.redact(record.getMessage())
            record.args = ()
            for key, value in list(record.__dict__.items()):
                if key not in _STANDARD and isinstance(value, str):
                    setattr(record, key, self.redact(value))
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        }
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return base


def setup(
    service: str,
    *,
    level: str = "INFO",
    fmt: str = "json",
    secrets: Iterable[str] = (),
    stream=None,
) -> None:
    """Configure the root logger for this process (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    handler.addFilter(_Redactor(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that are chatty at INFO.
    for noisy in ("httpx", "urllib3", "filelock", "nats"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # diffusers and transformers warn about harmless things on every model load
    # ("modules kept in float32", LoRA key notes); keep their errors only, and
    # their own progress bars off, unless debugging.
    quiet = logging.getLevelName(level) > logging.DEBUG
    for noisy in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR if quiet else logging.DEBUG)
    if quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def quiet_ml_libraries() -> None:
    """Errors only from diffusers and transformers, and no progress bars of theirs.

    They configure their own loggers when first imported (after ``setup``), so
    the model-loading code calls this once the libraries are in. DEBUG keeps all.
    """
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    import importlib

    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            lib = importlib.import_module(name)
        except ImportError:
            continue
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def setup_from_settings(service: str, settings) -> None:
    from ghibli_anim.contracts import config

    secrets = [settings.values.get(v.name) or "" for v in config.VARS if v.secret]
    setup(
        service,
        level=settings["ANIM_LOG_LEVEL"],
        fmt=settings["ANIM_LOG_FORMAT"],
        secrets=[s for s in secrets if isinstance(s, str)],
    )
