"""`ghibli-anim generate --from-run runs/JOB --extend M`: a finished run extended by M frames.

Embedded mode in this process (real nats-server, the four services, the local store) on the
tiny profile. An extension is a fork from K = N: frames 0..N-1 are the parent's, byte for
byte, and only frames N..N+M-1 are rendered, continuing the chain from frame N-1. Its new
shots are planned with the existing ones as context, by the offline planner or an LLM
backend (a local server speaking the chat-completions protocol), or given by the user.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from support.llm_server import ChatServer, existing_of, storyboard, valid_reply
from support.runs import generate, use_runs_dir, write_board

from ghibli_anim.contracts import keys

pytestmark = pytest.mark.timeout(600)

SEED = "7"
IDEA = "a paper boat drifts down a mossy stream"
SHOTS = [
    {"prompt": "a paper boat on a mossy stream", "camera": {"zoom": 1.05}},
    {"prompt": "the boat passes under a stone bridge", "camera": {"pan_x": 0.05}},
    {"prompt": "the boat spins in a small eddy", "camera": {"rotate": 3.0}},
]


@pytest.fixture
def runs(tmp_path: Path, tiny_cache_dir: Path, monkeypatch) -> Path:
    return use_runs_dir(tmp_path, tiny_cache_dir, monkeypatch, ANIM_PLANNER_BACKEND="offline")


def _frames(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((folder / "frames").glob("*.png"))]


def _renders(folder: Path, job_id: str) -> list[int]:
    records = [json.loads(p.read_text()) for p in sorted((folder / "frames").glob("*.json"))]
    return [r["frame"] for r in records if r["job_id"] == job_id]


def _shots(folder: Path) -> list[dict]:
    return json.loads((folder / "plan.json").read_text())["frames"]


def _parent(tmp_path: Path, runs: Path) -> str:
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
        str(write_board(tmp_path / "p.json", SHOTS)),
    )
    assert rc == 0 and parent is not None
    return parent


def test_extend_keeps_the_parent_and_renders_only_the_new_frames(
    tmp_path: Path, runs: Path, capsys
) -> None:
    parent = _parent(tmp_path, runs)
    capsys.readouterr()
    rc, ext = generate(runs, "--from-run", str(runs / parent), "--extend", "2")
    assert rc == 0 and ext is not None
    err = capsys.readouterr().err
    assert (
        f"fork of job {parent}: frames 0..2 kept (copied), frames 3..4 rendered, the planner "
        "continues the storyboard"
    ) in err, err
    frames, parent_frames = _frames(runs / ext), _frames(runs / parent)
    assert len(frames) == 5 and frames[:3] == parent_frames
    assert _renders(runs / ext, ext) == [3, 4]
    # The offline planner continued the parent's shots, which stay as they were.
    shots = _shots(runs / ext)
    assert len(shots) == 5 and shots[:3] == _shots(runs / parent)
    assert all(s["prompt"].startswith(IDEA) for s in shots[3:])
    # Frame 3 continues the chain from frame 2 (the fork's copy); frame 0 stays the colour
    # reference.
    record = json.loads((runs / ext / "frames" / "0003.json").read_text())
    assert record["spec"]["source_key"] == keys.frame_key(ext, 2)
    assert record["spec"]["color_reference_key"] == keys.frame_key(ext, 0)
    manifest = json.loads((runs / ext / "manifest.json").read_text())
    assert manifest["request"]["fork"] == {"parent_job_id": parent, "from_frame": 3}
    assert manifest["status"] == "COMPLETED" and len(manifest["frames"]) == 5
    assert Image.open(runs / ext / "animation.gif").n_frames == 5

    # The extension's bytes are a fresh job's with the same storyboard, for 2 frames of work.
    rc, fresh = generate(
        runs,
        IDEA,
        "--frames",
        "5",
        "--seed",
        SEED,
        "--format",
        "gif",
        "--plan",
        str(runs / ext / "plan.json"),
    )
    assert rc == 0 and fresh is not None
    assert _frames(runs / fresh) == frames
    assert (runs / fresh / "animation.gif").read_bytes() == (
        runs / ext / "animation.gif"
    ).read_bytes()

    # The user's new shots: --prompt for every new frame (or --plan of all five).
    rc, given = generate(
        runs,
        "--from-run",
        str(runs / parent),
        "--extend",
        "1",
        "--prompt",
        "3:the boat reaches a quiet pond",
    )
    assert rc == 0 and given is not None
    assert [s["prompt"] for s in _shots(runs / given)][3:] == ["the boat reaches a quiet pond"]
    assert _renders(runs / given, given) == [3]


def test_extend_with_depth_gives_a_fresh_jobs_bytes(tmp_path: Path, runs: Path) -> None:
    """With depth on, frame N is guided by frame N-1's depth map, which the parent's
    renderer never made (frame N-1 was its last): the depth service makes it, to the bytes
    the renderer of a fresh job stores."""
    plan = write_board(tmp_path / "p.json", SHOTS)
    common = ("--seed", SEED, "--format", "gif", "--depth")
    rc, parent = generate(runs, IDEA, "--frames", "3", "--plan", str(plan), *common)
    assert rc == 0 and parent is not None
    assert not (runs / parent / "depth" / "0002.png").exists()
    longer = write_board(tmp_path / "longer.json", [*SHOTS, {"prompt": "a quiet pond"}])
    rc, ext = generate(
        runs, "--from-run", str(runs / parent), "--extend", "1", "--plan", str(longer)
    )
    assert rc == 0 and ext is not None
    assert _renders(runs / ext, ext) == [3]
    rc, fresh = generate(runs, IDEA, "--frames", "4", "--plan", str(longer), *common)
    assert rc == 0 and fresh is not None

    def files(job: str) -> list[bytes]:
        depth = sorted((runs / job / "depth").glob("*.png"))
        assert [p.name for p in depth] == [f"{i:04d}.png" for i in range(3)]
        return [*_frames(runs / job), *(p.read_bytes() for p in depth)]

    assert files(ext) == files(fresh)


def test_an_llm_continues_the_storyboard_with_the_existing_prompts(
    tmp_path: Path, runs: Path, monkeypatch
) -> None:
    parent = _parent(tmp_path, runs)
    with ChatServer([valid_reply]) as server:
        monkeypatch.setenv("ANIM_PLANNER_BACKEND", "openai")
        monkeypatch.setenv("ANIM_PLANNER_BASE_URL", server.base_url)
        monkeypatch.setenv("ANIM_PLANNER_FALLBACK", "fail")
        rc, ext = generate(runs, "--from-run", str(runs / parent), "--extend", "2")
    assert rc == 0 and ext is not None
    (body,) = server.bodies
    assert [s["prompt"] for s in existing_of(body)["frames"]] == [s["prompt"] for s in SHOTS]
    shots = _shots(runs / ext)
    assert shots[:3] == _shots(runs / parent)
    assert [s["prompt"] for s in shots[3:]] == [f["prompt"] for f in storyboard(2)["frames"]]
    assert json.loads((runs / ext / "plan.json").read_text())["planner"]["backend"] == "openai"
    assert _renders(runs / ext, ext) == [3, 4]
    assert _frames(runs / ext)[:3] == _frames(runs / parent)


def test_bad_extensions_are_refused_naming_the_flag(tmp_path: Path, runs: Path, capsys) -> None:
    parent = _parent(tmp_path, runs)
    capsys.readouterr()
    src = str(runs / parent)

    def refused(*args: str) -> str:
        before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
        rc, new = generate(runs, *args)
        assert (rc, new) == (2, None)
        assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before  # nothing written
        return capsys.readouterr().err

    for m in ("0", "118", "-2"):
        err = refused("--from-run", src, "--extend", m)
        assert f"--extend: must be in 1..117 (job {parent} has 3 frames, the limit is 120)" in err
    err = refused("--from-run", src, "--extend", "2", "--from-frame", "2")
    assert "give --from-frame K or --extend M, not both" in err, err
    err = refused("--from-run", src, "--extend", "2", "--prompt", "3:a pond")
    assert "--prompt: without --plan, give a prompt for every new frame 3..4" in err, err
    assert "frame 4 is missing" in err, err
    err = refused("--from-run", src, "--extend", "1", "--prompt", "2:a pond")
    assert (
        "every new frame 3..3 (or none: the planner continues the storyboard); got frame 2" in err
    )
    four = write_board(tmp_path / "four.json", [*SHOTS, {"prompt": "a pond"}])
    err = refused("--from-run", src, "--extend", "2", "--plan", str(four))
    assert "storyboard_json: frames: expected exactly 5 frames, or the parent's 3" in err, err
    changed = write_board(
        tmp_path / "c.json", [SHOTS[0], {"prompt": "a cat"}, SHOTS[2], {"prompt": "a pond"}]
    )
    err = refused("--from-run", src, "--extend", "1", "--plan", str(changed))
    assert "storyboard_json: frames[1].prompt (with the style) differs" in err, err
    # The parent's frames deleted: nothing to extend from.
    (runs / parent / "frames" / "0002.png").unlink()
    err = refused("--from-run", src, "--extend", "1")
    assert f"fork.parent_job_id: frame 2 of job {parent} is not in the store" in err, err
