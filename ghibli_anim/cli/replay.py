"""Re-rendering a run from its manifest: ``generate --from-manifest FILE`` (and ``submit``).

A manifest (``jobs/{id}/manifest.json``) holds the validated request, the resolved
profile and, per frame, the FrameSpec that ran and its record. The replay sends
the same request with the recorded seed and, as ``storyboard_json``, a storyboard
rebuilt from the recorded specs (final prompts, negative prompts, strengths,
cuts, palette shifts, camera moves), so the planner resolves the same FrameSpecs
without asking an LLM again. Nothing from the old run's store is read: the
manifest file alone is enough (an init image must be given again, as a file).

``compare`` then checks the new frames against the recorded sha256s: on the same
device and dtype they are byte-identical; the report names any frame that is not
and what differs in the setup (device, dtype, library versions, models).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.json_format import ParseDict, ParseError

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.manifest import Manifest, parse_manifest
from ghibli_anim.contracts.pb import animation_pb2

_STILL = {"zoom": 1.0, "pan_x": 0.0, "pan_y": 0.0, "rotate": 0.0}
# Request fields that name a one-off resource of the original run (a fork's parent
# too: the replay renders every frame).
_DROP = ("idempotency_key", "client_id", "init_upload_id", "storyboard_json", "fork")


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; errors name ``--from-manifest``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc  # the path once, not twice
        raise ValueError(f"--from-manifest: cannot read {path} ({why})") from None
    try:
        return parse_manifest(text)
    except ValueError as exc:
        raise ValueError(f"--from-manifest: {path} is not a valid manifest ({exc})") from None


def _specs(manifest: Manifest) -> list[dict[str, Any]]:
    expected = manifest.request.get("frames")
    frames = sorted(manifest.frames, key=lambda f: f.index)
    if not frames or [f.index for f in frames] != list(range(len(frames))):
        raise ValueError("--from-manifest: the manifest does not hold frames 0..N-1")
    if expected is not None and len(frames) != int(expected):
        raise ValueError(
            f"--from-manifest: the manifest holds {len(frames)} of {expected} frames "
            "(the run did not finish)"
        )
    specs = []
    for frame in frames:
        spec = frame.record.get("spec")
        if not isinstance(spec, dict) or "prompt" not in spec:
            raise ValueError(f"--from-manifest: frames[{frame.index}] records no spec")
        specs.append(spec)
    return specs


def storyboard_from_manifest(manifest: Manifest) -> dict[str, Any]:
    """The storyboard that resolves to the recorded FrameSpecs (style already in prompts)."""
    specs = _specs(manifest)
    shots = []
    for i, spec in enumerate(specs):
        cut = i == 0 or spec.get("continuity") == "CONTINUITY_CUT"
        own_reference = spec.get("color_reference_key") == keys.frame_key(manifest.job_id, i)
        # A spec carries the previous frame's camera move (it moves its source image).
        following = specs[i + 1] if i + 1 < len(specs) else None
        carried = following is not None and following.get("continuity") != "CONTINUITY_CUT"
        camera = {**_STILL, **(following.get("camera") or {})} if carried else dict(_STILL)
        shot: dict[str, Any] = {
            "prompt": spec["prompt"],
            "negative_prompt": spec.get("negative_prompt", ""),
            "camera": camera,
            "continuity": "cut" if cut else "continue",
            "palette": "shift" if own_reference and not cut else "keep",
        }
        if not cut and spec.get("strength"):
            shot["strength"] = spec["strength"]
        shots.append(shot)
    title = manifest.title or manifest.idea[:200]
    return {"version": 1, "title": title, "style": "", "frames": shots}


def request_from_manifest(manifest: Manifest) -> animation_pb2.CreateAnimationRequest:
    """The CreateAnimationRequest that re-renders ``manifest``'s run from scratch."""
    recorded = {k: v for k, v in manifest.request.items() if k not in _DROP}
    req = animation_pb2.CreateAnimationRequest()
    try:
        ParseDict(recorded, req, ignore_unknown_fields=True)
    except ParseError as exc:
        raise ValueError(f"--from-manifest: the recorded request does not parse ({exc})") from None
    req.storyboard_json = json.dumps(storyboard_from_manifest(manifest))
    return req


def recorded_env(manifest: Manifest) -> dict[str, str]:
    """Renderer variables the recorded run used that change the bytes of a frame:
    the dtype, the tiny autoencoder, torch.compile and LoRA fusion."""
    env: dict[str, str] = {}
    records = [f.record for f in manifest.frames]
    if records and records[0].get("dtype") in ("float16", "bfloat16", "float32"):
        env["ANIM_DTYPE"] = records[0]["dtype"]
    if manifest.profile.get("tiny_autoencoder"):
        env["ANIM_TINY_VAE"] = "true"
    if any(r.get("compile") for r in records):
        env["ANIM_COMPILE"] = "true"
    if any(r.get("loras") and r.get("lora_fused") is False for r in records):
        env["ANIM_FUSE_LORA"] = "false"
    return env


def needs_init_image(manifest: Manifest) -> bool:
    """Whether the run started from an uploaded init image (which must be given again)."""
    return bool(manifest.request.get("init_upload_id"))


@dataclass(frozen=True)
class Comparison:
    identical: int
    total: int
    lines: list[str]
    same_setup: bool
    """Same device, dtype and library versions: then frames must be byte-identical."""

    @property
    def reproduced(self) -> bool:
        return self.identical == self.total


def _setup(manifest: Manifest) -> dict[str, Any]:
    if not manifest.frames:
        return {}
    record = manifest.frames[0].record
    return {
        "device": record.get("device"),
        "dtype": record.get("dtype"),
        "versions": record.get("versions"),
        "models": record.get("models"),
    }


def compare(original: Manifest, replayed: Manifest) -> Comparison:
    """Frame by frame sha256 comparison, plus what differs in device, dtype and versions."""
    old = {f.index: f.sha256 for f in original.frames}
    new = {f.index: f.sha256 for f in replayed.frames}
    lines = []
    identical = 0
    for index in sorted(old):
        if new.get(index) == old[index]:
            identical += 1
        else:
            lines.append(f"frame {index}: sha256 {new.get(index)} != recorded {old[index]}")
    a, b = _setup(original), _setup(replayed)
    for key in ("device", "dtype", "versions", "models"):
        if a.get(key) != b.get(key):
            lines.append(f"{key}: recorded {a.get(key)!r}, now {b.get(key)!r}")
    same = all(a.get(k) == b.get(k) for k in ("device", "dtype", "versions"))
    lines.insert(0, f"{identical}/{len(old)} frames byte-identical to the manifest")
    return Comparison(identical, len(old), lines, same)
