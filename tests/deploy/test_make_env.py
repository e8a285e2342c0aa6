"""deploy/make_env.py (`make .env`): .env from .env.example with random secrets
that survive nats-server's parsing of environment values."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from support.deploy import (
    DEPLOY,
    ENV_EXAMPLE,
    NATS_CONF,
    filled_env,
    make_env_module,
    nats_users,
)

from ghibli_anim.runtime.processes import NatsServer

make_env = make_env_module()

pytestmark = pytest.mark.timeout(60)


def test_every_blank_secret_gets_a_distinct_safe_value() -> None:
    example = ENV_EXAMPLE.read_text()
    filled = make_env.fill(example)
    before = dict(
        line.split("=", 1)
        for line in example.splitlines()
        if "=" in line and not line.startswith("#")
    )
    after = dict(
        line.split("=", 1)
        for line in filled.splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert before.keys() == after.keys()
    secrets = [k for k in before if make_env.SECRET_NAME.match(k)]
    assert len(secrets) >= 8
    for key in before:
        if key in secrets:
            assert before[key] == "" and make_env.SAFE_SECRET.match(after[key]), key
        else:
            assert after[key] == before[key], key
    assert len({after[k] for k in secrets}) == len(secrets)

    # Comments and blank lines stay where they were.
    def others(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line or line.startswith("#")]

    assert others(filled) == others(example)


@pytest.mark.parametrize(
    "value", ["12345678901234567890", "short", "has#hash-0123456789", "has space 0123456789"]
)
def test_secrets_nats_would_misread_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="NATS_PLANNER_PASSWORD"):
        make_env.fill(f"NATS_PLANNER_PASSWORD={value}\n")


def test_writes_once_and_privately(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    run = [sys.executable, str(DEPLOY / "make_env.py"), str(ENV_EXAMPLE), str(target)]
    assert subprocess.run(run, capture_output=True, timeout=30).returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    first = target.read_text()
    assert subprocess.run(run, capture_output=True, timeout=30).returncode == 0
    assert target.read_text() == first  # never overwritten


def test_generated_passwords_log_in_to_nats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = filled_env()
    for var in nats_users().values():
        monkeypatch.setenv(var, env[var])
    server = NatsServer(tmp_path / "nats", config_file=NATS_CONF)
    server.start()

    async def login(user: str, password: str) -> None:
        nc = await nats.connect(server.url, user=user, password=password, allow_reconnect=False)
        await nc.close()

    try:
        for user, var in nats_users().items():
            asyncio.run(login(user, env[var]))
    finally:
        server.stop()
