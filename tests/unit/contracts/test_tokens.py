"""contracts/tokens.py: CLIP token counts name the frame over the limit; locating and loading
the tokenizer never imports torch."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.files import run_python, tree

from ghibli_anim.contracts import config
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.contracts.tokens import PromptTooLong, TokenCounter
from ghibli_anim.devtools import tiny_models, tiny_tokenizer


@pytest.fixture(scope="module")
def counter(tmp_path_factory) -> TokenCounter:
    cache = tmp_path_factory.mktemp("cache")
    settings = config.load("client", {"ANIM_CACHE_DIR": str(cache), "ANIM_STORE": "local"})
    return TokenCounter.for_profile(load_profile("tiny", settings), settings)


def test_token_counter_names_the_frame(counter):
    long_prompt = " ".join(["supercalifragilistic"] * 40)
    with pytest.raises(PromptTooLong, match=r"^frames\[1\]\.prompt: \d+ CLIP tokens"):
        counter.check(["a cat, ghibli style", long_prompt])


def test_tokenizer_without_torch(tmp_path: Path) -> None:
    """The planner has no torch: locating and loading the tokenizer must not import it."""
    code = (
        "import sys\n"
        "from ghibli_anim.contracts import config, model_refs, profiles, tokens\n"
        "from ghibli_anim.devtools import tiny_models\n"
        "model_refs.use_tiny_builder(tiny_models.write_tiny_models)  # as the CLI does\n"
        "s = config.load('client')\n"
        "p = profiles.load_profile('tiny', s)\n"
        "path = tokens.locate_tokenizer(p, s)\n"
        "assert 'torch' not in sys.modules, 'locate_tokenizer imported torch'\n"
        "tok = tokens.load_tokenizer(p, s)\n"
        "assert 'torch' not in sys.modules, 'load_tokenizer imported torch'\n"
        "print(path)\n"
    )
    out = run_python(code, {"ANIM_CACHE_DIR": str(tmp_path)}).strip().splitlines()[-1]
    assert Path(out) == tmp_path / f"tiny-v{tiny_models.TINY_VERSION}" / "tokenizer"
    assert tree(Path(out)) == tiny_tokenizer.tokenizer_files()


def test_a_text_is_tokenized_once_per_tokenizer(counter) -> None:
    # The renderer counts its prompt for every frame of a shot: once is enough.
    calls: list[str] = []

    def tokenizer(text: str, truncation: bool) -> dict:
        calls.append(text)
        return counter.tokenizer(text, truncation=truncation)

    mine = TokenCounter(tokenizer)
    first = mine.fit("a paper lantern over a rice field", "prompt", False)
    assert mine.fit("a paper lantern over a rice field", "prompt", False) == first
    assert mine.count("a paper lantern over a rice field") == first[0]
    assert calls == ["a paper lantern over a rice field"]
    assert mine.count("a kite") == counter.count("a kite")
    assert calls[-1] == "a kite" and len(calls) == 2
    # Another tokenizer counts for itself.
    assert counter.count("a paper lantern over a rice field") == first[0]
    assert len(calls) == 2
