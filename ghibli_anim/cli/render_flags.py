"""The render flags of ``generate`` and ``submit``, and the request they make.

Both commands take the same flags and build the same ``CreateAnimationRequest``
(validated again by the planner, which names the field and range of anything wrong);
``--from-manifest`` builds it from a recorded run instead (:mod:`.replay`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ghibli_anim.contracts import limits, seeds
from ghibli_anim.contracts.pb import animation_pb2

if TYPE_CHECKING:
    from ghibli_anim.runtime.client import AnimationClient


def add_render_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "idea",
        nargs="?",
        default="",
        help="the one-line idea, e.g. 'a dragon glides over a town at dusk'",
    )
    p.add_argument("--frames", type=int, help=f"frames ({limits.FRAMES.describe()}); required")
    p.add_argument("--profile", default="", help="model profile (default: ANIM_PROFILE)")
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH_OR_ID[:SCALE]",
        help="a LoRA (hub id, folder or file under ANIM_MODEL_ROOTS, or store://loras/NAME), "
        "scale default 1; repeatable; replaces the profile's LoRAs",
    )
    p.add_argument(
        "--base",
        default="",
        help="base model replacing the profile's "
        "(hub id, diffusers folder or .safetensors file under ANIM_MODEL_ROOTS)",
    )
    p.add_argument("--controlnet", default="", help="ControlNet replacing the profile's")
    p.add_argument(
        "--init-image", type=Path, help="PNG, JPEG or WebP that frame 0 starts from (img2img)"
    )
    p.add_argument(
        "--preset",
        default="",
        choices=("", "fast"),
        help="fast: LCM-LoRA stacked on the style LoRA, LCMScheduler, 4 steps, guidance 1.5",
    )
    p.add_argument(
        "--truncate-prompts",
        action="store_true",
        help="cut prompts over 77 CLIP tokens (the manifest records what was dropped) "
        "instead of refusing them",
    )
    p.add_argument(
        "--from-manifest",
        type=Path,
        metavar="FILE",
        help="re-render the run a manifest.json records (same seed, prompts and models); "
        "with --out, compare the frames' bytes",
    )
    p.add_argument("--seed", type=int, help="job seed (default: random, recorded)")
    p.add_argument(
        "--seed-mode",
        default="",
        help="increment, fixed or random, or keyframes such as '0:increment, 10:fixed'",
    )
    p.add_argument("--depth", action="store_true", help="guide frames i>0 with ControlNet depth")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--width", type=int, help=f"width ({limits.WIDTH.describe()})")
    p.add_argument("--height", type=int, help=f"height ({limits.HEIGHT.describe()})")
    p.add_argument("--steps", type=int, help=f"inference steps ({limits.STEPS.describe()})")
    p.add_argument(
        "--guidance",
        help=f"guidance ({limits.GUIDANCE.describe()}), or keyframes such as '0:7.5, 10:9'",
    )
    p.add_argument(
        "--strength",
        help=f"img2img strength ({limits.STRENGTH.describe()}), "
        "or keyframes such as '0:0.15, 10:0.35' (linear between keyframes)",
    )
    p.add_argument(
        "--camera",
        default="",
        help="camera keyframes replacing the storyboard's, e.g. '0:zoom=1.02 pan_x=0.01, "
        "10:rotate=2' (zoom x in [0.8, 1.25]; pan fractions in [-0.25, 0.25], +x right, "
        "+y down; rotate degrees in [-15, 15], counter-clockwise)",
    )
    p.add_argument(
        "--sharpen",
        default="",
        help=f"unsharp-mask amount ({limits.SHARPEN.describe()}) or keyframes; default off",
    )
    p.add_argument(
        "--color-coherence",
        default="",
        choices=("", *limits.COLOR_COHERENCE),
        metavar="{" + ",".join(limits.COLOR_COHERENCE) + "}",
        help="match each frame's colours to its reference frame (default lab)",
    )
    p.add_argument(
        "--interpolate",
        type=int,
        default=0,
        choices=limits.INTERPOLATE,
        help="optical-flow in-between frames per pair; output fps = fps x (K+1)",
    )
    p.add_argument("--fps", type=int, help=f"frames per second ({limits.FPS.describe()})")
    p.add_argument(
        "--format",
        default="",
        help=f"comma list of {','.join(limits.FORMATS)} "
        f"(default {','.join(limits.DEFAULT_FORMATS)})",
    )
    p.add_argument(
        "--blend-prompts",
        action="store_true",
        help="ease prompt changes: each frame's text embedding leans towards the previous prompt",
    )
    p.add_argument("--plan", type=Path, help="a storyboard JSON file to use instead of planning")
    p.add_argument(
        "--review",
        action="store_true",
        help="stop after planning: the job waits with its storyboard until approved "
        "(approve JOB, or generate --from-run runs/JOB --approve) or cancelled",
    )
    p.add_argument("--idempotency-key", default="", help="same key, same job (safe retries)")
    p.add_argument("--out", type=Path, help="copy the job's output tree into this folder")


def build_request(args: argparse.Namespace):
    """The CreateAnimationRequest for generate/submit flags (validated by the server)."""
    _check_utf8(args)
    if getattr(args, "from_manifest", None) is not None:
        return _replay_request(args)
    if not args.idea.strip():
        raise ValueError("idea: must not be empty (or give --from-manifest FILE)")
    if args.frames is None:
        raise ValueError(f"--frames: required ({limits.FRAMES.describe()})")
    req = flag_request(args)
    req.idea = args.idea
    req.frames = args.frames
    if not args.seed_mode:
        req.seed_mode = seeds.SEED_MODES["increment"]
    if args.plan is not None:
        req.storyboard_json = read_plan(args.plan)
    return req


def read_plan(path: Path) -> str:
    """The text of ``--plan FILE`` (validated as a storyboard by the planner)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc  # the path once, not twice
        raise ValueError(f"--plan: cannot read {path} ({why})") from None


