"""cli/main.py: building every command's parser imports none of the heavy dependencies.

`ghibli-anim probe` runs every few seconds as a container health check, and ``serve
planner`` must start without torch: the command modules import grpc, NATS, the S3 client,
torch and diffusers inside the functions that run a command, never at the top.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "grpc", "nats", "minio", "PIL", "numpy")


def test_building_the_parser_imports_no_heavy_dependency() -> None:
    code = (
        "import json, sys\n"
        "from ghibli_anim.cli import main\n"
        "main.build_parser()\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = set(json.loads(done.stdout))
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
