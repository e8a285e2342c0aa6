"""Opening the store a process is configured for (``ANIM_STORE``)."""

from __future__ import annotations

from typing import Any

from ghibli_anim.contracts.config import Settings
from ghibli_anim.runtime.store.base import Store
from ghibli_anim.runtime.store.local import LocalStore
from ghibli_anim.runtime.store.s3 import S3Store


def open_store(settings: Settings, **kwargs: Any) -> Store:
    """The store ``ANIM_STORE`` names: ``S3Store`` (s3) or ``LocalStore`` (local).

    ``kwargs`` go to ``S3Store`` (e.g. ``retry_budget_s``).
    """
    kind = settings["ANIM_STORE"]
    if kind == "local":
        return LocalStore(settings["ANIM_RUNS_DIR"])
    if kind == "s3":
        return S3Store.from_settings(settings, **kwargs)
    raise ValueError(f"ANIM_STORE: must be s3 or local, got {kind!r}")
