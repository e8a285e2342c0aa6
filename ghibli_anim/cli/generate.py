"""`ghibli-anim generate`: an animation on this machine, with the real services.

The request is validated before anything starts, and so is everything a user can get
wrong about this machine: the --init-image file, a writable --out, the local models
(paths under ANIM_MODEL_ROOTS, the tiny models written on first use) and the hub models
of the profile with the request's overrides, fetched first (an offline machine hears so
at once, in one line). Then the embedded stack
(:mod:`ghibli_anim.embedded`) runs every service on one event loop and this command
drives the job through the planner's gRPC API, with the same progress bars as
``submit --wait``. Ctrl-C drains like SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

from ghibli_anim.cli import fork
from ghibli_anim.cli.render_flags import (
    add_render_flags,
    attach_init_image,
    build_request,
    compare_replay,
)
from ghibli_anim.contracts import config, lifecycle

COMMANDS = ("generate",)

# generate's renderer flags become the embedded services' variables.
_RENDERER_FLAGS = {
    "low_vram": "ANIM_LOW_VRAM",
    "compile": "ANIM_COMPILE",
    "tiny_vae": "ANIM_TINY_VAE",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="render an animation on this machine (embedded mode)")
    add_render_flags(p)
    fork.add_flags(p)
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


def run(args: argparse.Namespace) -> int:
    from ghibli_anim.runtime import logs
    from ghibli_anim.runtime.service import use_short_gil_switches

    use_short_gil_switches()
    _renderer_env(args)
    settings = config.load("embedded")
    logs.setup(
        "embedded",
        level=settings["ANIM_LOG_LEVEL"] if "ANIM_LOG_LEVEL" in os.environ else "WARNING",
        fmt="text",
    )
    return compare_replay(args, asyncio.run(_generate(args, settings)))


def _renderer_env(args: argparse.Namespace) -> None:
    for flag, var in _RENDERER_FLAGS.items():
        if getattr(args, flag, False):
            os.environ[var] = "true"
    if getattr(args, "from_manifest", None) is not None:
        from ghibli_anim.cli import replay

        # What the recorded run rendered with, unless this environment says otherwise.
        for var, value in replay.recorded_env(replay.load_manifest(args.from_manifest)).items():
            os.environ.setdefault(var, value)


def _warn_if_slow(profile: str) -> None:
    if profile == "tiny":
        print(
            "profile tiny: random-weight models, the frames are noise (a smoke run)",
            file=sys.stderr,
        )
        return
    import torch  # only for a real profile: it renders in this process

    from ghibli_anim.runtime.devices import cuda_problem

    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        # A GPU that this torch cannot use is worth fixing before waiting minutes per frame.
        problem = cuda_problem()
        print(
            f"profile {profile}: {problem or 'no GPU found'}; Stable Diffusion 1.5 on a CPU "
            "takes minutes per frame (try --steps 20 or a smaller --width/--height)",
            file=sys.stderr,
        )


def _check_models(profile, settings: config.Settings, depth: bool) -> None:
    """Every local model the job loads exists (ValueError naming the field); missing
    ``tiny:`` models are written now rather than by the first service that needs one."""
    from ghibli_anim.cli.models import model_fields
    from ghibli_anim.contracts import model_refs

    for field, ref in model_fields(profile, depth=depth):
        kind = model_refs.check_ref(ref, settings, field, allow_store=True)
        if kind in ("path", "tiny"):  # hub models were fetched; store LoRAs are the renderer's
            model_refs.locate(ref, settings, field=field)


async def _generate(args: argparse.Namespace, settings: config.Settings) -> int:
    from ghibli_anim.cli.jobs import follow
    from ghibli_anim.cli.models import fetch_profile
    from ghibli_anim.contracts.profiles import profile_names, resolve_profile
    from ghibli_anim.contracts.uploads import read_image_file
    from ghibli_anim.contracts.validate import validate_create
    from ghibli_anim.embedded import EmbeddedStack
    from ghibli_anim.runtime.client import AnimationClient
    from ghibli_anim.runtime.service import install_stop_signals

    runs_dir = Path(settings["ANIM_RUNS_DIR"])
    if args.from_run is not None and args.approve:
        request = fork.approve_request(args, runs_dir)
    elif args.from_run is not None:
        request = fork.fork_request(args, runs_dir)
        print(fork.describe(request), file=sys.stderr)
    elif args.from_frame is not None or args.prompt or args.approve or args.extend is not None:
        raise ValueError("--from-frame, --extend, --prompt and --approve: only with --from-run DIR")
    else:
        request = build_request(args)
    # A bad request is refused before any service starts (the planner checks it again).
    validate_create(
        request,
        profile_names=profile_names(settings),
        default_profile=settings["ANIM_PROFILE"],
        settings=settings,
    )
    profile = resolve_profile(request, settings)  # the profile with the request's overrides
    _warn_if_slow(profile.name)
    if args.init_image is not None:
        read_image_file(args.init_image)  # a bad file fails now, not after start-up
    for folder in (runs_dir, args.out):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)  # PermissionError before rendering
    # Download the models this run reads once (cached in HF_HOME; the ControlNet and the
    # depth model only with --depth), before any service starts: an offline machine hears
    # so at once, with what to do. Local models must exist.
    if fetch_profile(profile, depth=request.depth) != 0:
        return 1
    _check_models(profile, settings, request.depth)
    async with EmbeddedStack() as stack:
        install_stop_signals(stack.stop)
        async with AnimationClient(stack.planner_target) as client:
            await attach_init_image(request, args, client)  # --init-image via CreateUpload
            resp = await client.create(request)
            job_id = resp.job_id
            follow_task = asyncio.create_task(
                follow(client, job_id, out_dir=runs_dir / job_id, quiet=args.quiet, download=False)
            )
            stopped = asyncio.create_task(stack.stop.wait())
            done, _ = await asyncio.wait(
                {follow_task, stopped}, return_when=asyncio.FIRST_COMPLETED
            )
            if follow_task not in done:
                follow_task.cancel()
                # The job cannot go on without this process (the services are stopping):
                # recorded as cancelled.
                anim = resp.animation
                anim.status, anim.error = lifecycle.CANCELLED, "interrupted"
                fork.write_job_record(runs_dir / job_id, fork.job_record(request, anim))
                print(f"interrupted; job {job_id} stopped", file=sys.stderr)
                return 130
            rc = follow_task.result()
            # How the job ended, with its request: what a fork of this run starts from
            # (or, waiting for review, what its approval renders).
            anim = await client.get(job_id)
            fork.write_job_record(runs_dir / job_id, fork.job_record(request, anim))
    if anim.status == lifecycle.PLANNED:
        # This process, and the job store with it, ends here: the storyboard and the
        # request in the run folder are what an approval renders.
        folder = runs_dir / job_id
        print(
            f"storyboard: {folder / 'plan.json'}\n"
            f"approve it: ghibli-anim generate --from-run {folder} --approve [--plan FILE]",
            file=sys.stderr,
        )
        return rc
    if rc == 0 and args.out is not None:
        shutil.copytree(runs_dir / job_id, args.out, dirs_exist_ok=True)
        print(f"copied the job's files to {args.out}", file=sys.stderr)
    return rc
