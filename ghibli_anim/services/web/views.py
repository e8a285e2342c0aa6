"""What the web page shows, as plain data: jobs, storyboards, events, the forms.

The forms: submitting an idea, the storyboard editor of a job waiting for review,
"re-render from here" (a fork from frame K) and "extend by M frames".

Pure functions (no I/O), shared by the HTML templates, the JSON API and the
server-sent events, so the unit tests can check them without a planner.

Every string here may come from a user (the idea, and the storyboard prompts an
LLM wrote from it): the templates escape them (Jinja autoescape) and the page's
script sets them with ``textContent`` only. URLs are passed on only when they are
http(s): a presigned ``file://`` URL of the local-folder store means nothing to
a browser, and no other scheme (``javascript:``) may reach an ``href``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from ghibli_anim.contracts import keys, lifecycle, limits
from ghibli_anim.contracts.events import event_name
from ghibli_anim.contracts.lifecycle import status_name
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.contracts.storyboard import Storyboard, parse_storyboard

# By name, from the lifecycle (a job waiting for review, PLANNED, is cancellable).
CANCELLABLE = frozenset(status_name(s) for s in lifecycle.UNFINISHED)
RESUMABLE = frozenset(status_name(s) for s in lifecycle.RESUMABLE)
TERMINAL = frozenset(status_name(s) for s in lifecycle.TERMINAL)

# Output files by name, in the order the page shows them.
OUTPUT_KINDS = {
    "animation.gif": "gif",
    "animation.mp4": "mp4",
    "animation.webp": "webp",
    "contact_sheet.png": "contact",
    "frames.zip": "zip",
    "manifest.json": "manifest",
}
_FRAME_RE = re.compile(r"^frames/(\d{4})\.png$")
_DEPTH_RE = re.compile(r"^depth/(\d{4})\.png$")
_IDEMPOTENCY_RE = re.compile(rf"^[A-Za-z0-9_-]{{1,{limits.IDEMPOTENCY_KEY_CHARS}}}$")
FORM_BYTES = 16 * 1024  # a form holds an idea of at most IDEA_CHARS, far below this


def browser_url(url: str) -> str:
    """``url`` when a browser can load it (http or https), else ''."""
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
    except ValueError:
        return ""
    return url if scheme in ("http", "https") else ""


def iso_time(ts: Timestamp | None) -> str:
    """RFC 3339 UTC time of a protobuf Timestamp ('' when unset)."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime().replace(microsecond=0).isoformat() + "Z"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def camera_text(move: Mapping[str, float | None]) -> str:
    """A camera move in words, only what differs from standing still."""
    parts = []
    zoom = move.get("zoom")
    if zoom is not None and zoom != 1.0:
        parts.append(f"zoom x{zoom:g}")
    pan_x, pan_y = move.get("pan_x") or 0.0, move.get("pan_y") or 0.0
    if pan_x or pan_y:
        parts.append(f"pan {pan_x:+g}, {pan_y:+g}")
    rotate = move.get("rotate")
    if rotate:
        parts.append(f"rotate {rotate:+g}°")
    return ", ".join(parts) or "still"


def storyboard_view(text: str) -> dict[str, Any] | None:
    """The storyboard JSON the planner stored, as the page shows it (None if absent).

    The planner wrote and validated it; this reads it defensively anyway, so a
    document of another version shows what it can instead of breaking the page.
    """
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    planner = doc.get("planner") if isinstance(doc.get("planner"), dict) else {}
    shots = []
    for index, shot in enumerate(doc.get("frames") or []):
        if not isinstance(shot, dict):
            continue
        camera = shot.get("camera") if isinstance(shot.get("camera"), dict) else {}
        move = {k: _num(camera.get(k)) for k in ("zoom", "pan_x", "pan_y", "rotate")}
        shots.append(
            {
                "index": index,
                "prompt": _text(shot.get("prompt")),
                "negative_prompt": _text(shot.get("negative_prompt")),
                "continuity": _text(shot.get("continuity")) or "continue",
                "palette": _text(shot.get("palette")) or "keep",
                "strength": _num(shot.get("strength")),
                "camera": move,
                "camera_text": camera_text(move),
            }
        )
    return {
        "title": _text(doc.get("title")),
        "style": _text(doc.get("style")),
        "planner": {
            "backend": _text(planner.get("backend")),
            "model": _text(planner.get("model")),
            "offline": bool(planner.get("offline")),
        },
        "shots": shots,
    }


