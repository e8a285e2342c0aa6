"""The `ghibli-anim` command: its parser and dispatch, one module per command group.

=============================  ============================================================
``generate``                   :mod:`.generate`: render on this machine (embedded mode)
``submit fork extend status    :mod:`.jobs`: a running planner over gRPC
watch cancel resume delete
list``
``plan``                       :mod:`.plan`: a storyboard, no services
``serve probe``                :mod:`.serve`: run one service, ask a service's health
``bus store config limits``    :mod:`.admin`: set up the bus and the bucket, print settings
``models``                     :mod:`.models`: tiny models, fetching a profile's models
``dataset train-lora``         :mod:`.train`: datasets and style LoRAs
``up-local``                   :mod:`.local`: the distributed topology as local processes
=============================  ============================================================

Bad input ends with ``error: <field>: <problem>`` and exit status 2; Ctrl-C with 130.
Every other expected failure (a missing file, a folder without write permission, no
network, a server that does not answer) is one ``error:`` line too, with exit status 1
(:mod:`.errors`); only bugs show a traceback.

Command modules import their heavy dependencies (grpc, NATS, the S3 client, torch) inside
the functions that run a command, not at the top: every command's parser is built at
start-up, ``ghibli-anim probe`` runs every few seconds as a container health check, and
``serve planner`` must start without torch (``tests/unit/cli/test_main.py`` and
``tests/unit/services/planner/test_service.py`` check them).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from ghibli_anim.cli import admin, errors, generate, jobs, local, models, plan, serve, train
from ghibli_anim.contracts import model_refs

GROUPS: tuple[ModuleType, ...] = (generate, plan, jobs, serve, local, admin, models, train)
"""Command modules: each has ``COMMANDS``, ``add_parsers(sub)`` and ``run(args)``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghibli-anim",
        description="Turn a one-line idea into a Studio-Ghibli-style animation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def _build_tiny(out_dir: Path, components: Sequence[str]) -> Path:
    from ghibli_anim.devtools.tiny_models import write_tiny_models  # torch only when building

    return write_tiny_models(out_dir, components)


def _stdout_gone() -> int:
    """The reader of stdout went away (``ghibli-anim list | head -1``): nothing to say.
    stdout goes to devnull, as Python's documentation advises, so that the flush at exit
    cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return errors.FAILED


def main(argv: list[str] | None = None) -> int:
    # `--profile tiny` works on a fresh machine: missing tiny models are written on first use.
    model_refs.use_tiny_builder(_build_tiny)
    args = build_parser().parse_args(argv)
    group = next(g for g in GROUPS if args.command in g.COMMANDS)
    try:
        status = group.run(args)
        sys.stdout.flush()  # a reader gone away fails here, not at interpreter exit
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's: a socket's broken pipe comes wrapped by its library
        return _stdout_gone()
    except Exception as exc:
        explained = errors.explain(exc, args)
        if explained is None:
            raise  # a bug: its traceback is the report
        if os.environ.get("ANIM_LOG_LEVEL", "").upper() == "DEBUG":
            traceback.print_exc()
        print(f"error: {explained.message}", file=sys.stderr)
        return explained.status


if __name__ == "__main__":
    sys.exit(main())
