"""Bad input on the command line: ``ghibli-anim submit`` with every CreateAnimation field of
the table in support/bad_input.py, job commands with unknown and malformed job ids, and
``generate`` refusing before it starts anything; exit 2 (1 for a refusal that is not bad
input) and the message on stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.bad_input import (
    IDEA,
    INVALID,
    JOB_CALLS,
    JOB_IDS,
    Case,
    assert_refused,
    counts,
    create_params,
    error_line,
    job_id_params,
    refuse_create,
    run_cli,
)

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("case", create_params("cli"))
def test_bad_create_request(stack, case: Case, tmp_path, capsys):
    refuse_create(stack, case, "cli", tmp_path, capsys)


@pytest.mark.parametrize(("method", "which"), job_id_params("cli"))
def test_unknown_or_malformed_job_id(stack, method, which, capsys):
    command, _ = JOB_CALLS[method]
    job_id, code, message = JOB_IDS[which]

    def act() -> tuple[str, str]:
        rc, err = run_cli([command, job_id, "--server", stack.planner_target], capsys)
        return f"exit {rc}", error_line(err)

    # INVALID_ARGUMENT exits 2 (bad input); any other refusal exits 1.
    assert_refused(stack, act, "exit 2" if code == INVALID else "exit 1", message)


GENERATE_CASES = [
    ("frames-zero", ["--frames", "0"], "frames: must be an integer in 1..120, got 0"),
    (
        "width",
        ["--frames", "2", "--width", "513"],
        "width: must be an integer in 64..1024, a multiple of 8, got 513",
    ),
    (
        "lora-path",
        ["--frames", "2", "--lora", "../escape"],
        "loras[0]: local path '../escape' is not allowed: ANIM_MODEL_ROOTS names no folder "
        "for models",
    ),
]


@pytest.mark.parametrize(
    ("argv", "message"), [pytest.param(a, m, id=i) for i, a, m in GENERATE_CASES]
)
def test_generate_refuses_before_starting_anything(argv, message, tmp_path, tiny_cache_dir):
    """The real program: exit 2, the message on stderr, no services started, nothing written."""
    env = {
        "PATH": str(Path(sys.executable).parent),
        "ANIM_RUNS_DIR": str(tmp_path / "runs"),
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
    }
    out = subprocess.run(
        [sys.executable, "-m", "ghibli_anim.cli", "generate", IDEA, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert error_line(out.stderr) == message
    assert not (tmp_path / "runs").exists()


def test_submit_program_exit_code(stack):
    """The installed program, not just ``cli.main``: exit 2 and the server's message."""
    before = counts(stack)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ghibli_anim.cli",
            "submit",
            IDEA,
            "--frames",
            "0",
            "--server",
            stack.planner_target,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "error: INVALID_ARGUMENT: frames: must be an integer in 1..120, got 0" in out.stderr
    assert counts(stack) == before