def _indexed(files: Iterable[types_pb2.OutputFile], job_id: str, pattern: re.Pattern[str]):
    prefix = keys.job_prefix(job_id)
    found: dict[int, str] = {}
    for f in files:
        if not f.key.startswith(prefix):
            continue
        match = pattern.match(f.key[len(prefix) :])
        if match and browser_url(f.url):
            found[int(match.group(1))] = f.url
    return [{"index": i, "url": found[i]} for i in sorted(found)]


def job_view(anim: animation_pb2.Animation) -> dict[str, Any]:
    """Everything the job page shows about ``anim`` (GetAnimation with files)."""
    status = status_name(anim.status)
    files = [*anim.frame_files, *anim.outputs]
    outputs = []
    by_name = {o.name: o for o in anim.outputs}
    for name, kind in OUTPUT_KINDS.items():
        out = by_name.get(name)
        if out is not None and browser_url(out.url):
            outputs.append(
                {
                    "name": name,
                    "kind": kind,
                    "url": out.url,
                    "size_bytes": out.size_bytes,
                    "sha256": out.sha256,
                    "content_type": out.content_type,
                }
            )
    return {
        "job_id": anim.job_id,
        "status": status,
        "idea": anim.idea,
        "title": anim.title,
        "profile": anim.profile,
        "planner_backend": anim.planner_backend,
        "frames_total": anim.frames_total,
        "frames_done": anim.frames_done,
        "seed": anim.seed,
        "attempt": anim.attempt,
        "error": anim.error,
        "created_at": iso_time(anim.created_at if anim.HasField("created_at") else None),
        "updated_at": iso_time(anim.updated_at if anim.HasField("updated_at") else None),
        "cancellable": status in CANCELLABLE,
        "resumable": status in RESUMABLE,
        "terminal": status in TERMINAL,
        "storyboard": storyboard_view(anim.storyboard_json),
        "frames": _indexed(files, anim.job_id, _FRAME_RE),
        "depth": _indexed(files, anim.job_id, _DEPTH_RE),
        "outputs": outputs,
        # Files whose URL a browser cannot open (a local-folder store).
        "unreachable": sum(1 for f in files if f.url and not browser_url(f.url)),
    }


def summary_view(anim: animation_pb2.Animation) -> dict[str, Any]:
    """One row of the recent jobs list."""
    status = status_name(anim.status)
    return {
        "job_id": anim.job_id,
        "status": status,
        "idea": anim.idea,
        "title": anim.title,
        "frames_total": anim.frames_total,
        "frames_done": anim.frames_done,
        "created_at": iso_time(anim.created_at if anim.HasField("created_at") else None),
    }


def recent(animations: Iterable[animation_pb2.Animation], limit: int) -> list[dict[str, Any]]:
    """The ``limit`` most recently created jobs, newest first."""
    ordered = sorted(
        animations,
        key=lambda a: (a.created_at.seconds, a.created_at.nanos, a.job_id),
        reverse=True,
    )
    return [summary_view(a) for a in ordered[:limit]]


# -- events ---------------------------------------------------------------------


def event_view(event: bus_pb2.Event) -> dict[str, Any]:
    """A job event as JSON: what the SSE stream carries in ``data``."""
    return {
        "type": event_name(event.type),
        "event_id": event.event_id,
        "job_id": event.job_id,
        "frame": event.frame,
        "attempt": event.attempt,
        "sequence": event.sequence,
        "causation_id": event.causation_id,
        "time": iso_time(event.time if event.HasField("time") else None),
        "reason": event.reason,
        "key": event.key,
        "step": event.step,
        "steps": event.steps,
        "service": event.service,
        "retryable": event.retryable,
    }


