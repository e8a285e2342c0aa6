"""The offline storyboard planner: deterministic, no LLM, no network.

It turns the idea into N distinct shots that follow a simple arc (establish,
develop, peak, settle) with gentle camera moves, so a run without an LLM still
gives a coherent clip. Storyboards it writes say ``offline`` in their provenance,
and the CLI and an event say so too.

Distinctness: frames are split into at most ten segments, each with its own story
beat; inside a segment every frame gets a different scene detail, and a segment
never holds more frames than there are details (120 frames / 10 segments = 12 <= 13).

:func:`extend_offline` continues a storyboard (an extension of a finished clip): the new
shots take the beats after the last one the existing shots reached, and the scene
details go on cycling from where they were, skipping a prompt the storyboard holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.storyboard import Storyboard, parse_storyboard, prompt_key
from ghibli_anim.contracts.tokens import PromptTooLong

BEATS = (
    "opening wide shot",
    "the scene comes to life",
    "a closer view",
    "movement builds",
    "a gentle turn",
    "the heart of the moment",
    "a sweeping view",
    "the moment settles",
    "a quiet look back",
    "closing wide shot",
)
DETAILS = (
    "soft clouds drifting",
    "warm golden light",
    "gentle wind in the grass",
    "lush green hills",
    "birds in the distance",
    "painted sky",
    "sunlight through leaves",
    "long soft shadows",
    "glowing windows",
    "mist over the valley",
    "rolling fields",
    "sparkling water",
    "drifting petals",
)
# Camera per beat: a slow push in while the story builds, a drift at its heart,
# a slow pull back at the end. Small steps keep img2img chaining coherent.
_CAMERA = {
    "opening wide shot": {"zoom": 1.02},
    "a closer view": {"zoom": 1.03},
    "movement builds": {"zoom": 1.02, "pan_x": 0.01},
    "a gentle turn": {"pan_x": 0.015, "rotate": 0.5},
    "the heart of the moment": {"zoom": 1.01},
    "a sweeping view": {"pan_x": 0.02},
    "a quiet look back": {"pan_x": -0.01},
    "closing wide shot": {"zoom": 0.98},
}
NOTICE = "offline planner: the storyboard is derived from the idea without an LLM"


def _beat(index: int, frames: int, beats: Sequence[str] = BEATS) -> str:
    segments = min(len(beats), frames)
    segment = index * segments // frames
    if segments == 1:
        return beats[0]
    # Spread the segments over the whole arc, so 5 frames still open and close.
    return beats[round(segment * (len(beats) - 1) / (segments - 1))]


def title_from_idea(idea: str) -> str:
    """The idea's first eight words, capitalised, at most TITLE_CHARS characters."""
    words = idea.strip().rstrip(".!?").split()
    title = " ".join(words[:8])
    title = title[:1].upper() + title[1:]
    return title[: limits.TITLE_CHARS]


def plan_offline(
    idea: str,
    frames: int,
    *,
    style: str = "ghibli style",
    fits: Callable[[str], bool] | None = None,
) -> Storyboard:
    """A storyboard of ``frames`` shots for ``idea``.

    ``fits(prompt_with_style)`` tells whether a prompt fits the tokenizer's 77
    tokens; shots drop their detail, then their beat, until they fit. A bare idea
    that does not fit is left as is: validation then fails the job with the count.
    When the idea leaves no room for the beats of several frames, their prompts would
    be the same: PromptTooLong says so, naming the first frame without room.
    """
    limits.FRAMES.check("frames", frames)
    idea = " ".join(idea.split())
    shots = []
    for i in range(frames):
        beat = _beat(i, frames)
        candidates = [
            f"{idea}, {beat}, {DETAILS[i % len(DETAILS)]}",
            f"{idea}, {beat}",
            idea,
        ]
        prompt = candidates[-1]
        for candidate in candidates:
            if fits is None or fits(f"{candidate}, {style}"):
                prompt = candidate
                break
        if prompt == idea and frames > 1:
            raise PromptTooLong(
                f"frames[{i}].prompt: the idea leaves no room for the shot within CLIP's "
                f"{limits.CLIP_MAX_TOKENS} tokens (with the style line), so the frames "
                "would all be the same prompt; shorten the idea"
            )
        shots.append({"prompt": prompt, "camera": _CAMERA.get(beat, {})})
    return Storyboard.model_validate(
        {
            "title": title_from_idea(idea),
            "style": style,
            "frames": shots,
            "planner": {"backend": "offline", "model": "", "offline": True},
        }
    )


def _beats_after(shots: Sequence[str], new: int) -> Sequence[str]:
    """The beats the new shots take: those after the last beat the existing prompts
    reached (a storyboard the offline planner wrote names one in each prompt). An arc that
    ended, or named no beat, or leaves too few beats for ``new`` distinct shots, goes on
    with the whole arc but its opening (the clip is open already)."""
    last = -1
    for prompt in reversed(shots):
        found = [i for i, beat in enumerate(BEATS) if f", {beat}" in prompt]
        if found:
            last = max(found)
            break
    rest = BEATS[last + 1 :] if last >= 0 else ()
    if not rest or len(rest) * len(DETAILS) < new:
        rest = BEATS[1:]
    if len(rest) * len(DETAILS) < new:
        rest = BEATS
    return rest


def extend_offline(
    idea: str,
    board: Storyboard,
    frames: int,
    *,
    fits: Callable[[str], bool] | None = None,
) -> Storyboard:
    """``board`` continued to ``frames`` shots: its own shots as they are, then new ones for
    ``idea`` that go on with the story beats after the ones it reached (deterministic).

    Each new shot gets the next scene detail in the cycle that makes a prompt the
    storyboard does not hold yet; shots shed detail to fit ``fits`` as in
    :func:`plan_offline`, and PromptTooLong names the first that cannot be distinct.
    """
    limits.FRAMES.check("frames", frames)
    have = len(board.frames)
    if frames <= have:
        raise ValueError(f"frames: must be more than the storyboard's {have}, got {frames}")
    idea = " ".join(idea.split())
    style = board.style
    used = {prompt_key(shot.prompt) for shot in board.frames}
    beats = _beats_after([shot.prompt for shot in board.frames], frames - have)
    shots = []
    for k in range(frames - have):
        beat = _beat(k, frames - have, beats)
        details = [DETAILS[(have + k + j) % len(DETAILS)] for j in range(len(DETAILS))]
        candidates = [f"{idea}, {beat}, {d}" for d in details] + [f"{idea}, {beat}"]
        fitting = [c for c in candidates if fits is None or fits(f"{c}, {style}")]
        prompt = next((c for c in fitting if prompt_key(c) not in used), None)
        if prompt is None:
            raise PromptTooLong(
                f"frames[{have + k}].prompt: the idea leaves no room for a new shot within "
                f"CLIP's {limits.CLIP_MAX_TOKENS} tokens (with the style line) that differs "
                "from the storyboard's; shorten the idea, or give the new shots"
            )
        used.add(prompt_key(prompt))
        shots.append({"prompt": prompt, "camera": _CAMERA.get(beat, {})})
    data = board.model_dump(mode="json", exclude={"planner"})
    data["frames"] = [*data["frames"], *shots]
    data["planner"] = {"backend": "offline", "model": "", "offline": True}
    return parse_storyboard(data, frames)
