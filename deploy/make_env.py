"""Write .env for docker compose from .env.example, with random secrets.

    python deploy/make_env.py [.env.example] [.env]

Every empty ``*_PASSWORD`` / ``*_SECRET_KEY`` value gets a fresh random secret;
everything else is copied as it is. An existing .env is never overwritten. The
file is readable by its owner only.

Secrets are letters and digits, starting with a letter: nats-server parses a
password it reads from the environment like a value of its configuration, so
an all-digit password becomes a number (and fails), and a ``#`` starts a comment.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path

SECRET_NAME = re.compile(r"^[A-Z0-9_]*(PASSWORD|SECRET_KEY)$")
SAFE_SECRET = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{15,}$")
"""What a secret must look like to pass through nats-server's config parser unchanged."""


def new_secret() -> str:
    """A random secret of 41 characters that SAFE_SECRET accepts."""
    return "s" + secrets.token_hex(20)


def fill(example: str) -> str:
    """The .env text: ``example`` with every empty secret filled in."""
    lines = []
    for line in example.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and SECRET_NAME.match(name.strip()):
            if not value.strip():
                line = f"{name}={new_secret()}"
            elif not SAFE_SECRET.match(value.strip()):
                raise ValueError(
                    f"{name.strip()}: use letters, digits, - and _ only, starting with a "
                    "letter, at least 16 characters"
                )
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    example = Path(argv[0] if argv else ".env.example")
    target = Path(argv[1] if len(argv) > 1 else ".env")
    if target.exists():
        print(f"{target} exists; not touching it", file=sys.stderr)
        return 0
    try:
        text = fill(example.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {target} (random secrets; keep it out of version control)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