def sse_message(event: str, data: Mapping[str, Any], event_id: int | None = None) -> str:
    """One server-sent event: ``id``, ``event`` and a single-line JSON ``data``.

    ``json.dumps`` escapes newlines inside strings, so ``data`` is one line and no
    user text can end the message or forge a field.
    """
    if not re.fullmatch(r"[a-z][a-z.]*", event):
        raise ValueError(f"event: must be lowercase letters and dots, got {event!r:.40}")
    lines = []
    if event_id is not None:
        lines.append(f"id: {int(event_id)}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def parse_after(last_event_id: str | None, query: str | None) -> int:
    """The sequence to resume after: ``Last-Event-ID`` (reconnects) or ``?after=``."""
    for field_name, raw in (("Last-Event-ID", last_event_id), ("after", query)):
        if raw is None or raw == "":
            continue
        if not raw.isdigit() or len(raw) > 20:
            raise ValueError(f"{field_name}: must be a stream sequence (an integer >= 0)")
        return int(raw)
    return 0


# -- the submit form --------------------------------------------------------------


@dataclass
class SubmitForm:
    """The form's values as typed, to show them again next to an error."""

    idea: str = ""
    frames: str = "8"
    profile: str = ""
    depth: bool = False
    review: bool = False
    seed: str = ""
    formats: list[str] = field(default_factory=lambda: list(limits.DEFAULT_FORMATS))
    idempotency_key: str = ""


def read_form(fields: Mapping[str, list[str]]) -> SubmitForm:
    """The raw form (from ``parse_qs``) as a SubmitForm; nothing checked yet."""

    def one(name: str) -> str:
        values = fields.get(name) or [""]
        return values[-1]

    return SubmitForm(
        idea=one("idea"),
        frames=one("frames").strip(),
        profile=one("profile").strip(),
        depth=one("depth") in ("on", "true", "1"),
        review=one("review") in ("on", "true", "1"),
        seed=one("seed").strip(),
        formats=[f for f in fields.get("format", []) if f],
        idempotency_key=one("idempotency_key").strip(),
    )


def _int(name: str, text: str, allowed: limits.IntRange) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}: must be {allowed.describe()}, got {text!r:.40}") from None
    return allowed.check(name, value)


def _check_idempotency_key(key: str) -> None:
    if key and not _IDEMPOTENCY_RE.fullmatch(key):
        raise ValueError(
            f"idempotency_key: must be 1..{limits.IDEMPOTENCY_KEY_CHARS} letters, digits, "
            "'-' or '_'"
        )


def build_request(form: SubmitForm) -> animation_pb2.CreateAnimationRequest:
    """The CreateAnimationRequest of a submitted form.

    Checks what the form itself defines (types, ranges, known formats) with the
    messages of the shared limits; the planner validates the whole request again.
    """
    idea = limits.check_text("idea", form.idea, limits.IDEA_CHARS, required=True)
    frames = _int("frames", form.frames, limits.FRAMES)
    profile = limits.check_text("profile", form.profile, limits.PROFILE_NAME_CHARS, required=False)
    if not form.formats:
        raise ValueError(f"format: choose at least one of {', '.join(limits.FORMATS)}")
    formats = limits.check_formats("format", form.formats)
    _check_idempotency_key(form.idempotency_key)
    req = animation_pb2.CreateAnimationRequest(
        idea=idea,
        frames=frames,
        profile=profile,
        depth=form.depth,
        review=form.review,
        formats=list(formats),
        idempotency_key=form.idempotency_key,
    )
    if form.seed:
        req.seed = _int("seed", form.seed, limits.SEED)
    return req


# -- directing: the storyboard editor and "re-render from here" -----------------------
#
# Both forms edit storyboard shots as the user typed them (``ShotDraft``: raw strings),
# so a refused edit comes back with every field as it was. The storyboard itself
# (contracts/storyboard.py) checks the values: its errors name the shot and the field,
# e.g. ``frames[2].strength: must be a number in (0, 1], got 2``.

CAMERA_FIELDS = ("zoom", "pan_x", "pan_y", "rotate")
SHOT_FIELDS = ("prompt", "negative_prompt", "strength", "continuity", "palette", *CAMERA_FIELDS)
# URL-encoding a storyboard's text at most triples it (%XX); plus the field names.
EDITOR_FORM_BYTES = 3 * limits.STORYBOARD_JSON_BYTES + limits.FRAMES.hi * 256
EDITOR_FORM_FIELDS = limits.FRAMES.hi * len(SHOT_FIELDS) + 16
PLANNED = status_name(lifecycle.PLANNED)

ShotDraft = dict[str, str]


def _number_text(value: Any) -> str:
    # json.dumps writes the shortest text that reads back as the same float, so an
    # untouched field compares equal to the planned value.
    return json.dumps(value) if _num(value) is not None else ""


def shot_draft(shot: Mapping[str, Any]) -> ShotDraft:
    """A stored shot (storyboard JSON) as the editor's fields show it."""
    camera = shot.get("camera") if isinstance(shot.get("camera"), dict) else {}
    draft = {
        "prompt": _text(shot.get("prompt")),
        "negative_prompt": _text(shot.get("negative_prompt")),
        "strength": _number_text(shot.get("strength")),
        "continuity": _text(shot.get("continuity")) or "continue",
        "palette": _text(shot.get("palette")) or "keep",
    }
    draft.update({k: _number_text(camera.get(k)) for k in CAMERA_FIELDS})
    return draft


