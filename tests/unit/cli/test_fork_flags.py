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


def test_extend_flags_make_an_extend_request(tmp_path) -> None:
    """``extend JOB`` takes the same changes as ``fork JOB`` (a flag left out sets nothing)."""
    from ghibli_anim.cli.fork import extend_animation_request

    def extend(*flags: str) -> animation_pb2.ExtendAnimationRequest:
        return extend_animation_request(build_parser().parse_args(["extend", JOB, *flags]))

    assert extend("--frames", "2") == animation_pb2.ExtendAnimationRequest(
        parent_job_id=JOB, frames=2
    )
    plan = tmp_path / "plan.json"
    plan.write_text('{"frames": []}')
    req = extend(
        "--frames", "2", "--prompt", "4:a heron", "--plan", str(plan), "--strength",
        "0:0.2, 4:0.4", "--seed", "9", "--lora", "a.safetensors:0.5", "--depth", "--review",
        "--idempotency-key", "k",
    )  # fmt: skip
    assert [(e.frame, e.prompt) for e in req.prompts] == [(4, "a heron")]
    assert req.storyboard_json == '{"frames": []}' and req.frames == 2
    assert req.strength_schedule == "0:0.2, 4:0.4" and not req.HasField("strength")
    assert req.seed == 9 and list(req.loras) == ["a.safetensors:0.5"]
    assert req.depth and req.review and req.idempotency_key == "k"
