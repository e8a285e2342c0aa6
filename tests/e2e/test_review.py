"""Review before rendering in embedded mode: ``generate --review`` stops after planning
and writes the storyboard to the run folder; ``generate --from-run runs/JOB --approve
[--plan FILE]`` renders it, the bytes of a fresh job run with that storyboard as --plan.

Embedded mode in this process (real nats-server, the four services, the local store) on
the tiny profile, with depth guidance on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.runs import generate, use_runs_dir, write_board

from .test_fork import IDEA, SEED, SHOTS, _files

pytestmark = pytest.mark.timeout(600)

_FLAGS = ("--seed", SEED, "--depth", "--format", "gif,webp,contact")


@pytest.fixture
def runs(tmp_path: Path, tiny_cache_dir: Path, monkeypatch) -> Path:
    return use_runs_dir(tmp_path, tiny_cache_dir, monkeypatch)


def test_review_then_approve_an_edited_storyboard_equals_a_fresh_job(
    tmp_path: Path, runs: Path, capsys
) -> None:
    rc, reviewed = generate(runs, IDEA, "--frames", "4", "--review", *_FLAGS)
    assert rc == 0 and reviewed is not None
    folder = runs / reviewed
    record = json.loads((folder / "job.json").read_text())
    assert record["status"] == "PLANNED" and record["request"]["review"] is True
    assert record["request"]["seed"] == int(SEED)
    planned = json.loads((folder / "plan.json").read_text())
    assert len(planned["frames"]) == 4
    assert not (folder / "frames").exists()  # nothing rendered
    err = capsys.readouterr().err
    assert f"ghibli-anim generate --from-run {folder} --approve [--plan FILE]" in err

    # Bad approvals are refused naming the flag, and nothing is written.
    too_few = write_board(tmp_path / "three.json", SHOTS[:3])
    rc, none = generate(runs, "--from-run", str(folder), "--approve", "--plan", str(too_few))
    assert rc == 2 and none is None
    assert "--plan: frames: expected exactly 4 frames, got 3" in capsys.readouterr().err
    rc, none = generate(runs, "--from-run", str(folder), "--approve", "--from-frame", "1")
    assert rc == 2 and none is None
    assert "--approve: renders the whole storyboard" in capsys.readouterr().err

    edited = [*SHOTS[:2], {"prompt": "the boat slides over a little waterfall"}, SHOTS[3]]
    plan = write_board(tmp_path / "edited.json", edited)
    rc, approved = generate(runs, "--from-run", str(folder), "--approve", "--plan", str(plan))
    assert rc == 0 and approved is not None
    rc, fresh = generate(runs, IDEA, "--frames", "4", "--plan", str(plan), *_FLAGS)
    assert rc == 0 and fresh is not None
    approved_files = _files(runs / approved)
    assert approved_files == _files(runs / fresh) and len(approved_files) == 3 + 4 + 3
    manifest = json.loads((runs / approved / "manifest.json").read_text())
    assert manifest["status"] == "COMPLETED" and not manifest["request"].get("review")
    # Approving as planned renders the planned storyboard.
    rc, as_planned = generate(runs, "--from-run", str(folder), "--approve")
    assert rc == 0 and as_planned is not None
    assert json.loads((runs / as_planned / "plan.json").read_text()) == planned
    # A finished run is not waiting for review.
    rc, none = generate(runs, "--from-run", str(runs / fresh), "--approve")
    assert rc == 2 and none is None
    assert f"--approve: job {fresh} is COMPLETED" in capsys.readouterr().err
