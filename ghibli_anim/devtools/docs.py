"""Generated parts of README.md: the variables table and the limits table.

README.md holds marker comments around each block; ``make docs`` rewrites the
blocks from the config and limits modules, and a test fails when they drifted.

    python -m ghibli_anim.devtools.docs README.md [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ghibli_anim.contracts import config, limits


def _limits_table() -> str:
    lines = ["| field | allowed |", "|---|---|"]
    lines += [f"| `{name}` | {allowed} |" for name, allowed in limits.table()]
    return "\n".join(lines)


BLOCKS = {"config": config.markdown_table, "limits": _limits_table}


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    for name, make in BLOCKS.items():
        pattern = re.compile(
            rf"(<!-- generated:{name}:start -->\n)(?:.*?\n)?(<!-- generated:{name}:end -->)", re.S
        )
        if not pattern.search(text):
            raise ValueError(f"README: marker block {name!r} is missing")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("readme", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{args.readme} is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
