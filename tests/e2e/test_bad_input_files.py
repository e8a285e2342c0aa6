"""Bad files and uploads at every edge: storyboards (``storyboard_json``, ``--plan``) and
init images (an upload's ``init_upload_id``, ``--init-image``) from the table in
support/bad_input.py over gRPC, the bus and the command line, and the files the command
line reads itself (``--plan``, ``--from-manifest``, ``--init-image``)."""

from __future__ import annotations

import pytest
from support.bad_input import (
    CLI_FILE_CASES,
    Case,
    assert_refused,
    cli_args,
    create_params,
    error_line,
    refuse_create,
    run_cli,
)

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize(("case", "edge"), create_params(files=True))
def test_bad_create_request(stack, case: Case, edge: str, tmp_path, capsys):
    refuse_create(stack, case, edge, tmp_path, capsys)


@pytest.mark.parametrize("case", CLI_FILE_CASES, ids=lambda c: c.id)
def test_bad_files_on_the_command_line(stack, case: Case, tmp_path, capsys):
    argv = ["submit", *cli_args(case, tmp_path), "--server", stack.planner_target]

    def act() -> tuple[str, str]:
        rc, err = run_cli(argv, capsys)
        return f"exit {rc}", error_line(err)

    assert_refused(stack, act, "exit 2", case.message)
