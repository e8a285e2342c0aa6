"""What the web page shows, as plain data: jobs, storyboards, events, the submit form.

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
    if form.idempotency_key and not _IDEMPOTENCY_RE.fullmatch(form.idempotency_key):
        raise ValueError(
            "idempotency_key: must be 1.."
            f"{limits.IDEMPOTENCY_KEY_CHARS} letters, digits, '-' or '_'"
        )
    req = animation_pb2.CreateAnimationRequest(
        idea=idea,
        frames=frames,
        profile=profile,
        depth=form.depth,
        formats=list(formats),
        idempotency_key=form.idempotency_key,
    )
    if form.seed:
        req.seed = _int("seed", form.seed, limits.SEED)
    return req
