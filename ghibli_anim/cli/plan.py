"""`ghibli-anim plan`: a storyboard for an idea, written on this machine (no services).

The same storyboarder as the planner service (LLM backends with repairs, or the offline
planner), the same CLIP token check; prints a table, or the storyboard JSON with
``--json`` (which ``--plan FILE`` accepts).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ghibli_anim.contracts import config, limits

if TYPE_CHECKING:
    from ghibli_anim.contracts.storyboard import Storyboard


COMMANDS = ("plan",)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="write a storyboard for an idea on this machine (no services)")
    p.add_argument("idea", help="the one-line idea")
    p.add_argument("--frames", type=int, required=True, help=f"frames ({limits.FRAMES.describe()})")
    p.add_argument(
        "--backend",
        choices=config.PLANNER_BACKENDS,
        help="storyboard LLM (default: ANIM_PLANNER_BACKEND)",
    )
    p.add_argument("--profile", default="", help="model profile (default: ANIM_PROFILE)")
    p.add_argument("--json", action="store_true", help="print only the storyboard JSON")


def _camera_text(board: Storyboard, index: int) -> str:
    cam = board.frames[index].camera
    if cam.is_still:
        return "still"
    parts = []
    if cam.zoom != 1.0:
        parts.append(f"zoom {cam.zoom:g}")
    if cam.pan_x or cam.pan_y:
        parts.append(f"pan {cam.pan_x:g},{cam.pan_y:g}")
    if cam.rotate:
        parts.append(f"rotate {cam.rotate:g}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    """``ghibli-anim plan IDEA --frames N [--backend B] [--profile P] [--json]``."""
    from ghibli_anim.contracts.profiles import load_profile
    from ghibli_anim.contracts.storyboard import prompts_with_style
    from ghibli_anim.contracts.tokens import TokenCounter
    from ghibli_anim.services.planner.storyboard_llm import PlanningFailed, Storyboarder

    idea = limits.check_text("idea", args.idea, limits.IDEA_CHARS, required=True)
    limits.FRAMES.check("frames", args.frames)
    settings = config.load("client")
    storyboarder = Storyboarder.from_settings(settings, backend=args.backend)
    profile = load_profile(args.profile or settings["ANIM_PROFILE"], settings)
    counter = TokenCounter.for_profile(profile, settings)
    try:
        outcome = storyboarder.plan(idea, args.frames, style=profile.style, counter=counter)
    except PlanningFailed as exc:
        print(f"error: planning: {exc}", file=sys.stderr)
        return 1
    board = outcome.board
    prompts = prompts_with_style(board)
    # Offline storyboards are checked here too: an idea too long for CLIP fails like a job.
    too_long = counter.problems(prompts)
    if too_long:
        print(f"error: planning: {too_long[0]}", file=sys.stderr)
        return 1
    if outcome.notice:
        print(f"notice: {outcome.notice}", file=sys.stderr)
    if args.json:
        print(board.to_json())
        return 0
    model = board.planner.model if board.planner and board.planner.model else ""
    print(f"title    {board.title}")
    print(f"style    {board.style}")
    print(f"planner  {outcome.backend}{f' ({model})' if model else ''}")
    print(f"attempts {len(outcome.attempts)}")
    rows = [
        (
            str(i),
            "cut" if board.is_cut(i) and i else "continue" if i else "start",
            _camera_text(board, i),
            str(counter.count(prompts[i])),
            prompts[i],
        )
        for i in range(len(board.frames))
    ]
    headers = ("#", "continuity", "camera", "tokens", "prompt")
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers) - 1)]
    for row in [headers, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0