def _board_doc(text: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list):
        return None
    return doc


def board_draft(storyboard_json: str) -> dict[str, Any] | None:
    """The editor's fields for a planned storyboard: title, style and every shot."""
    doc = _board_doc(storyboard_json)
    if doc is None:
        return None
    shots = [shot_draft(s) for s in doc["frames"] if isinstance(s, dict)]
    return {"title": _text(doc.get("title")), "style": _text(doc.get("style")), "shots": shots}


def read_shot(fields: Mapping[str, list[str]], prefix: str) -> ShotDraft:
    """One shot's fields from a posted form (``{prefix}prompt``, ...), as typed."""
    return {name: (fields.get(prefix + name) or [""])[-1] for name in SHOT_FIELDS}


def read_board_draft(fields: Mapping[str, list[str]], shots: int) -> dict[str, Any]:
    """The posted storyboard editor: title, style and ``shots`` shots, as typed."""
    return {
        "title": (fields.get("title") or [""])[-1],
        "style": (fields.get("style") or [""])[-1],
        "shots": [read_shot(fields, f"shot-{i}-") for i in range(shots)],
    }


def _number(path: str, text: str, allowed: limits.FloatRange | None) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        what = allowed.describe() if allowed is not None else "a number"
        raise ValueError(f"{path}: must be {what}, got {text!r:.40}") from None
    return value


def shot_doc(draft: ShotDraft, index: int, stored: Mapping[str, Any]) -> dict[str, Any]:
    """The shot JSON of an edited draft over the ``stored`` shot (keeps what the form
    does not show). Only the numbers' syntax is checked here; the storyboard checks
    their ranges."""
    path = f"frames[{index}]"
    doc = dict(stored)
    doc["prompt"] = draft["prompt"]
    doc["negative_prompt"] = draft["negative_prompt"]
    doc["continuity"] = draft["continuity"]
    doc["palette"] = draft["palette"]
    doc["strength"] = _number(f"{path}.strength", draft["strength"], limits.STRENGTH)
    camera = dict(stored.get("camera") or {}) if isinstance(stored.get("camera"), dict) else {}
    ranges = {"zoom": limits.ZOOM, "pan_x": limits.PAN, "pan_y": limits.PAN}
    for name in CAMERA_FIELDS:
        value = _number(f"{path}.camera.{name}", draft[name], ranges.get(name, limits.ROTATE))
        if value is None:
            camera.pop(name, None)  # empty: standing still on that axis
        else:
            camera[name] = value
    doc["camera"] = camera
    return doc


def edited_board(storyboard_json: str, draft: Mapping[str, Any]) -> Storyboard:
    """The planned storyboard with the editor's title, style and shots; ``ValueError``
    naming the field (``frames[i].prompt: ...``) for a bad value."""
    doc = _board_doc(storyboard_json)
    if doc is None:
        raise ValueError("storyboard_json: the job has no storyboard to edit")
    stored = doc["frames"]
    if len(draft["shots"]) != len(stored):
        raise ValueError(f"frames: expected exactly {len(stored)} shots, got {len(draft['shots'])}")
    doc = {**doc, "title": draft["title"], "style": draft["style"]}
    doc["frames"] = [shot_doc(s, i, stored[i]) for i, s in enumerate(draft["shots"])]
    return parse_storyboard(doc, len(stored))


def approval_json(storyboard_json: str, draft: Mapping[str, Any]) -> str:
    """ApproveAnimation's ``storyboard_json``: the edited storyboard, or '' when the
    editor changed nothing (the job renders its plan as it is)."""
    board = edited_board(storyboard_json, draft)
    try:
        planned = parse_storyboard(storyboard_json)
    except ValueError:
        return board.to_json()
    return "" if board == planned else board.to_json()


@dataclass
class ForkForm:
    """The "re-render from here" form of frame ``from_frame``, as typed."""

    from_frame: str
    shot: ShotDraft
    seed: str
    idempotency_key: str = ""


