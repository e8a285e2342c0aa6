"""The commands that talk to a planner over gRPC: `ghibli-anim submit | fork | extend | ...`.

``submit``, ``fork``, ``extend``, ``status``, ``watch``, ``approve``, ``cancel``,
``resume``, ``delete`` and ``list``.

``--server HOST:PORT`` (or ``ANIM_SERVER``) names the planner; ``ANIM_CLIENT_*`` carry a
bearer token and TLS files. :func:`follow` is shared with the embedded ``generate``: it
shows a progress bar for planning and one for the frames, then downloads and verifies
the outputs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ghibli_anim.cli import fork
from ghibli_anim.cli.render_flags import (
    add_render_flags,
    attach_init_image,
    build_request,
    compare_replay,
)
from ghibli_anim.contracts import events, lifecycle
from ghibli_anim.contracts.events import event_name
from ghibli_anim.contracts.lifecycle import STATUS_NAMES, status_name
from ghibli_anim.contracts.limits import LIST_PAGE_SIZE
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2

if TYPE_CHECKING:
    from tqdm import tqdm

    from ghibli_anim.runtime.client import AnimationClient

COMMANDS = (
    "submit",
    "fork",
    "extend",
    "status",
    "watch",
    "approve",
    "cancel",
    "resume",
    "delete",
    "list",
)
DEFAULT_SERVER = "localhost:50051"


def _at_least_one(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 1, got {raw!r:.40}")
    return value


def _add_new_job_flags(p: argparse.ArgumentParser, server: str) -> None:
    """The planner, and what to do with the new job once made (``fork``, ``extend``)."""
    p.add_argument("--server", default=server)
    p.add_argument("--watch", action="store_true", help="watch progress, then download outputs")
    p.add_argument("--out", type=Path, help="with --watch: download into this folder")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the commands that talk to a running planner."""
    server = os.environ.get("ANIM_SERVER", DEFAULT_SERVER)
    p = sub.add_parser("submit", help="submit a job to a planner over gRPC")
    add_render_flags(p)
    p.add_argument("--server", default=server)
    p.add_argument("--wait", action="store_true", help="watch progress, then download outputs")
    p = sub.add_parser("status", help="show a job")
    p.add_argument("job_id")
    p.add_argument("--server", default=server)
    p.add_argument(
        "--storyboard",
        action="store_true",
        help="print only the job's storyboard (JSON), e.g. to edit it before approve --plan",
    )
    p = sub.add_parser(
        "fork",
        help="re-render a finished job from frame K with changes (a new job; frames before "
        "K are the parent's)",
    )
    fork.add_server_flags(p)
    _add_new_job_flags(p, server)
    p = sub.add_parser(
        "extend",
        help="render M more frames after a finished job's last one (a new job keeping every "
        "frame of the parent)",
    )
    fork.add_extend_flags(p)
    _add_new_job_flags(p, server)
    for name, text in (
        ("watch", "stream a job's events"),
        ("cancel", "cancel a job"),
        ("resume", "resume a failed or cancelled job"),
        ("delete", "delete a finished job: its files, events and state"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        p.add_argument("--server", default=server)
    p = sub.add_parser("approve", help="start rendering a job waiting for review (PLANNED)")
    p.add_argument("job_id")
    p.add_argument("--server", default=server)
    p.add_argument(
        "--plan",
        type=Path,
        metavar="FILE",
        help="the edited storyboard to render (default: the storyboard as planned)",
    )
    p = sub.add_parser("list", help="list jobs, newest first")
    p.add_argument("--server", default=server)
    p.add_argument("--client", default="", help="only this client's jobs")
    p.add_argument(
        "--status", default="", type=str.upper, choices=["", *STATUS_NAMES], help="only these"
    )
    p.add_argument("--limit", type=_at_least_one, default=None, help="at most this many")


class Progress:
    """Progress bars driven by a job's events."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None
        self.frames_done: set[int] = set()
        self.messages: list[str] = []

    def _say(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=sys.stderr)

    def on_event(self, ev: bus_pb2.Event, frames_total: int) -> None:
        kind = ev.type
        if kind == events.JOB_CREATED:
            self._say(f"job {ev.job_id}: planning the storyboard...")
        elif kind == events.JOB_PLANNED:
            if ev.reason:
                self._say(f"notice: {ev.reason}")
            if not self.quiet and self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=frames_total, unit="frame", desc="rendering", file=sys.stderr)
        elif kind == events.FRAME_RENDERED and ev.frame not in self.frames_done:
            self.frames_done.add(ev.frame)
            if ev.reason:  # e.g. the frame was re-rendered in float32
                self._say(f"notice: {ev.reason}")
            if self.bar is not None:
                self.bar.update(1)
        elif kind == events.FRAME_PROGRESS and self.bar is not None:
            # reason carries the seconds since the frame started ("elapsed 1.234 s").
            elapsed = f" {ev.reason.removeprefix('elapsed ')}" if ev.reason else ""
            self.bar.set_postfix_str(f"frame {ev.frame} step {ev.step}/{ev.steps}{elapsed}")
        elif kind == events.JOB_ASSEMBLED:
            self._say("assembled the animation")
        elif kind in (events.FRAME_FAILED, events.DEPTH_FAILED):
            self._say(f"{event_name(kind)} frame {ev.frame}: {ev.reason}")
        elif kind in (events.JOB_FAILED, events.JOB_CANCELLED):
            self._say(f"{event_name(kind)}: {ev.reason}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


async def follow(
    client: AnimationClient,
    job_id: str,
    *,
    out_dir: Path | None,
    quiet: bool = False,
    download: bool = True,
) -> int:
    """Watch a job to its end (or to its review: PLANNED, then say how to go on);
    download its files into out_dir when it completes."""
    anim = await client.get(job_id)
    progress = Progress(quiet)
    try:
        async for ev in client.watch(job_id):
            if ev.type in (events.JOB_PLANNED, events.JOB_APPROVED):
                anim = await client.get(job_id)
                if anim.status == lifecycle.PLANNED:
                    break
            progress.on_event(ev, anim.frames_total)
    finally:
        progress.close()
    anim = await client.get(job_id)
    if anim.status == lifecycle.PLANNED:
        print(
            f"job {job_id} planned, waiting for review ({anim.frames_total} frames)",
            file=sys.stderr,
        )
        return 0
    if anim.status != lifecycle.COMPLETED:
        print(f"job {job_id} {status_name(anim.status)}: {anim.error}", file=sys.stderr)
        return 1
    if download and out_dir is not None:
        from ghibli_anim.runtime.client import download_files

        download_files([*anim.outputs, *anim.frame_files], job_id, out_dir)
    print(f"job {job_id} completed ({anim.frames_done} frames)", file=sys.stderr)
    for f in anim.outputs:
        print(str(out_dir / f.key.split("/", 2)[2]) if out_dir is not None else f.url)
    return 0


def _print_animation(anim: animation_pb2.Animation) -> None:
    print(f"job      {anim.job_id}")
    print(f"status   {status_name(anim.status)}")
    print(f"idea     {anim.idea}")
    print(f"title    {anim.title}")
    print(f"profile  {anim.profile}")
    print(f"frames   {anim.frames_done}/{anim.frames_total}")
    print(f"seed     {anim.seed}")
    print(f"planner  {anim.planner_backend}")
    if anim.error:
        print(f"error    {anim.error}")
    for f in anim.outputs:
        print(f"output   {f.name}  {f.size_bytes} bytes  sha256 {f.sha256[:12]}  {f.url}")


async def _run(args: argparse.Namespace) -> int:
    from ghibli_anim.runtime.client import AnimationClient

    async with AnimationClient.from_env(args.server) as client:
        cmd = args.command
        if cmd == "submit":
            request = build_request(args)
            if args.wait and args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)  # PermissionError before the job
            await attach_init_image(request, args, client)  # --init-image via CreateUpload
            resp = await client.create(request)
            note = " (existing job for this idempotency key)" if resp.existing else ""
            print(f"job {resp.job_id} created{note}", file=sys.stderr)
            if request.review:
                print(
                    f"once planned: ghibli-anim status {resp.job_id} --storyboard prints the "
                    f"storyboard; ghibli-anim approve {resp.job_id} [--plan FILE] renders it",
                    file=sys.stderr,
                )
            if not args.wait:
                print(resp.job_id)
                return 0
            out = args.out or Path("runs") / resp.job_id
            return await follow(client, resp.job_id, out_dir=out)
        if cmd in ("fork", "extend"):
            if cmd == "fork":
                fork_request = fork.fork_animation_request(args)
            else:
                extend_request = fork.extend_animation_request(args)
            if args.watch and args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)  # PermissionError before the job
            if cmd == "fork":
                resp = await client.fork(fork_request)
                what = f"a fork of {args.job_id} from frame {args.from_frame}"
            else:
                resp = await client.extend(extend_request)
                kept = resp.animation.frames_total - args.frames
                what = f"{args.job_id} extended by {args.frames} frames (from frame {kept})"
            note = " (existing job for this idempotency key)" if resp.existing else ""
            print(f"job {resp.job_id} created: {what}{note}", file=sys.stderr)
            if not args.watch:
                print(resp.job_id)
                return 0
            return await follow(client, resp.job_id, out_dir=args.out or Path("runs") / resp.job_id)
        if cmd == "status":
            anim = await client.get(args.job_id)
            if args.storyboard:
                if not anim.storyboard_json:
                    raise ValueError(
                        f"--storyboard: job {anim.job_id} is {status_name(anim.status)}, "
                        "with no storyboard yet"
                    )
                print(anim.storyboard_json)
                return 0
            _print_animation(anim)
            return 0
        if cmd == "watch":
            anim = await client.get(args.job_id)
            async for ev in client.watch(args.job_id):
                extra = f" {ev.reason}" if ev.reason else ""
                if ev.type == events.FRAME_PROGRESS:
                    extra = f" step={ev.step}/{ev.steps}{extra}"
                frame = f" frame={ev.frame}" if ev.frame >= 0 else ""
                print(f"{ev.sequence:>6} {event_name(ev.type)}{frame}{extra}")
            anim = await client.get(args.job_id)
            print(f"status {status_name(anim.status)}")
            return 0
        if cmd == "approve":
            from ghibli_anim.cli.render_flags import read_plan

            edited = read_plan(args.plan) if args.plan is not None else ""
            anim = await client.approve(args.job_id, edited)
            print(f"job {anim.job_id} {status_name(anim.status)}")
            return 0
        if cmd == "cancel":
            anim = await client.cancel(args.job_id)
            print(f"job {anim.job_id} {status_name(anim.status)}")
            return 0
        if cmd == "resume":
            anim = await client.resume(args.job_id)
            print(f"job {anim.job_id} {status_name(anim.status)}")
            return 0
        if cmd == "delete":
            out = await client.delete(args.job_id)
            print(f"job {args.job_id} deleted ({out.objects_deleted} files)")
            return 0
        if cmd == "list":
            rows = [
                (a.job_id, status_name(a.status), f"{a.frames_done}/{a.frames_total}", a.title)
                for a in await client.list(
                    page_size=LIST_PAGE_SIZE.hi,
                    status=types_pb2.JobStatus.Value(f"JOB_STATUS_{args.status}")
                    if args.status
                    else 0,
                    client_id=args.client,
                    limit=args.limit,
                )
            ]
            for row in rows:
                print("  ".join(row))
            return 0
    raise ValueError(f"unknown command {args.command}")


def run(args: argparse.Namespace) -> int:
    # gRPC errors end as one line in cli/errors.py (UNAVAILABLE names --server).
    return compare_replay(args, asyncio.run(_run(args)))
