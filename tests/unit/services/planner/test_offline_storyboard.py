"""services/planner/offline_storyboard.py: deterministic, distinct shots that fit CLIP's 77
tokens with the style line, shortened to fit when the idea is long."""

from __future__ import annotations

import pytest
from support.llm_planner import INJECTION, STYLE

from ghibli_anim.contracts.storyboard import Storyboard, parse_storyboard, prompts_with_style
from ghibli_anim.contracts.tokens import PromptTooLong
from ghibli_anim.services.planner.offline_storyboard import extend_offline, plan_offline
from ghibli_anim.services.planner.storyboard_llm import Storyboarder

IDEAS = [
    "a dragon glides over a medieval town at dusk",
    "a girl and her cat ride a bicycle along a seaside road on a summer morning",
    "a small robot tends a garden on a floating island above the clouds",
]


@pytest.mark.parametrize("idea", IDEAS)
@pytest.mark.parametrize("frames", [1, 2, 5, 24, 120])
def test_offline_plan_is_deterministic_distinct_and_fits(idea, frames, counter):
    board = plan_offline(idea, frames, fits=counter.fits)
    again = plan_offline(idea, frames, fits=counter.fits)
    assert board.to_json() == again.to_json()
    assert len(board.frames) == frames
    prompts = prompts_with_style(board)
    assert len({p.casefold() for p in prompts}) == frames
    assert all(p.endswith(", ghibli style") and idea in p for p in prompts)
    counter.check(prompts)
    assert board.planner.offline and board.planner.backend == "offline"
    # It is a valid storyboard for exactly that many frames.
    parse_storyboard(board.to_json(), frames)


def test_offline_prompts_of_a_long_idea_fit(counter):
    """48 words of idea (56 CLIP tokens) still leave room for every shot's beat and detail."""
    idea = " ".join(["a very small dragon with golden wings"] * 6)
    board = plan_offline(idea, 3, fits=counter.fits)
    for prompt in prompts_with_style(board):
        assert counter.fits(prompt), f"{counter.count(prompt)} CLIP tokens: {prompt!r}"
        assert prompt.startswith(idea)


def test_offline_plan_sheds_detail_to_fit(counter):
    """56 words of idea (65 CLIP tokens): with the style line, some shots' beat and detail do
    not fit. The planner drops the detail, then the beat, from the end, never the idea."""
    idea = " ".join(["a very small dragon with golden wings"] * 7)
    whole = prompts_with_style(plan_offline(idea, 3))  # no token check: nothing is shed
    assert not all(counter.fits(p) for p in whole), "the idea is too short to need shedding"
    prompts = prompts_with_style(plan_offline(idea, 3, fits=counter.fits))
    assert any(p != w for p, w in zip(prompts, whole, strict=True)), "nothing was shortened"
    for prompt, full in zip(prompts, whole, strict=True):
        assert counter.fits(prompt), f"{counter.count(prompt)} CLIP tokens: {prompt!r}"
        assert prompt.startswith(idea)
        # Shortened from the end: what is left (style line aside) begins the whole shot.
        assert full.startswith(prompt.removesuffix(", ghibli style"))


def test_an_idea_with_no_room_for_the_shots_is_refused_naming_the_frame(counter):
    """64 words (74 CLIP tokens): the bare idea fits, the idea with a beat does not, so every
    frame would get the same prompt. One frame is fine; several are refused, and the LLM
    storyboarder's offline fallback refuses the same way."""
    idea = " ".join(["a very small dragon with golden wings"] * 8)
    assert counter.fits(f"{idea}, ghibli style") and not counter.fits(
        f"{idea}, opening, ghibli style"
    )
    assert plan_offline(idea, 1, fits=counter.fits).frames[0].prompt == idea
    with pytest.raises(PromptTooLong, match=r"^frames\[0\]\.prompt: the idea leaves no room"):
        plan_offline(idea, 3, fits=counter.fits)
    with pytest.raises(PromptTooLong, match="shorten the idea"):
        Storyboarder(backend=None).plan(idea, 3, style=STYLE, counter=counter)


def test_offline_planner_with_the_injection_idea_gives_exactly_n(counter):
    out = Storyboarder(None).plan(INJECTION, 4, style=STYLE, counter=counter)
    assert len(out.board.frames) == 4 and out.board.planner.offline
    parse_storyboard(out.board.to_json(), 4)
    counter.check(prompts_with_style(out.board))


# -- continuing a storyboard (an extension of a finished clip) ---------------------------


def test_offline_extension_keeps_the_shots_and_goes_on_with_the_beats(counter):
    idea = IDEAS[0]
    first = plan_offline(idea, 4, fits=counter.fits)
    assert first.frames[-1].prompt.startswith(f"{idea}, closing wide shot")
    board = extend_offline(idea, first, 7, fits=counter.fits)
    assert board.to_json() == extend_offline(idea, first, 7, fits=counter.fits).to_json()
    assert board.frames[:4] == first.frames and board.title == first.title
    prompts = prompts_with_style(board)
    assert len({p.casefold() for p in prompts}) == 7
    counter.check(prompts)
    # The arc had closed: the new shots go on past its opening, details still cycling.
    assert [p.removeprefix(f"{idea}, ").removesuffix(", ghibli style") for p in prompts[4:]] == [
        "the scene comes to life, birds in the distance",
        "the heart of the moment, painted sky",
        "closing wide shot, sunlight through leaves",
    ]
    parse_storyboard(board.to_json(), 7)
    # Half an arc: the new shots take the beats after the last one reached.
    half = Storyboard.model_validate(
        {
            **first.model_dump(),
            "frames": [s.model_dump() for s in plan_offline(idea, 10).frames[:5]],
        }
    )
    assert "a gentle turn" in half.frames[-1].prompt
    more = extend_offline(idea, half, 8, fits=counter.fits)
    assert [s.prompt.split(", ")[1] for s in more.frames[5:]] == [
        "the heart of the moment",
        "the moment settles",
        "closing wide shot",
    ]


def test_offline_extension_of_any_storyboard_is_distinct_up_to_the_limit(counter):
    user = parse_storyboard(
        {"title": "t", "frames": [{"prompt": f"{IDEAS[1]}, birds in the distance"}]}, 1
    )
    board = extend_offline(IDEAS[1], user, 120, fits=counter.fits)
    assert board.frames[0] == user.frames[0] and board.planner.offline
    prompts = prompts_with_style(board)
    assert len({p.casefold() for p in prompts}) == 120
    counter.check(prompts)
    with pytest.raises(ValueError, match=r"^frames: must be more than the storyboard's 1, got 1"):
        extend_offline(IDEAS[1], user, 1)
    # The storyboarder without an LLM continues offline, and says so.
    out = Storyboarder(None).extend(IDEAS[1], user, 3, counter=counter)
    assert out.backend == "offline" and len(out.board.frames) == 3 and out.notice
    assert [a["backend"] for a in out.attempts] == ["offline"]
