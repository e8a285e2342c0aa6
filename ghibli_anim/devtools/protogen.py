"""Generate the Python protobuf and gRPC code from proto/ into ghibli_anim/contracts/pb.

`make proto` runs this; a test regenerates into a temporary folder and fails when
the checked-in copy drifted. protoc writes imports such as
``from animation.v1 import types_pb2``; they are rewritten to this package so the
generated modules import each other without touching ``sys.path``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PACKAGE = "ghibli_anim.contracts.pb"
REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "animation" / "v1"
OUT_DIR = REPO_ROOT / "ghibli_anim" / "contracts" / "pb"

_IMPORT_RE = re.compile(r"^from animation\.v1 import (\w+) as (\w+)$", re.MULTILINE)
_IMPORT_PLAIN_RE = re.compile(r"^from animation\.v1 import (\w+)$", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every .proto under proto/animation/v1 into ``out_dir``."""
    from grpc_tools import protoc  # dev dependency, imported only here

    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_DIR}")
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed: " + " ".join(args))
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "animation" / "v1").iterdir()):
            text = src.read_text()
            text = _IMPORT_RE.sub(rf"from {PACKAGE} import \1 as \2", text)
            text = _IMPORT_PLAIN_RE.sub(rf"from {PACKAGE} import \1", text)
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    init = out_dir / "__init__.py"
    init.write_text('"""Generated from proto/animation/v1 by `make proto`; do not edit."""\n')
    return [init, *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
