"""End-to-end fixtures: one distributed stack (NATS, SeaweedFS, four service processes).

Tests share it and keep apart by job id; tests that kill or reconfigure
services start their own ``LocalStack``.
"""

from __future__ import annotations

import pytest

from ghibli_anim.devtools.stack import LocalStack


def tiny_stack_env(cache_dir) -> dict[str, str]:
    return {
        "ANIM_CACHE_DIR": str(cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_ACK_WAIT_S": "10",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_cache_dir):
    work_dir = tmp_path_factory.mktemp("stack")
    # Model paths are allowed under this folder only (tests refuse paths outside it).
    env = {**tiny_stack_env(tiny_cache_dir), "ANIM_MODEL_ROOTS": str(work_dir / "models")}
    s = LocalStack(work_dir, env=env)
    try:
        s.start()
    except BaseException:
        print(s.logs())
        s.stop()
        raise
    yield s
    s.stop()
