"""devtools/protogen.py: the checked-in generated code is what `make proto` writes."""

from __future__ import annotations

import filecmp

from ghibli_anim.devtools import protogen


def test_generated_code_matches_proto(tmp_path):
    """`make proto` output is checked in; regenerating must change nothing."""
    protogen.generate(tmp_path)
    generated = sorted(p.name for p in tmp_path.iterdir())
    checked_in = sorted(p.name for p in protogen.OUT_DIR.iterdir() if p.suffix in (".py", ".pyi"))
    assert generated == checked_in
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, protogen.OUT_DIR, generated, shallow=False)
    assert not mismatch and not errors, f"stale generated code, run `make proto`: {mismatch}"
