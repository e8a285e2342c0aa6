"""README's generated tables match the config and limits modules."""

from pathlib import Path

from ghibli_anim.contracts import config
from ghibli_anim.devtools import docs

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_tables_are_current():
    text = README.read_text(encoding="utf-8")
    assert docs.render(text) == text, "README.md is out of date: run `make docs`"


def test_every_variable_is_documented():
    text = README.read_text(encoding="utf-8")
    for var in config.VARS:
        assert f"`{var.name}`" in text