def set_seed_mode(req, text: str) -> None:
    """``--seed-mode``: keyframes ("0:increment, 10:fixed") or one mode; empty sets none."""
    if ":" in text:
        req.seed_mode_schedule = text
    elif text:
        req.seed_mode = seeds.parse_seed_mode(text)


def flag_request(args: argparse.Namespace) -> animation_pb2.CreateAnimationRequest:
    """The request fields the render flags set; a flag left at its default sets none
    (so a fork takes its parent's value for it)."""
    req = animation_pb2.CreateAnimationRequest(
        profile=args.profile,
        negative_prompt=args.negative,
        depth=args.depth,
        idempotency_key=args.idempotency_key,
        formats=[f for f in args.format.split(",") if f.strip()],
        camera=args.camera,
        sharpen=args.sharpen,
        color_coherence=args.color_coherence,
        interpolate=args.interpolate,
        blend_prompts=args.blend_prompts,
        loras=args.lora,
        base_model=args.base,
        controlnet=args.controlnet,
        preset=args.preset,
        truncate_prompts=args.truncate_prompts,
        review=getattr(args, "review", False),
    )
    for name in ("seed", "width", "height", "steps", "fps"):
        value = getattr(args, name)
        if value is not None:
            setattr(req, name, value)
    for name in ("strength", "guidance"):
        set_number_or_schedule(req, name, getattr(args, name))
    set_seed_mode(req, args.seed_mode)
    return req


def set_number_or_schedule(req, name: str, value: str | None) -> None:
    """``--strength`` or ``--guidance``: a plain number sets ``name`` for every frame;
    anything else is the keyframe schedule ``{name}_schedule`` (validated, with the
    position of any error, by the server). None sets nothing."""
    if value is None:
        return
    try:
        setattr(req, name, float(value))
    except ValueError:
        setattr(req, f"{name}_schedule", value)


def _check_utf8(args: argparse.Namespace) -> None:
    """Arguments that are not UTF-8 (undecodable bytes in argv) refused naming the flag."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                flag = name if name == "idea" else "--" + name.replace("_", "-")
                raise ValueError(f"{flag}: must be UTF-8 text") from None


def _replay_request(args: argparse.Namespace):
    """The request of ``--from-manifest FILE`` (other render flags must not be mixed in)."""
    from ghibli_anim.cli import replay

    manifest = replay.load_manifest(args.from_manifest)
    if args.idea or args.frames is not None or args.plan is not None:
        raise ValueError(
            "--from-manifest: replays the recorded run; give no idea, --frames or --plan"
        )
    if replay.needs_init_image(manifest) and getattr(args, "init_image", None) is None:
        raise ValueError(
            "--init-image: the recorded run started from an init image; give the same file"
        )
    return replay.request_from_manifest(manifest)


async def attach_init_image(
    request: animation_pb2.CreateAnimationRequest,
    args: argparse.Namespace,
    client: AnimationClient,
) -> None:
    """``--init-image FILE``: CreateUpload, PUT the file, name the upload in the request."""
    path = getattr(args, "init_image", None)
    if path is not None:
        from ghibli_anim.runtime.client import upload_init_image

        request.init_upload_id = await upload_init_image(client, path)


def compare_replay(args: argparse.Namespace, rc: int) -> int:
    """After ``--from-manifest`` with ``--out``: are the frames the recorded bytes?"""
    if rc != 0 or getattr(args, "from_manifest", None) is None or args.out is None:
        return rc
    from ghibli_anim.cli import replay

    original = replay.load_manifest(args.from_manifest)
    result = replay.compare(original, replay.load_manifest(args.out / "manifest.json"))
    for line in result.lines:
        print(f"replay: {line}", file=sys.stderr)
    if not result.reproduced and result.same_setup:
        print("replay: same device, dtype and versions, yet different bytes", file=sys.stderr)
        return 1
    return 0
