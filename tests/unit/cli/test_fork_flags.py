"""cli/fork.py: the ForkAnimationRequest that ``ghibli-anim fork JOB`` flags make (a flag
left out sets nothing, so the planner keeps the parent's value)."""

from __future__ import annotations

import pytest

from ghibli_anim.cli.fork import fork_animation_request
from ghibli_anim.cli.main import build_parser
from ghibli_anim.contracts.pb import animation_pb2, types_pb2

JOB = "0123456789abcdef0123456789abcdef"


def _request(*flags: str) -> animation_pb2.ForkAnimationRequest:
    return fork_animation_request(build_parser().parse_args(["fork", JOB, *flags]))


def test_no_flag_changes_nothing() -> None:
    req = _request("--from-frame", "3")
    assert req == animation_pb2.ForkAnimationRequest(
        fork=animation_pb2.ForkFrom(parent_job_id=JOB, from_frame=3)
    )
    assert not req.HasField("depth") and not req.HasField("strength")


def test_flags_set_the_changes(tmp_path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"frames": []}')
    req = _request(
        "--from-frame", "2", "--prompt", "3:a heron", "--prompt", "2:a weir",
        "--plan", str(plan), "--strength", "0.4", "--guidance", "0:7, 4:9", "--seed", "9",
        "--seed-mode", "fixed", "--lora", "a.safetensors:0.5", "--color-coherence", "hsv",
        "--no-depth", "--review",
    )  # fmt: skip
    assert [(e.frame, e.prompt) for e in req.prompts] == [(2, "a weir"), (3, "a heron")]
    assert req.storyboard_json == '{"frames": []}'
    assert req.strength == pytest.approx(0.4) and not req.strength_schedule
    assert req.guidance_schedule == "0:7, 4:9" and not req.HasField("guidance")
    assert req.seed == 9 and req.seed_mode == types_pb2.SEED_MODE_FIXED
    assert list(req.loras) == ["a.safetensors:0.5"] and req.color_coherence == "hsv"
    assert req.HasField("depth") and not req.depth and req.review
    assert _request("--from-frame", "2", "--depth").depth
    assert _request("--from-frame", "2", "--seed-mode", "0:increment, 4:fixed").seed_mode_schedule


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--prompt", "3:a", "--prompt", "3:b"), "--prompt: frame 3 is given twice"),
        (("--prompt", "x:a"), "--prompt: must be K:TEXT"),
        (("--seed", "-1"), "--seed: must be an integer in 0..4294967295, got -1"),
        (("--seed-mode", "sometimes"), "seed_mode: must be one of"),
    ],
)
def test_bad_flags_name_the_flag(flags, message) -> None:
    with pytest.raises(ValueError) as info:
        _request("--from-frame", "2", *flags)
    assert str(info.value).startswith(message)