def check_from_frame(text: str, frames_total: int) -> int:
    """K of "re-render from frame K": an integer in 1..N-1 (frame 0 is what every
    fork keeps)."""
    if frames_total < 2:
        raise ValueError(
            f"from_frame: a job of {frames_total} frame cannot be re-rendered from a frame: "
            "a fork keeps frame 0 and renders at least one frame after it"
        )
    try:
        k = int(text)
    except ValueError:
        k = None
    if k is None or not 0 <= k <= frames_total - 1:
        raise ValueError(
            f"from_frame: must be a frame of this job, an integer in 1..{frames_total - 1}, "
            f"got {text!r:.40}"
        )
    if k == 0:
        raise ValueError(
            "from_frame: frame 0 cannot be re-rendered from: a fork keeps the frames before "
            f"the one it starts from, at least frame 0; choose a frame in 1..{frames_total - 1}"
        )
    return k


def fork_form(anim: animation_pb2.Animation, from_frame: int) -> ForkForm:
    """The form of frame ``from_frame`` as planned: its shot and the job's seed."""
    doc = _board_doc(anim.storyboard_json) or {"frames": []}
    shots = doc["frames"]
    stored = shots[from_frame] if from_frame < len(shots) else {}
    stored = stored if isinstance(stored, dict) else {}
    return ForkForm(str(from_frame), shot_draft(stored), str(anim.seed))


def read_fork_form(fields: Mapping[str, list[str]]) -> ForkForm:
    def one(name: str) -> str:
        return (fields.get(name) or [""])[-1].strip()

    return ForkForm(
        from_frame=one("from_frame"),
        shot=read_shot(fields, "fork-"),
        seed=one("seed"),
        idempotency_key=one("idempotency_key"),
    )


def build_fork_request(
    parent: animation_pb2.Animation, form: ForkForm
) -> animation_pb2.ForkAnimationRequest:
    """ForkAnimation from frame K: frames 0..K-1 are the parent's, the storyboard is the
    parent's with shot K as edited, the seed the form's; every other setting is the
    parent's, as the planner keeps its request."""
    k = check_from_frame(form.from_frame, parent.frames_total)
    doc = _board_doc(parent.storyboard_json)
    if doc is None or len(doc["frames"]) != parent.frames_total:
        raise ValueError(f"storyboard_json: job {parent.job_id} has no storyboard to fork")
    frames = list(doc["frames"])
    frames[k] = shot_doc(form.shot, k, frames[k] if isinstance(frames[k], dict) else {})
    board = parse_storyboard({**doc, "frames": frames}, parent.frames_total)
    seed = _int("seed", form.seed, limits.SEED)
    _check_idempotency_key(form.idempotency_key)
    return animation_pb2.ForkAnimationRequest(
        fork=animation_pb2.ForkFrom(parent_job_id=parent.job_id, from_frame=k),
        storyboard_json=board.to_json(),
        seed=seed,
        idempotency_key=form.idempotency_key,
    )


@dataclass
class ExtendForm:
    """The "extend by M frames" form of a finished job, as typed."""

    frames: str = "1"
    idempotency_key: str = ""


def extendable(view: Mapping[str, Any]) -> bool:
    """Whether the job page offers "extend": a finished, failed or cancelled job below the
    frame limit (the planner checks that its frames are all stored)."""
    return view["status"] in TERMINAL and 0 < view["frames_total"] < limits.FRAMES.hi


def read_extend_form(fields: Mapping[str, list[str]]) -> ExtendForm:
    def one(name: str) -> str:
        return (fields.get(name) or [""])[-1].strip()

    return ExtendForm(frames=one("frames")[:40], idempotency_key=one("idempotency_key"))


def build_extend_request(
    parent: animation_pb2.Animation, form: ExtendForm
) -> animation_pb2.ExtendAnimationRequest:
    """ExtendAnimation by the form's M frames: every frame of the parent is kept, the
    planner continues its storyboard, and every setting is the parent's."""
    have = parent.frames_total
    most = limits.FRAMES.hi - have
    try:
        added = int(form.frames)
    except ValueError:
        added = None
    if added is None or not 1 <= added <= most:
        raise ValueError(
            f"frames: must be an integer in 1..{most} (this job has {have} frames, the limit "
            f"is {limits.FRAMES.hi}), got {form.frames!r:.40}"
        )
    _check_idempotency_key(form.idempotency_key)
    return animation_pb2.ExtendAnimationRequest(
        parent_job_id=parent.job_id, frames=added, idempotency_key=form.idempotency_key
    )


def player(view: Mapping[str, Any]) -> dict[str, str] | None:
    """The job's animation for a player (GIF, WebP, then MP4), or None before it exists."""
    by_kind = {o["kind"]: o for o in view["outputs"]}
    for kind in ("gif", "webp", "mp4"):
        if kind in by_kind:
            return {"kind": kind, "url": by_kind[kind]["url"]}
    return None
