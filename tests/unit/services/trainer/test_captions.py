"""services/trainer/captions.py: captions cleaned of repeats and artefacts; the trigger word
first, once."""

from __future__ import annotations

import pytest

from ghibli_anim.services.trainer import captions


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a cat cat cat on a roof", "a cat on a roof"),
        ("a samurai samurai samurai", "a samurai"),
        ("a house on a hill on a hill on a hill", "a house on a hill"),
        ("arafed man standing in a field", "man standing in a field"),
        ("  a   boat,\nat sea  ", "a boat, at sea"),
        ("A Cat cat, cat", "A Cat"),
        ("the dog and the cat", "the dog and the cat"),
    ],
)
def test_caption_cleaner(raw: str, clean: str) -> None:
    assert captions.clean_caption(raw) == clean


def test_trigger_goes_first_once() -> None:
    assert captions.with_trigger("a cat", "ghibli style") == "ghibli style, a cat"
    assert captions.with_trigger("Ghibli Style, a cat", "ghibli style") == "Ghibli Style, a cat"
    assert captions.with_trigger("", "ghibli style") == "ghibli style"
    assert captions.with_trigger("a cat", "") == "a cat"
