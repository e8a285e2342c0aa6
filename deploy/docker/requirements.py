"""Print the requirements that ``pip install "ghibli-anim[EXTRAS]"`` installs, read
from pyproject.toml alone: the core dependencies and those of each extra, with the
extras' references to other extras of the project followed. The project itself is
left out.

deploy/docker/Dockerfile installs an image's dependencies from this list before it
copies the sources, so a change to the code, the README or the tool settings in
pyproject.toml leaves the dependency layers cached; only a change to a list here
installs them again.

    python requirements.py pyproject.toml planner,web > planner.txt

Standard library only: it runs in the bare build stage, before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# PEP 508: the name, then optional [extras], then version specifiers or a marker.
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(.*)")


def _canonical(name: str) -> str:
    """PEP 503 normalised name: ``Ghibli_Anim`` and ``ghibli-anim`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The requirement strings of the project's core and ``extras``, in order, once each."""
    project = pyproject["project"]
    own = _canonical(project["name"])
    table = project.get("optional-dependencies", {})
    out: list[str] = []
    seen: set[str] = set()

    def add(requirement: str) -> None:
        m = _REQUIREMENT.fullmatch(requirement)
        if m is None:
            raise ValueError(f"requirement {requirement!r}: not a PEP 508 requirement")
        name, inner, rest = m.groups()
        if _canonical(name) == own:
            if rest.strip():
                raise ValueError(
                    f"requirement {requirement!r}: a reference to the project itself may "
                    "name extras only, without versions or markers"
                )
            for extra in (inner or "").split(","):
                if extra.strip():
                    visit(extra.strip())
        elif requirement not in out:
            out.append(requirement)

    def visit(extra: str) -> None:
        if extra in seen:
            return
        if extra not in table:
            raise ValueError(
                f"extra {extra!r}: pyproject.toml defines {', '.join(sorted(table)) or 'none'}"
            )
        seen.add(extra)
        for requirement in table[extra]:
            add(requirement)

    for requirement in project.get("dependencies", []):
        add(requirement)
    for extra in extras:
        visit(extra)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: requirements.py PYPROJECT EXTRA[,EXTRA...]", file=sys.stderr)
        return 2
    with Path(argv[0]).open("rb") as f:
        pyproject = tomllib.load(f)
    extras = [e.strip() for e in argv[1].split(",") if e.strip()]
    try:
        lines = requirements(pyproject, extras)
    except ValueError as e:
        print(f"requirements.py: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
