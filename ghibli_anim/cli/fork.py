"""Forks and extensions: ``generate --from-run runs/JOB`` here, ``fork|extend JOB`` on a planner.

``generate --from-run runs/JOB --from-frame K`` forks a run of this machine (``--extend M``
extends it), ``fork JOB --from-frame K`` a job of a planner (ForkAnimation) and ``extend
JOB --frames M`` extends one (ExtendAnimation); approving
a run of this machine that waits for review: ``generate --from-run runs/JOB --approve
[--plan FILE]``.

The parent is a run folder of this machine's runs folder (``ANIM_RUNS_DIR``, the embedded
store) that ended: ``job.json``, which ``generate`` writes when a job ends, says how (a
completed run's ``manifest.json`` says so too). The fork's request is the parent's, with
the render flags given here replacing its values, and its storyboard is the parent's with
``--prompt K:TEXT`` edits, or ``--plan FILE``. ``--extend M`` is a fork from K = N that
renders M frames more: their shots are ``--plan``'s, ``--prompt``'s, or the planner's
continuation of the parent's storyboard. The job API makes the fork
(:mod:`ghibli_anim.services.planner.forks`); the same checks run here first, so a bad fork
is refused before any service starts and nothing is written.

A run made with ``generate --review`` stopped after planning (``job.json`` says PLANNED,
``plan.json`` holds the storyboard). Its process, and the job store with it, is gone, so
approving it renders a new job with the same request (seed included) and the storyboard
as planned, or ``--plan FILE``: the bytes of the job had it been approved in place.

Against a planner, ``fork`` sends only the parent's id, K and the changes given (prompt
edits, a storyboard, the render settings that may change from K), and ``extend`` the
parent's id, M and the same changes; the planner takes the rest from the parent and checks
everything (:func:`fork_animation_request`, :func:`extend_animation_request`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict, ParseError

from ghibli_anim.contracts import keys, lifecycle, limits
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.contracts.storyboard import Storyboard, parse_storyboard
from ghibli_anim.runtime.store.base import Store
from ghibli_anim.services.planner import forks

JOB_FILE = "job.json"
"""How an embedded run ended: its id, status, error and request (written by generate)."""
_FINISHED = {lifecycle.status_name(s) for s in lifecycle.TERMINAL}
# The reviewed run's request fields its approval does not take over.
_DROP_ON_APPROVE = ("idempotency_key", "client_id", "storyboard_json", "review")


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from-run",
        type=Path,
        metavar="DIR",
        help="fork a finished run (a folder of ANIM_RUNS_DIR): frames before --from-frame "
        "are its frames, the rest are rendered with the changes given",
    )
    p.add_argument(
        "--from-frame", type=int, metavar="K", help="with --from-run: the first frame rendered"
    )
    p.add_argument(
        "--extend",
        type=int,
        metavar="M",
        help="with --from-run: keep every frame of the run and render M more, continuing "
        "the chain from its last frame; the new shots are --plan's, --prompt's or the "
        "planner's continuation of the storyboard",
    )
    p.add_argument(
        "--approve",
        action="store_true",
        help="with --from-run: render a run waiting for review (generate --review), its "
        "storyboard as planned or --plan FILE",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="K:TEXT",
        help="with --from-run: frame K's new prompt (K >= --from-frame, or a new frame of "
        "--extend); repeatable",
    )


def job_record(
    request: animation_pb2.CreateAnimationRequest, anim: animation_pb2.Animation, error: str = ""
) -> dict[str, Any]:
    """``job.json``: how a run ended and the request it ran (seed resolved)."""
    recorded = MessageToDict(request, preserving_proto_field_name=True)
    recorded["seed"] = anim.seed
    for name in ("client_id", "storyboard_json"):
        recorded.pop(name, None)
    return {
        "job_id": anim.job_id,
        "status": lifecycle.status_name(anim.status),
        "error": error or anim.error,
        "request": recorded,
    }


def write_job_record(folder: Path, record: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / JOB_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _parent_record(folder: Path) -> dict[str, Any]:
    """The parent's status and request: job.json, else a completed run's manifest."""
    for name in (JOB_FILE, "manifest.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--from-run: cannot read {path} ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("request"), dict):
            return data
        raise ValueError(f"--from-run: {path} holds no request")
    raise ValueError(
        f"--from-run: {folder} is not a finished run (no {JOB_FILE} or manifest.json: "
        "still rendering, or its process was killed before the end was recorded)"
    )


def _prompt_edits(items: list[str]) -> dict[int, str]:
    edits: dict[int, str] = {}
    for item in items:
        index, sep, text = item.partition(":")
        if not sep or not index.strip().isdigit() or not text.strip():
            raise ValueError(f"--prompt: must be K:TEXT (a frame index and a prompt), got {item!r}")
        if int(index) in edits:
            raise ValueError(f"--prompt: frame {int(index)} is given twice")
        edits[int(index)] = text.strip()
    return edits


def fork_request(args: argparse.Namespace, runs_dir: Path) -> animation_pb2.CreateAnimationRequest:
    """The fork's CreateAnimationRequest, checked against the parent run folder
    (ValueError naming the flag or field; nothing is written)."""
    from ghibli_anim.runtime.store.local import LocalStore

    if args.from_frame is None and args.extend is None:
        raise ValueError(
            "--from-frame: required with --from-run (the first frame rendered), or --extend M"
        )
    if args.from_frame is not None and args.extend is not None:
        raise ValueError(
            "--extend: keeps every frame of the run (from frame N on, all new); give "
            "--from-frame K or --extend M, not both"
        )
    if args.idea or args.frames is not None or args.from_manifest is not None:
        raise ValueError(
            "--from-run: the fork takes the parent's idea, and its frame count from the "
            "storyboard; give no idea, --frames or --from-manifest"
        )
    if args.init_image is not None:
        raise ValueError("--init-image: a fork keeps the parent's frame 0")
    folder = _run_folder(args.from_run, runs_dir)
    parent_id = folder.name
    record = _parent_record(folder)
    status = record.get("status")
    if status not in _FINISHED:
        raise ValueError(
            f"--from-run: job {parent_id} is {status}; a fork needs a completed, failed or "
            "cancelled run"
        )
    if record["request"].get("init_upload_id"):
        raise ValueError(
            f"--from-run: job {parent_id} started from an init image; forks of such runs "
            "are not supported"
        )
    req = _recorded_request(record, args, forks.PARENT_ONLY)
    req.fork.parent_job_id = parent_id
    store = LocalStore(runs_dir)
    if args.extend is not None:
        return _extend_request(args, req, store)
    req.fork.from_frame = args.from_frame
    board = _plan(args.plan) if args.plan is not None else forks.read_board(store, parent_id)
    # K against the fork's frames first (1..N-1 for a fork of the parent's length).
    req.frames = len(board.frames)
    forks.check_request(req)
    parent = forks.read_parent(store, parent_id, args.from_frame)
    board = forks.edit_prompts(board, _prompt_edits(args.prompt), args.from_frame)
    req.storyboard_json = board.to_json()
    forks.board_of(req, parent)
    return req


def _plan(path: Path) -> Storyboard:
    """The storyboard of ``--plan`` (any frame count: the fork's is checked after)."""
    from ghibli_anim.cli.render_flags import read_plan

    try:
        return parse_storyboard(read_plan(path))
    except ValueError as exc:
        raise ValueError(f"--plan: {exc}") from None


def _extend_request(
    args: argparse.Namespace, req: animation_pb2.CreateAnimationRequest, store: Store
) -> animation_pb2.CreateAnimationRequest:
    """An extension by M frames: a fork from K = N, the parent's frame count, with N+M
    frames. The new shots are ``--plan``'s (N+M shots, the first N the parent's; or N, the
    parent's, for the planner to continue), with ``--prompt`` edits; or ``--prompt``'s alone
    (one for every new frame); or, with neither, the planner continues the parent's."""
    parent_id = req.fork.parent_job_id
    have = len(forks.read_board(store, parent_id).frames)
    forks.check_extension_frames(args.extend, have, parent_id, "--extend")
    parent = forks.read_parent(store, parent_id, have)
    frames = have + args.extend
    req.fork.from_frame = have
    req.frames = frames
    given = _plan(args.plan) if args.plan is not None else None
    board = forks.extension_board(parent.board, frames, given, _prompt_edits(args.prompt))
    req.storyboard_json = board.to_json()
    forks.check_request(req)
    forks.board_of(req, parent)
    return req


def describe(req: animation_pb2.CreateAnimationRequest) -> str:
    """What a fork keeps and what it renders, for the user (one line)."""
    kept, frames = req.fork.from_frame, req.frames
    parent = req.fork.parent_job_id
    rendered = f"frames {kept}..{frames - 1}" if frames - kept > 1 else f"frame {kept}"
    continued = forks.to_continue(req) is not None
    how = ", the planner continues the storyboard" if continued else ""
    return f"fork of job {parent}: frames 0..{kept - 1} kept (copied), {rendered} rendered{how}"


def _recorded_request(
    record: dict[str, Any], args: argparse.Namespace, drop: tuple[str, ...]
) -> animation_pb2.CreateAnimationRequest:
    """The run's recorded request without ``drop``, the render flags given here replacing
    its values (a repeated one, such as --lora, whole)."""
    from ghibli_anim.cli.render_flags import flag_request

    recorded = {k: v for k, v in record["request"].items() if k not in drop}
    req = animation_pb2.CreateAnimationRequest()
    try:
        ParseDict(recorded, req, ignore_unknown_fields=True)
    except ParseError as exc:
        raise ValueError(f"--from-run: the recorded request does not parse ({exc})") from None
    flags = flag_request(args)
    for field, _ in flags.ListFields():
        req.ClearField(field.name)
    req.MergeFrom(flags)  # only the fields set: the cleared ones, whole
    return req


def approve_request(
    args: argparse.Namespace, runs_dir: Path
) -> animation_pb2.CreateAnimationRequest:
    """The request that renders a run waiting for review: its own, with its storyboard as
    planned (``plan.json``) or ``--plan FILE``, checked like ``--plan`` (ValueError naming
    the flag or field; nothing is written)."""
    from ghibli_anim.cli.render_flags import read_plan

    if args.from_frame is not None or args.prompt or args.extend is not None:
        raise ValueError(
            "--approve: renders the whole storyboard; give no --from-frame, --extend or --prompt"
        )
    if args.idea or args.frames is not None or args.from_manifest is not None:
        raise ValueError(
            "--approve: the run's idea and frame count are kept; give no idea, --frames or "
            "--from-manifest"
        )
    if args.init_image is not None:
        raise ValueError("--init-image: the approved run keeps its own")
    folder = _run_folder(args.from_run, runs_dir)
    record = _parent_record(folder)
    planned = lifecycle.status_name(lifecycle.PLANNED)
    if record.get("status") != planned:
        raise ValueError(
            f"--approve: job {folder.name} is {record.get('status')}; only a run waiting for "
            f"review ({planned}: generate --review) can be approved"
        )
    req = _recorded_request(record, args, _DROP_ON_APPROVE)
    if args.plan is not None:
        req.storyboard_json = read_plan(args.plan)
    else:
        try:
            req.storyboard_json = (folder / "plan.json").read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--from-run: cannot read {folder / 'plan.json'} ({exc})") from None
    # Checked before any service starts (the planner checks it again, with the tokens).
    try:
        parse_storyboard(req.storyboard_json, req.frames)
    except ValueError as exc:
        raise ValueError(f"--plan: {exc}") from None
    return req


def _run_folder(path: Path, runs_dir: Path) -> Path:
    folder = path.expanduser().absolute()
    if folder.parent != runs_dir.expanduser().absolute() or not keys.is_job_id(folder.name):
        raise ValueError(
            f"--from-run: must be a run folder in ANIM_RUNS_DIR ({runs_dir}/JOB_ID), got {folder}"
        )
    return folder


# -- fork JOB and extend JOB against a planner -------------------------------------------


def add_server_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``fork JOB``: K, the storyboard changes and the render settings that
    ForkAnimation may change from frame K (each unset one stays the parent's)."""
    p.add_argument("job_id", help="the parent: a completed, failed or cancelled job")
    p.add_argument(
        "--from-frame",
        type=int,
        required=True,
        metavar="K",
        help="the first frame rendered anew (1..N-1); frames before it are the parent's",
    )
    p.add_argument(
        "--plan",
        type=Path,
        help="the fork's whole storyboard (JSON); its first K shots must be the parent's",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="K:TEXT",
        help="frame K's new prompt (K >= --from-frame); repeatable",
    )
    _add_change_flags(p, "K..")


def add_extend_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``extend JOB``: M, the new shots and the render settings of the new
    frames (each unset one stays the parent's)."""
    p.add_argument("job_id", help="the parent: a completed, failed or cancelled job")
    p.add_argument(
        "--frames",
        type=int,
        required=True,
        metavar="M",
        help="the frames to add after the parent's N (1..the frame limit - N)",
    )
    p.add_argument(
        "--plan",
        type=Path,
        help="the whole storyboard of N+M shots (JSON), its first N the parent's; without "
        "it (and --prompt) the planner continues the parent's storyboard",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="I:TEXT",
        help="new frame I's prompt (N <= I < N+M); without --plan, one for every new "
        "frame; repeatable",
    )
    _add_change_flags(p, "N..")


def _add_change_flags(p: argparse.ArgumentParser, first: str) -> None:
    """The render settings a fork or an extension may change for the frames it renders."""
    p.add_argument("--strength", help="img2img strength, or keyframes such as '0:0.15, 10:0.35'")
    p.add_argument("--guidance", help="guidance, or keyframes such as '0:7.5, 10:9'")
    p.add_argument("--seed", type=int, help=f"job seed that frames {first} derive their seeds from")
    p.add_argument(
        "--seed-mode",
        default="",
        help="increment, fixed or random, or keyframes such as '0:increment, 10:fixed'",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH_OR_ID[:SCALE]",
        help="a LoRA replacing the parent's (repeatable), e.g. style.safetensors:0.6",
    )
    p.add_argument(
        "--color-coherence",
        default="",
        help="lab, hsv, rgb or off (match each frame's colours to its reference frame)",
    )
    p.add_argument(
        "--depth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ControlNet depth guidance on (--depth) or off (--no-depth)",
    )
    p.add_argument(
        "--review",
        action="store_true",
        help="stop after planning: the new job waits (PLANNED) until `approve JOB`",
    )
    p.add_argument("--idempotency-key", default="", help="same key, same job (safe retries)")


def fork_animation_request(args: argparse.Namespace) -> animation_pb2.ForkAnimationRequest:
    """The ForkAnimationRequest of ``fork JOB`` (the planner validates it, naming the field
    of anything wrong; here only what the flags themselves get wrong)."""
    req = animation_pb2.ForkAnimationRequest(
        fork=animation_pb2.ForkFrom(parent_job_id=args.job_id, from_frame=args.from_frame)
    )
    _set_changes(req, args)
    return req


def extend_animation_request(args: argparse.Namespace) -> animation_pb2.ExtendAnimationRequest:
    """The ExtendAnimationRequest of ``extend JOB`` (checked like ``fork JOB``'s)."""
    req = animation_pb2.ExtendAnimationRequest(parent_job_id=args.job_id, frames=args.frames)
    _set_changes(req, args)
    return req


def _set_changes(
    req: animation_pb2.ForkAnimationRequest | animation_pb2.ExtendAnimationRequest,
    args: argparse.Namespace,
) -> None:
    """The storyboard, prompt edits and render settings the flags give (the fields of the
    same names in both requests)."""
    from ghibli_anim.cli.render_flags import read_plan, set_number_or_schedule, set_seed_mode

    req.prompts.extend(
        animation_pb2.PromptEdit(frame=i, prompt=text)
        for i, text in sorted(_prompt_edits(args.prompt).items())
    )
    req.loras.extend(args.lora)
    req.color_coherence = args.color_coherence
    req.idempotency_key = args.idempotency_key
    req.review = args.review
    if args.plan is not None:
        req.storyboard_json = read_plan(args.plan)
    for name in ("strength", "guidance"):
        set_number_or_schedule(req, name, getattr(args, name))
    if args.seed is not None:
        req.seed = limits.SEED.check("--seed", args.seed)
    set_seed_mode(req, args.seed_mode)
    if args.depth is not None:
        req.depth = args.depth
