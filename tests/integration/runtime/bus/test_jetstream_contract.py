"""The JetStream calls the conductor and the job store make, on a real nats-server after
``bus init``: the contract that the unit tests' in-memory copy (tests/support/memory_js.py)
must keep, run here against the real thing."""

from __future__ import annotations

import pytest
from support.jetstream_cases import *  # noqa: F403 (the shared contract tests)

from ghibli_anim.runtime.bus.connection import Bus


@pytest.fixture
def js(nbus: Bus):
    return nbus.js


@pytest.fixture
def nc(nbus: Bus):
    return nbus.nc
