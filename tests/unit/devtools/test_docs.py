"""README.md and ARCHITECTURE.md (devtools/docs.py): their generated tables match the code,
and the repository explains itself without any document outside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ghibli_anim.contracts import config, events, keys
from ghibli_anim.devtools import docs

ROOT = Path(__file__).resolve().parents[3]


def test_generated_blocks_are_current():
    assert docs.stale(ROOT) == [], "run `make docs`"


def test_every_variable_is_documented():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for var in config.VARS:
        assert f"`{var.name}`" in text


def test_the_key_layout_matches_the_key_builders():
    ids = {"job_id": "0123456789abcdef0123456789abcdef", "i": 7, "upload_id": "f" * 32}
    ids["name"] = "my-style"
    for kind in keys.LAYOUT:
        key = kind.build(ids)
        assert key == kind.pattern.format(**ids)
        assert keys.check_key(key) == key
    # Every output format has its row.
    assert {k.pattern.rsplit("/", 1)[-1] for k in keys.LAYOUT} >= set(keys.OUTPUT_NAMES.values())


def test_every_event_says_who_publishes_it():
    assert set(events.EMITTED_BY) == set(events.EVENT_NAMES)


def test_the_docs_check_command_passes():
    done = subprocess.run(
        [sys.executable, "-m", "ghibli_anim.devtools.docs", "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_nothing_refers_to_a_design_document_outside_the_repository():
    # The working tree as it is: files added but not yet committed too, deleted ones not.
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    tracked = [path for path in listed if (ROOT / path).is_file()]
    suffixes = {".py", ".md", ".toml", ".proto", ".yaml", ".yml", ".conf", ".json", ".html"}
    named = [
        path
        for path in tracked
        if Path(path).suffix in suffixes
        and "DESIGN" + ".md" in (ROOT / path).read_text(encoding="utf-8", errors="replace")
    ]
    assert named == []
