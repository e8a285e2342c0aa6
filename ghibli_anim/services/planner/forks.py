"""Forks: a new job that keeps frames 0..K-1 of a finished one and renders K..N-1 anew.

A fork is a CreateAnimationRequest with ``fork`` set (the parent's id and K); ForkAnimation
(gRPC, and ``anim.request.fork`` on the bus) names only the parent, K and the changes, and
:func:`request_of_fork` turns it into that request from the parent's. Frame K+1
depends only on frame K and its spec (ARCHITECTURE.md, "One frame's path"), and everything
frame K starts from is stored: frame K-1's PNG (its source), the depth map of frame K-1
(with depth on), the colour reference frame's PNG, and the seed, camera move and every
other setting in frame K's FrameSpec, which :mod:`.frame_specs` resolves from the request
and the storyboard alone (no state carries over from frame to frame but these). So a fork
whose first K shots are the parent's renders frames K..N-1 to the very bytes a fresh job
with the fork's storyboard would, while rendering only N-K frames.

The steps, each a plain function here, shared by every way a fork is asked for:

1. :func:`read_parent` (at creation, before anything is written): the parent's storyboard
   and frames 0..K-1 with their records must be in the store; each record holds the
   FrameSpec that ran (the renderer writes it), so frames 0..K-1 keep exactly their specs.
2. :func:`check_board`: the fork's storyboard holds the parent's first K shots (the camera
   of shot K-1 excepted: it moves frame K-1 before it seeds frame K, so it is frame K's).
   Request-level changes (strength, guidance, seed, LoRAs, coherence, depth...) apply from
   frame K: frames 0..K-1 are the parent's whatever the request says.
3. :func:`copy_frames`: frames 0..K-1, their records and depth maps are copied to the
   fork's keys (a server-side copy on S3), so deleting the parent loses nothing.
4. :func:`fork_specs` (the plan step): the fork's FrameSpecs are the parent's for frames
   0..K-1 (rekeyed to the fork) and the ones the fork's request resolves from K on; the
   frames copied in step 3 count as done (:func:`lifecycle.planned` with ``stored``), so
   the conductor's first work is frame K (or frame K-1's depth map when the parent had
   none and frame K needs it).

A colour reference before K stays the parent's frame (copied): only frame 0, a cut or a
``palette: shift`` sets a new one, and K >= 1 keeps frame 0.

An extension by M frames is a fork with K = N, the parent's frame count, and N+M frames:
every frame of the parent is kept and frame N continues the chain from frame N-1. Its
shots N..N+M-1 are the user's (a ``storyboard_json`` of N+M shots), or the planner's: the
storyboard is then the parent's N shots (:func:`board_of`), which the plan step continues
with the job's planner backend, the existing shots as context (:func:`to_continue`,
:meth:`.storyboard_llm.Storyboarder.extend`). :func:`extension_board` makes that storyboard
from what the user gave (``generate --from-run --extend M``, ExtendAnimation), and
:func:`fork_of_extension` turns ExtendAnimation into the ForkAnimation it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import ParseDict, ParseError

from ghibli_anim.contracts import keys, limits
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.storyboard import Shot, Storyboard, full_prompt, parse_storyboard
from ghibli_anim.runtime.store.base import NotFound, Store

FIELD = "fork"
PARENT_ONLY = ("idempotency_key", "client_id", "storyboard_json", "fork", "review")
"""The parent's request fields a fork never takes over: its own key and client, its
storyboard (a fork's comes whole), its own fork, and whether it waited for review."""

# FrameSpec fields that hold a store key of the job (rekeyed from the parent to the fork).
_KEY_FIELDS = ("source_key", "depth_key", "color_reference_key", "init_key")
# Shot fields compared, in the order a difference is reported.
_SHOT_FIELDS = ("prompt", "negative_prompt", "continuity", "strength", "palette", "camera")


class ForkError(ValueError):
    """A fork that cannot be made; the message names the field."""


def check_from_frame(from_frame: int, frames: int, whose: str = "the fork") -> None:
    """K in 1..N-1: at least frame 0 is kept and at least one frame is rendered."""
    if not 1 <= from_frame <= frames - 1:
        raise ForkError(
            f"{FIELD}.from_frame: must be in 1..{frames - 1} ({whose} has {frames} frames), "
            f"got {from_frame}"
        )


def check_parent_frames(from_frame: int, frames: int, parent_id: str) -> None:
    """K in 1..N of the parent's N frames: K = N keeps them all, an extension (the fork's
    request has more frames than the parent; :func:`check_request` sees to that)."""
    if not 1 <= from_frame <= frames:
        raise ForkError(
            f"{FIELD}.from_frame: must be in 1..{frames} (job {parent_id} has {frames} frames; "
            f"from_frame {frames} extends it by the request's frames beyond {frames}), "
            f"got {from_frame}"
        )


def check_extension_frames(added: int, have: int, parent_id: str, field: str = "frames") -> None:
    """M, the frames an extension adds to the parent's N: 1..(the frame limit - N)."""
    most = limits.FRAMES.hi - have
    if not 1 <= added <= most:
        raise ForkError(
            f"{field}: must be in 1..{most} (job {parent_id} has {have} frames, the limit is "
            f"{limits.FRAMES.hi}), got {added}"
        )


def check_parent_id(parent_id: str, field: str = f"{FIELD}.parent_job_id") -> None:
    if not keys.is_job_id(parent_id):
        raise ForkError(
            f"{field}: must be a job id (32 lowercase hex characters), got {parent_id!r:.60}"
        )


def check_request(req: animation_pb2.CreateAnimationRequest) -> None:
    """What a fork request must hold, before the parent is read."""
    check_parent_id(req.fork.parent_job_id)
    check_from_frame(req.fork.from_frame, req.frames)
    if req.init_upload_id:
        raise ForkError(
            f"init_upload_id: a fork keeps the parent's frame 0; give no init image "
            f"(from_frame {req.fork.from_frame} >= 1)"
        )


@dataclass(frozen=True)
class ParentFrames:
    """What a fork takes from its parent: the storyboard and frames 0..K-1 as they ran."""

    job_id: str
    from_frame: int
    board: Storyboard
    specs: list[types_pb2.FrameSpec]
    """Frames 0..K-1's FrameSpecs, from their records (keys still the parent's)."""
    depth_maps: frozenset[int]
    """Frames before K whose depth map is stored."""


def spec_of_record(record: Mapping[str, Any], index: int, field: str) -> types_pb2.FrameSpec:
    """The FrameSpec a frame record holds (``record["spec"]``, written by the renderer)."""
    raw = record.get("spec")
    if not isinstance(raw, dict) or not isinstance(raw.get("profile"), dict):
        raise ForkError(
            f"{field}: the record of frame {index} holds no FrameSpec (rendered by an "
            "earlier version); re-render the parent with --from-manifest, then fork that"
        )
    spec = types_pb2.FrameSpec()
    try:
        ParseDict(raw, spec, ignore_unknown_fields=True)
    except ParseError as exc:
        raise ForkError(f"{field}: the record of frame {index} does not parse ({exc})") from None
    return spec


def read_board(store: Store, parent_id: str, field: str = f"{FIELD}.parent_job_id") -> Storyboard:
    """The parent's storyboard (``plan.json``); ``ForkError`` naming ``field`` (the
    request's parent id) when it is missing or broken."""
    try:
        return parse_storyboard(store.get(keys.plan_key(parent_id)).decode("utf-8"))
    except NotFound:
        raise ForkError(
            f"{field}: job {parent_id} has no storyboard in the store (deleted, or it "
            "stopped before planning)"
        ) from None
    except ValueError as exc:
        raise ForkError(
            f"{field}: job {parent_id}'s plan.json is not a storyboard ({exc})"
        ) from None


def started_from_init_image(parent_id: str, field: str) -> str:
    """Why a job started from an init image cannot be forked or extended."""
    return (
        f"{field}: job {parent_id} started from an init image; forks of such jobs are not supported"
    )


def read_parent(
    store: Store, parent_id: str, from_frame: int, field: str = f"{FIELD}.parent_job_id"
) -> ParentFrames:
    """The parent's storyboard and frames 0..K-1 (PNG, record with its spec, depth map);
    ``ForkError`` naming ``field`` (the request's parent id) for anything missing."""
    board = read_board(store, parent_id, field)
    check_parent_frames(from_frame, len(board.frames), parent_id)
    stored = set(store.list(keys.job_prefix(parent_id)))
    if keys.init_key(parent_id) in stored:  # also where the job store forgot the parent
        raise ForkError(started_from_init_image(parent_id, field))
    specs = []
    for i in range(from_frame):
        missing = [
            k
            for k in (keys.frame_key(parent_id, i), keys.frame_record_key(parent_id, i))
            if k not in stored
        ]
        if missing:
            raise ForkError(
                f"{field}: frame {i} of job {parent_id} is not in the store ({missing[0]}: "
                f"deleted, or never rendered); a fork from frame {from_frame} needs frames "
                f"0..{from_frame - 1}"
            )
        try:
            record = json.loads(store.get(keys.frame_record_key(parent_id, i)))
        except (ValueError, NotFound):
            record = {}
        specs.append(spec_of_record(record, i, field))
    depth = frozenset(i for i in range(from_frame) if keys.depth_key(parent_id, i) in stored)
    return ParentFrames(parent_id, from_frame, board, specs, depth)


def _shot_value(shot: Shot, board: Storyboard, name: str) -> Any:
    if name == "prompt":
        return full_prompt(shot, board)  # the style is part of what frame i renders
    value = getattr(shot, name)
    return value.model_dump() if name == "camera" else value


def check_board(parent: Storyboard, board: Storyboard, from_frame: int) -> None:
    """The fork's storyboard holds the parent's first K shots; ``ForkError`` naming the
    first shot and field that differs."""
    for i in range(from_frame):
        for name in _SHOT_FIELDS:
            if name == "continuity" and i == 0:
                continue  # frame 0 starts fresh whatever it says
            if name == "camera" and i == from_frame - 1:
                continue  # moves frame K-1 before it seeds frame K: frame K's to change
            old = _shot_value(parent.frames[i], parent, name)
            new = _shot_value(board.frames[i], board, name)
            if old != new:
                what = "prompt (with the style)" if name == "prompt" else name
                raise ForkError(
                    f"storyboard_json: frames[{i}].{what} differs from the parent's "
                    f"({_short(new)} here, {_short(old)} in the parent); frames 0.."
                    f"{from_frame - 1} of a fork from frame {from_frame} must be the parent's"
                )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def edit_prompts(
    board: Storyboard,
    edits: Mapping[int, str],
    from_frame: int,
    *,
    field: str = "--prompt",
    from_field: str = "--from-frame",
) -> Storyboard:
    """The parent's storyboard with the prompts of some frames replaced (``--prompt K:text``,
    or ForkAnimation's ``prompts``: ``field``); each frame must be in from_frame..N-1."""
    shots = list(board.frames)
    for i, text in sorted(edits.items()):
        if not from_frame <= i < len(shots):
            raise ForkError(
                f"{field}: frame {i} must be in {from_frame}..{len(shots) - 1} (frames "
                f"before {from_field} {from_frame} are the parent's)"
            )
        shots[i] = shots[i].model_copy(update={"prompt": text})
    data = board.model_dump(mode="json")
    data["frames"] = [s.model_dump(mode="json") for s in shots]
    return parse_storyboard(json.dumps(data), len(shots))


def rekey(spec: types_pb2.FrameSpec, parent_id: str, job_id: str) -> types_pb2.FrameSpec:
    """The parent's spec with its store keys moved to the fork's copies."""
    out = types_pb2.FrameSpec()
    out.CopyFrom(spec)
    old, new = keys.job_prefix(parent_id), keys.job_prefix(job_id)
    for name in _KEY_FIELDS:
        value = getattr(out, name)
        if value.startswith(old):
            setattr(out, name, new + value[len(old) :])
    return out


def copies(parent: ParentFrames, job_id: str) -> list[tuple[str, str]]:
    """(parent key, fork key) of every object a fork copies: frames 0..K-1, their records
    and the depth maps stored with them."""
    pairs = []
    for i in range(parent.from_frame):
        build: list[Callable[[str, int], str]] = [keys.frame_key, keys.frame_record_key]
        if i in parent.depth_maps:
            build.append(keys.depth_key)
        pairs.extend((make(parent.job_id, i), make(job_id, i)) for make in build)
    return pairs


def copy_frames(store: Store, parent: ParentFrames, job_id: str) -> list[str]:
    """Copy the parent's frames 0..K-1 (and records, depth maps) to the fork's keys;
    returns the fork's keys written."""
    written = []
    for source, dest in copies(parent, job_id):
        try:
            store.copy(source, dest)
        except NotFound:
            raise ForkError(
                f"{FIELD}.parent_job_id: {source} disappeared while the fork was made"
            ) from None
        written.append(dest)
    return written


def fork_specs(
    job_id: str,
    from_frame: int,
    resolved: Iterable[types_pb2.FrameSpec],
    records: Iterable[Mapping[str, Any]],
) -> list[types_pb2.FrameSpec]:
    """The fork's FrameSpecs: frames 0..K-1 as they ran in the parent (from the copied
    ``records``, rekeyed to the fork), then the fork's own ``resolved`` specs from K on."""
    resolved = list(resolved)
    kept = []
    for i, record in enumerate(records):
        spec = spec_of_record(record, i, f"{FIELD}.parent_job_id")
        parent_id = str(record.get("job_id", ""))
        kept.append(rekey(spec, parent_id, job_id) if keys.is_job_id(parent_id) else spec)
    if len(kept) != from_frame:
        raise ForkError(f"{FIELD}.from_frame: {len(kept)} frames copied, expected {from_frame}")
    return kept + resolved[from_frame:]


def board_of(req: animation_pb2.CreateAnimationRequest, parent: ParentFrames) -> Storyboard:
    """The fork's storyboard (``storyboard_json``, or the parent's when empty), checked
    against the parent's first K shots.

    An extension (K = the parent's N frames, the request more) may leave its new shots to
    the planner: its storyboard is then the parent's N shots, which the plan step continues
    (:func:`to_continue`); a ``storyboard_json`` of the request's frames is the whole
    storyboard, as for any fork."""
    extends = parent.from_frame == len(parent.board.frames) < req.frames
    if req.storyboard_json:
        try:
            board = parse_storyboard(req.storyboard_json)
        except ValueError as exc:
            raise ForkError(f"storyboard_json: {exc}") from None
        if len(board.frames) != req.frames and not (
            extends and len(board.frames) == parent.from_frame
        ):
            also = (
                f", or the parent's {parent.from_frame} for the planner to continue"
                if extends
                else ""
            )
            raise ForkError(
                f"storyboard_json: frames: expected exactly {req.frames} frames{also}, "
                f"got {len(board.frames)}"
            )
    else:
        board = parent.board
        if len(board.frames) != req.frames and not extends:
            raise ForkError(
                f"frames: the parent's storyboard has {len(board.frames)} frames, the request "
                f"{req.frames}; give a storyboard_json of {req.frames} frames"
            )
    check_board(parent.board, board, parent.from_frame)
    return board


def extension_board(
    parent: Storyboard,
    frames: int,
    board: Storyboard | None,
    edits: Mapping[int, str],
    *,
    field: str = "--prompt",
    plan_field: str = "--plan",
) -> Storyboard:
    """The storyboard of an extension of ``parent`` (N shots) to ``frames`` frames.

    ``board`` (the user's, ``plan_field``) is the whole storyboard, N+M shots whose first
    N :func:`board_of` checks against the parent's, with the prompt ``edits`` of new
    frames (``field``); or N shots for the planner to continue, with no edits. Without
    ``board``, the edits give every new shot (a prompt each), or none: the parent's N
    shots, which the plan step continues (:func:`to_continue`)."""
    have = len(parent.frames)
    if board is not None:
        if edits and len(board.frames) != frames:
            raise ForkError(
                f"{field}: edits the new frames {have}..{frames - 1} of a {plan_field} that "
                f"holds them ({frames} shots); this one has {len(board.frames)}"
            )
        return edit_prompts(board, edits, have, field=field, from_field="frame") if edits else board
    if not edits:
        return parent  # the planner continues it
    wanted = set(range(have, frames))
    if set(edits) != wanted:
        outside = sorted(set(edits) - wanted)
        what = (
            f"got frame {outside[0]}" if outside else f"frame {min(wanted - set(edits))} is missing"
        )
        raise ForkError(
            f"{field}: without {plan_field}, give a prompt for every new frame {have}.."
            f"{frames - 1} (or none: the planner continues the storyboard); {what}"
        )
    data = parent.model_dump(mode="json")
    data["frames"] += [{"prompt": edits[i]} for i in sorted(edits)]
    return parse_storyboard(json.dumps(data), frames)


def fork_of_extension(
    extend: animation_pb2.ExtendAnimationRequest, have: int
) -> animation_pb2.ForkAnimationRequest:
    """ExtendAnimation as the ForkAnimation it is: from K = ``have``, the parent's frame
    count, with every field of the same name (the render settings, the key, the client)."""
    fork = animation_pb2.ForkAnimationRequest(
        fork=animation_pb2.ForkFrom(parent_job_id=extend.parent_job_id, from_frame=have)
    )
    names = animation_pb2.ForkAnimationRequest.DESCRIPTOR.fields_by_name
    for field, value in extend.ListFields():
        if field.name in names and field.name not in ("storyboard_json", "prompts"):
            if field.is_repeated:
                getattr(fork, field.name).extend(value)
            else:
                setattr(fork, field.name, value)
    return fork


def request_of_fork(
    parent: animation_pb2.CreateAnimationRequest,
    seed: int,
    fork: animation_pb2.ForkAnimationRequest,
    board: Storyboard,
    frames: int | None = None,
) -> animation_pb2.CreateAnimationRequest:
    """ForkAnimation as the CreateAnimationRequest the job API makes forks from: the
    parent's request (its job ``seed`` as resolved) with the fork's changes, ``fork`` and
    its storyboard ``board``, whole, or the parent's shots of an extension to ``frames``
    frames that the planner continues. A plain value replaces the parent's schedule of
    the same setting, which would otherwise override it."""
    req = animation_pb2.CreateAnimationRequest()
    req.CopyFrom(parent)
    for name in PARENT_ONLY:
        req.ClearField(name)
    req.seed = seed
    req.idempotency_key = fork.idempotency_key
    req.client_id = fork.client_id
    req.review = fork.review
    for name in ("strength", "guidance"):
        if fork.HasField(name):
            setattr(req, name, getattr(fork, name))
            req.ClearField(f"{name}_schedule")
        if getattr(fork, f"{name}_schedule"):
            setattr(req, f"{name}_schedule", getattr(fork, f"{name}_schedule"))
    if fork.HasField("seed"):
        req.seed = fork.seed
    if fork.seed_mode:
        req.seed_mode = fork.seed_mode
        req.ClearField("seed_mode_schedule")
    if fork.seed_mode_schedule:
        req.seed_mode_schedule = fork.seed_mode_schedule
    if fork.loras:
        del req.loras[:]
        req.loras.extend(fork.loras)
    if fork.color_coherence:
        req.color_coherence = fork.color_coherence
    if fork.HasField("depth"):
        req.depth = fork.depth
    req.fork.CopyFrom(fork.fork)
    req.frames = frames or len(board.frames)
    req.storyboard_json = board.to_json()
    return req


def to_continue(req: animation_pb2.CreateAnimationRequest) -> Storyboard | None:
    """An extension's storyboard so far, for the planner to continue to ``req.frames``
    shots: a fork's ``storyboard_json`` holding exactly its K kept shots (the parent's,
    as :func:`board_of` leaves them) when the request has more frames; None otherwise."""
    if not req.HasField("fork") or not req.storyboard_json:
        return None
    try:
        board = parse_storyboard(req.storyboard_json)
    except ValueError:
        return None  # not a continuation: the storyboard's own checks report it
    if len(board.frames) == req.fork.from_frame < req.frames:
        return board
    return None
