"""`ghibli-anim generate --from-run runs/JOB --from-frame K`: forks of a finished run.

Embedded mode in this process (real nats-server, the four services, the local store) on the
tiny profile, with depth guidance, colour coherence and camera moves on, so every piece of
state the chain carries from frame K-1 to frame K is exercised: a fork from K with an edited
storyboard must give the bytes of a fresh job run with that storyboard, rendering only N-K
frames, and keep them when the parent is deleted. Bad forks are refused before anything
is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.runs import generate, use_runs_dir, write_board

pytestmark = pytest.mark.timeout(600)

SEED = "7"
IDEA = "a paper boat drifts down a mossy stream"
# Frames 0..3: a cut at 3 would hide the chain, so every frame continues from the last.
SHOTS = [
    {"prompt": "a paper boat on a mossy stream", "camera": {"zoom": 1.05}},
    {"prompt": "the boat passes under a stone bridge", "camera": {"pan_x": 0.05}},
    {"prompt": "the boat spins in a small eddy", "camera": {"rotate": 3.0}},
    {"prompt": "the boat reaches a quiet pond"},
]


@pytest.fixture
def runs(tmp_path: Path, tiny_cache_dir: Path, monkeypatch) -> Path:
    return use_runs_dir(tmp_path, tiny_cache_dir, monkeypatch)


_FLAGS = ("--seed", SEED, "--depth", "--format", "gif,webp,contact", "--sharpen", "0.2")


def _files(folder: Path) -> dict[str, bytes]:
    """Frames, depth maps and outputs: every file whose bytes a fork must reproduce."""
    names = ["animation.gif", "animation.webp", "contact_sheet.png"]
    found = {n: (folder / n).read_bytes() for n in names}
    for sub in ("frames", "depth"):
        found |= {f"{sub}/{p.name}": p.read_bytes() for p in sorted((folder / sub).glob("*.png"))}
    return found


def _renders(folder: Path, job_id: str) -> list[int]:
    """The frames this job rendered itself (a copied frame's record names its renderer's job)."""
    records = [json.loads(p.read_text()) for p in sorted((folder / "frames").glob("*.json"))]
    return [r["frame"] for r in records if r["job_id"] == job_id]


def test_fork_equals_a_fresh_job_and_survives_its_parent(tmp_path: Path, runs: Path) -> None:
    rc, parent = generate(
        runs, IDEA, "--frames", "4", "--plan", str(write_board(tmp_path / "a.json", SHOTS)), *_FLAGS
    )
    assert rc == 0 and parent is not None
    assert json.loads((runs / parent / "job.json").read_text())["status"] == "COMPLETED"

    # Shots 2 and 3 rewritten, and shot 1's camera (it moves frame 1 into frame 2).
    edited = [
        SHOTS[0],
        {**SHOTS[1], "camera": {"zoom": 1.1, "pan_y": -0.04}},
        {"prompt": "the boat slides over a little waterfall", "palette": "shift"},
        {"prompt": "the boat rests among lily pads", "strength": 0.4},
    ]
    plan_b = write_board(tmp_path / "b.json", edited)
    rc, fork = generate(
        runs, "--from-run", str(runs / parent), "--from-frame", "2", "--plan", str(plan_b)
    )
    assert rc == 0 and fork is not None
    rc, fresh = generate(runs, IDEA, "--frames", "4", "--plan", str(plan_b), *_FLAGS)
    assert rc == 0 and fresh is not None

    forked, fresh_files, parent_files = (_files(runs / j) for j in (fork, fresh, parent))
    assert forked.keys() == fresh_files.keys()
    assert [n for n in forked if forked[n] != fresh_files[n]] == []
    # The edit changed what it should: frames 0..1 are the parent's, 2..3 are not.
    assert forked["frames/0001.png"] == parent_files["frames/0001.png"]
    assert forked["frames/0002.png"] != parent_files["frames/0002.png"]
    assert _renders(runs / fork, fork) == [2, 3]
    assert _renders(runs / fresh, fresh) == [0, 1, 2, 3]
    manifest = json.loads((runs / fork / "manifest.json").read_text())
    assert manifest["request"]["fork"] == {"parent_job_id": parent, "from_frame": 2}
    assert manifest["status"] == "COMPLETED"

    # The parent gone, the fork keeps every file, and a fork of the fork still works.
    shutil.rmtree(runs / parent)
    assert _files(runs / fork) == forked
    rc, grandchild = generate(
        runs, "--from-run", str(runs / fork), "--from-frame", "3", "--prompt", "3:a heron lands"
    )
    assert rc == 0 and grandchild is not None
    assert _renders(runs / grandchild, grandchild) == [3]
    again = _files(runs / grandchild)
    assert [again[f"frames/000{i}.png"] == forked[f"frames/000{i}.png"] for i in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    plan = json.loads((runs / grandchild / "plan.json").read_text())
    assert plan["frames"][3]["prompt"] == "a heron lands"
    assert plan["frames"][2] == json.loads((runs / fork / "plan.json").read_text())["frames"][2]


def _parent_run(tmp_path: Path, runs: Path) -> str:
    """A finished 3-frame run without depth (the cheapest parent)."""
    rc, parent = generate(
        runs,
        IDEA,
        "--frames",
        "3",
        "--seed",
        SEED,
        "--format",
        "gif",
        "--plan",
        str(write_board(tmp_path / "p.json", SHOTS[:3])),
    )
    assert rc == 0 and parent is not None
    return parent


def test_bad_forks_are_refused_naming_the_field(tmp_path: Path, runs: Path, capsys) -> None:
    parent = _parent_run(tmp_path, runs)
    capsys.readouterr()
    src = str(runs / parent)

    def refused(*args: str) -> str:
        before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
        rc, new = generate(runs, *args)
        assert (rc, new) == (2, None)
        assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before  # nothing written
        return capsys.readouterr().err

    for k in ("0", "3", "-1"):
        err = refused("--from-run", src, "--from-frame", k)
        assert "fork.from_frame: must be in 1..2" in err, err
    changed = [SHOTS[0], {**SHOTS[1], "negative_prompt": "rain"}, SHOTS[2]]
    err = refused(
        "--from-run",
        src,
        "--from-frame",
        "2",
        "--plan",
        str(write_board(tmp_path / "x.json", changed)),
    )
    assert "storyboard_json: frames[1].negative_prompt differs from the parent's" in err, err
    err = refused("--from-run", src, "--from-frame", "2", "--prompt", "1:a new start")
    assert "--prompt: frame 1 must be in 2..2" in err, err

    # A request-level change applies from frame K: frames before it stay the parent's.
    rc, fork = generate(runs, "--from-run", src, "--from-frame", "2", "--strength", "0.5")
    assert rc == 0 and fork is not None
    capsys.readouterr()
    assert _renders(runs / fork, fork) == [2]
    records = [json.loads((runs / fork / "frames" / f"000{i}.json").read_text()) for i in range(3)]
    assert [round(r["spec"]["strength"], 3) for r in records] == [0.15, 0.15, 0.5]
    for i in range(2):
        assert (runs / fork / "frames" / f"000{i}.png").read_bytes() == (
            runs / parent / "frames" / f"000{i}.png"
        ).read_bytes()

    # A run still going (or killed before its end was recorded): no job.json.
    job = json.loads((runs / parent / "job.json").read_text())
    (runs / parent / "job.json").write_text(json.dumps({**job, "status": "RENDERING"}))
    err = refused("--from-run", src, "--from-frame", "1")
    assert f"--from-run: job {parent} is RENDERING" in err, err
    (runs / parent / "job.json").unlink()
    (runs / parent / "manifest.json").unlink()
    err = refused("--from-run", src, "--from-frame", "1")
    assert "is not a finished run" in err, err
    (runs / parent / "job.json").write_text(json.dumps(job))

    # The parent's frame 1 deleted: a fork from 2 needs it, a fork from 1 does not.
    (runs / parent / "frames" / "0001.png").unlink()
    err = refused("--from-run", src, "--from-frame", "2")
    assert f"fork.parent_job_id: frame 1 of job {parent} is not in the store" in err, err
    err = refused("--from-run", str(tmp_path / "elsewhere" / parent), "--from-frame", "1")
    assert "--from-run: must be a run folder in ANIM_RUNS_DIR" in err, err
