"""devtools/tiny_tokenizer.py: realistic token counts, whole-word tokens, stable files."""

from __future__ import annotations

import json

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.contracts.tokens import load_tokenizer
from ghibli_anim.devtools import tiny_tokenizer

PROMPT = (
    "a small dragon glides slowly over a quiet medieval town at dusk with warm light "
    "and soft clouds, ghibli style"
)


def test_realistic_prompt_fits_77_tokens(tiny_settings: Settings) -> None:
    assert len(PROMPT.split()) == 20
    tokenizer = load_tokenizer(load_profile("tiny", tiny_settings), tiny_settings)
    ids = tokenizer(PROMPT)["input_ids"]
    assert len(ids) <= limits.CLIP_MAX_TOKENS
    assert len(ids) == 23  # start + 20 words + ',' + end: whole-word merges work
    assert tokenizer.model_max_length == limits.CLIP_MAX_TOKENS
    # Any text still tokenizes (byte-level fallback).
    assert tokenizer("Über café 東京 4k")["input_ids"][-1] == tokenizer.eos_token_id


def test_every_listed_word_is_one_token() -> None:
    vocab, _ = tiny_tokenizer.clip_vocab_and_merges()
    assert all(word + "</w>" in vocab for word in tiny_tokenizer.WORDS if len(word) > 1)


def test_tokenizer_config_is_stable_json() -> None:
    files = tiny_tokenizer.tokenizer_files()
    config = json.loads(files["tokenizer_config.json"])
    assert config["model_max_length"] == 77
    assert files == tiny_tokenizer.tokenizer_files()
