"""Which class runs each bus service: ``ghibli-anim serve NAME`` and the embedded mode ask here.

Each service module is imported only when its service is built, so ``serve planner`` and
``serve assembler`` never import torch (the renderer's and depth's modules do).
"""

from __future__ import annotations

import importlib

from ghibli_anim.contracts.config import SERVICES, Settings
from ghibli_anim.runtime.service import Service


def build(name: str, settings: Settings) -> Service:
    """The service ``name`` (planner, renderer, depth or assembler), built from ``settings``."""
    if name not in SERVICES:
        raise ValueError(f"service: must be one of {', '.join(SERVICES)}, got {name!r:.40}")
    module = importlib.import_module(f"ghibli_anim.services.{name}.service")
    return module.SERVICE(settings)
