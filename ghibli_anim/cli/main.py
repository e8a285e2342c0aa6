"""The `ghibli-anim` command line.

Each command imports only what it needs, so `serve planner` and `serve
assembler` start without torch, and `--help` is instant.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from ghibli_anim.contracts import limits, model_refs
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.bus.names import EVENTS_STREAM, IDEM_BUCKET, JOBS_BUCKET, WORK_STREAM
from ghibli_anim.runtime.bus.topology import init_bus_from_settings


def _add_render_flags(p: argparse.ArgumentParser) -> None:
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
        default="increment",
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
    p.add_argument("--idempotency-key", default="", help="same key, same job (safe retries)")
    p.add_argument("--out", type=Path, help="copy the job's output tree into this folder")


def build_request(args: argparse.Namespace):
    """The CreateAnimationRequest for generate/submit flags (validated by the server)."""
    from ghibli_anim.contracts import seeds
    from ghibli_anim.contracts.pb import animation_pb2

    _check_utf8(args)
    if getattr(args, "from_manifest", None) is not None:
        return _replay_request(args)
    if not args.idea.strip():
        raise ValueError("idea: must not be empty (or give --from-manifest FILE)")
    if args.frames is None:
        raise ValueError(f"--frames: required ({limits.FRAMES.describe()})")
    req = animation_pb2.CreateAnimationRequest(
        idea=args.idea,
        frames=args.frames,
        profile=args.profile,
        seed_mode=seeds.parse_seed_mode(args.seed_mode) if ":" not in args.seed_mode else 0,
        seed_mode_schedule=args.seed_mode if ":" in args.seed_mode else "",
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
    )
    for name in ("seed", "width", "height", "steps", "fps"):
        value = getattr(args, name)
        if value is not None:
            setattr(req, name, value)
    # A plain number sets the value for every frame; anything else is a keyframe schedule
    # (validated, with the position of any error, by the server).
    for name in ("strength", "guidance"):
        value = getattr(args, name)
        if value is None:
            continue
        try:
            setattr(req, name, float(value))
        except ValueError:
            setattr(req, f"{name}_schedule", value)
    if args.plan is not None:
        try:
            req.storyboard_json = args.plan.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--plan: cannot read {args.plan}: {exc}") from None
    return req


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


async def attach_init_image(request, args: argparse.Namespace, client) -> None:
    """``--init-image FILE``: CreateUpload, PUT the file, name the upload in the request."""
    path = getattr(args, "init_image", None)
    if path is None:
        return
    from ghibli_anim.contracts.uploads import upload_init_image

    request.init_upload_id = await upload_init_image(
        client.stub, path, metadata=client._metadata(), timeout_s=client.timeout_s
    )


def _compare_replay(args: argparse.Namespace, rc: int) -> int:
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


def _renderer_env(args: argparse.Namespace) -> None:
    """generate's renderer flags become the embedded services' variables."""
    flags = {"low_vram": "ANIM_LOW_VRAM", "compile": "ANIM_COMPILE", "tiny_vae": "ANIM_TINY_VAE"}
    for flag, var in flags.items():
        if getattr(args, flag, False):
            os.environ[var] = "true"
    if getattr(args, "from_manifest", None) is not None:
        from ghibli_anim.cli import replay

        # What the recorded run rendered with, unless this environment says otherwise.
        for var, value in replay.recorded_env(replay.load_manifest(args.from_manifest)).items():
            os.environ.setdefault(var, value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghibli-anim",
        description="Turn a one-line idea into a Studio-Ghibli-style animation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="render an animation on this machine (embedded mode)")
    _add_render_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--low-vram", action="store_true", help="model CPU offload and VAE slicing (small GPUs)"
    )
    p.add_argument(
        "--tiny-vae", action="store_true", help="decode with the profile's tiny autoencoder (TAESD)"
    )
    p.add_argument(
        "--compile", action="store_true", help="channels_last + torch.compile (slow first frame)"
    )

    p = sub.add_parser("plan", help="write a storyboard for an idea on this machine (no services)")
    p.add_argument("idea", help="the one-line idea")
    p.add_argument("--frames", type=int, required=True, help=f"frames ({limits.FRAMES.describe()})")
    p.add_argument(
        "--backend",
        choices=("auto", "hf", "openai", "local", "offline"),
        help="storyboard LLM (default: ANIM_PLANNER_BACKEND)",
    )
    p.add_argument("--profile", default="", help="model profile (default: ANIM_PROFILE)")
    p.add_argument("--json", action="store_true", help="print only the storyboard JSON")

    p = sub.add_parser("submit", help="submit a job to a planner over gRPC")
    _add_render_flags(p)
    p.add_argument("--server", default=os.environ.get("ANIM_SERVER", "localhost:50051"))
    p.add_argument("--wait", action="store_true", help="watch progress, then download outputs")

    for name, text in (
        ("status", "show a job"),
        ("watch", "stream a job's events"),
        ("cancel", "cancel a job"),
        ("resume", "resume a failed or cancelled job"),
        ("delete", "delete a finished job: its files, events and state"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        p.add_argument("--server", default=os.environ.get("ANIM_SERVER", "localhost:50051"))
    p = sub.add_parser("list", help="list jobs")
    p.add_argument("--server", default=os.environ.get("ANIM_SERVER", "localhost:50051"))

    p = sub.add_parser("serve", help="run one service (reads ANIM_* variables)")
    p.add_argument("service", choices=("planner", "renderer", "depth", "assembler", "web"))

    p = sub.add_parser(
        "up-local", help="run NATS, SeaweedFS and every service as local processes (no Docker)"
    )
    p.add_argument("--dir", type=Path, default=Path(".local-stack"), help="data and logs folder")
    p.add_argument("--replicas", default="", help="replicas per service, e.g. renderer=2,depth=1")

    store = sub.add_parser("store", help="the object store")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    store_sub.add_parser("init", help="create the bucket ANIM_S3_BUCKET if it does not exist")

    bus = sub.add_parser("bus", help="NATS streams, KV buckets and consumers")
    bus_sub = bus.add_subparsers(dest="bus_command", required=True)
    p = bus_sub.add_parser("init", help="create or update streams, buckets and durables")
    p.add_argument("--url", default=os.environ.get("ANIM_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--replicas",
        type=int,
        choices=(1, 3, 5),
        default=1,
        help="copies of each stream and bucket: 1, or 3 (or 5) in a NATS cluster",
    )

    models = sub.add_parser("models", help="model folders")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    p = models_sub.add_parser("tiny", help="write the tiny random-weight models (deterministic)")
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--single-file",
        action="store_true",
        help="also write DIR/pipeline.safetensors: the pipeline in the original (LDM) layout",
    )
    p = models_sub.add_parser("fetch", help="download a profile's models into HF_HOME")
    p.add_argument("profile")

    p = sub.add_parser(
        "probe", help="exit 0 only when a gRPC server's grpc.health.v1 status is SERVING"
    )
    p.add_argument(
        "--target",
        default="",
        help="HOST:PORT (default 127.0.0.1:$ANIM_GRPC_PORT, else 127.0.0.1:50051)",
    )
    p.add_argument(
        "--service", default="", help="grpc.health.v1 service name (default: the whole server)"
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")

    from ghibli_anim.cli import train as trainer_cli  # argparse only: no torch

    trainer_cli.add_parsers(sub)

    sub.add_parser("config", help="print every ANIM_* variable (secrets masked)")
    sub.add_parser("limits", help="print the limits every edge enforces")
    return parser


async def _bus_init(url: str, replicas: int = 1) -> int:
    """`bus init`: streams, KV buckets and durables, created or updated in place."""
    from ghibli_anim.contracts import config

    settings = config.load("client", {**os.environ, "ANIM_NATS_URL": url})
    conn = await connect(settings, "bus-init", first_connect_timeout_s=15)
    try:
        await init_bus_from_settings(conn.js, settings, replicas=replicas)
    finally:
        await conn.close()
    print(
        f"bus ready at {url}: streams {WORK_STREAM}, {EVENTS_STREAM}; "
        f"buckets {JOBS_BUCKET}, {IDEM_BUCKET}"
    )
    return 0


def _up_local(args: argparse.Namespace) -> int:
    """The distributed topology as processes until Ctrl-C (what `make up-local` runs)."""
    import signal
    import threading

    from ghibli_anim.contracts.config import SERVICES
    from ghibli_anim.devtools.stack import LocalStack

    replicas: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in args.replicas.split(","))):
        name, _, count = item.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--replicas: expected NAME=COUNT with COUNT >= 1, got {item!r}")
        replicas[name] = int(count)
    # The deployment's nats.conf with its per-service users, as compose runs it.
    # Your ANIM_* settings reach the services, except those the stack itself decides.
    own = ("ANIM_NATS_", "ANIM_S3_", "ANIM_STORE", "ANIM_GRPC_", "ANIM_WEB_", "ANIM_PLANNER_TARGET")
    env = {k: v for k, v in os.environ.items() if k.startswith("ANIM_") and not k.startswith(own)}
    stack = LocalStack(
        args.dir.resolve(),
        services=(*SERVICES, "web"),
        env=env,
        replicas=replicas,
        nats_auth=True,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with stack:
        print(f"planner  {stack.planner_target}  (gRPC AnimationService)")
        print(f"web      {stack.web_url}  (submit an idea, watch the frames land)")
        print(f"nats     {stack.nats.url}")
        print(f"s3       {stack.s3.url}  bucket {stack.env()['ANIM_S3_BUCKET']}")
        print(f"logs     {args.dir / 'services'}")
        print(
            f"try: ghibli-anim submit 'a dragon over a town' --frames 5 "
            f"--server {stack.planner_target} --wait"
        )
        print("Ctrl-C stops everything.", flush=True)
        try:
            while not stopped.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        print("stopping...", flush=True)
    return 0


def _probe(target: str, service: str, timeout: float) -> int:
    """`probe`: 0 when the grpc.health.v1 status is SERVING, else 1 (container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ghibli_anim.contracts import config

    if not target:
        port = os.environ.get("ANIM_GRPC_PORT") or str(config.GRPC_PORTS["planner"])
        target = f"127.0.0.1:{port}"
    if not timeout > 0:
        raise ValueError(f"--timeout: must be > 0 seconds, got {timeout}")
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"{target}: no health answer ({exc.code().name})", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _print_table(rows, headers) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _build_tiny(out_dir: Path, components) -> Path:
    from ghibli_anim.devtools.tiny_models import write_tiny_models  # torch only when building

    return write_tiny_models(out_dir, components)


def main(argv: list[str] | None = None) -> int:
    # `--profile tiny` works on a fresh machine: missing tiny models are written on first use.
    model_refs.use_tiny_builder(_build_tiny)
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # validation errors name the field
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "config":
        from ghibli_anim.contracts import config

        _print_table(config.describe(), ("variable", "value", "meaning"))
        return 0
    if cmd == "limits":
        _print_table(limits.table(), ("field", "allowed"))
        return 0
    if cmd == "models":
        from ghibli_anim.cli import models as models_cli

        return models_cli.run(args)
    if cmd == "bus":
        return asyncio.run(_bus_init(args.url, args.replicas))
    if cmd == "probe":
        return _probe(args.target, args.service, args.timeout)
    if cmd == "store":
        from ghibli_anim.contracts import config
        from ghibli_anim.runtime.store.open import open_store

        settings = config.load("client", {**os.environ, "ANIM_STORE": "s3"})
        open_store(settings).ensure_bucket()
        print(f"bucket {settings['ANIM_S3_BUCKET']} ready at {settings['ANIM_S3_ENDPOINT']}")
        return 0
    if cmd == "up-local":
        return _up_local(args)
    if cmd == "serve" and args.service == "web":
        from ghibli_anim.services.web.service import serve as serve_web  # HTTP, not a bus worker

        return serve_web()
    if cmd == "serve":
        from ghibli_anim.runtime.service import serve

        return serve(args.service)
    if cmd == "plan":
        from ghibli_anim.services.planner.storyboard_llm import run_plan_command

        return run_plan_command(args)
    if cmd in ("dataset", "train-lora"):
        from ghibli_anim.cli import train as trainer_cli

        return trainer_cli.run(args)
    if cmd == "generate":
        from ghibli_anim import embedded

        _renderer_env(args)
        return _compare_replay(args, embedded.generate(args))
    from ghibli_anim.cli import jobs as client_cli

    return _compare_replay(args, client_cli.run(args))


if __name__ == "__main__":
    sys.exit(main())
