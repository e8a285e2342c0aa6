"""CLIP token counts of prompts, with the profile's own tokenizer.

The planner loads only the tokenizer (no torch). Every prompt, style line
included, must fit CLIP's 77 tokens (start and end tokens counted); diffusers
would otherwise cut the end off silently.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from ghibli_anim.contracts import limits


class PromptTooLong(ValueError):
    """A prompt does not fit; the message names the frame and the count."""


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str):
    from transformers import CLIPTokenizer  # tokenizers backend; torch not needed

    return CLIPTokenizer.from_pretrained(path, model_max_length=limits.CLIP_MAX_TOKENS)


class TokenCounter:
    def __init__(self, tokenizer_path: str) -> None:
        self.tokenizer = _tokenizer(tokenizer_path)

    def count(self, text: str) -> int:
        """Tokens CLIP sees, start and end tokens included."""
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    def fits(self, text: str) -> bool:
        return self.count(text) <= limits.CLIP_MAX_TOKENS

    def check(self, prompts: Sequence[str], field: str = "prompt") -> None:
        """Raise PromptTooLong for the first prompt over the limit."""
        for index, prompt in enumerate(prompts):
            n = self.count(prompt)
            if n > limits.CLIP_MAX_TOKENS:
                raise PromptTooLong(
                    f"frames[{index}].{field}: {n} CLIP tokens with the style line, "
                    f"the limit is {limits.CLIP_MAX_TOKENS}"
                )
