"""CLIP token counts of prompts: the one place that counts them.

Every prompt, style line included, must fit CLIP's 77 tokens (start and end tokens
counted); diffusers would otherwise cut the end off silently. The planner checks the
storyboard at creation and at plan time, the LLM storyboarder asks for repairs of
prompts that do not fit, the renderer refuses or truncates what reaches it, and the
dataset builder warns about long captions: all of them count here, with the profile's
own tokenizer (``transformers.CLIPTokenizer``, tokenizers backend: no torch).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import default_tokenizer, locate
from ghibli_anim.contracts.pb import types_pb2

LIMIT = limits.CLIP_MAX_TOKENS


class PromptTooLong(ValueError):
    """A prompt does not fit; the message names the frame and the count."""


def locate_tokenizer(profile: types_pb2.Profile, settings: Settings | None = None) -> str:
    """Folder (or hub id) of the profile's CLIP tokenizer; never imports torch."""
    ref = profile.tokenizer or default_tokenizer(profile.base_model)
    return locate(ref, settings, field="profile.tokenizer")


@functools.lru_cache(maxsize=8)
def _load(path: str) -> Any:
    from transformers import CLIPTokenizer  # tokenizers backend; torch not needed

    return CLIPTokenizer.from_pretrained(path, model_max_length=LIMIT)


def load_tokenizer(profile: types_pb2.Profile, settings: Settings | None = None) -> Any:
    """The profile's ``CLIPTokenizer`` (loaded once per folder and process)."""
    return _load(locate_tokenizer(profile, settings))


@functools.lru_cache(maxsize=1024)
def _ids(tokenizer: Any, text: str) -> tuple[int, ...]:
    # Every frame of a shot has the same prompt, and the renderer counts it per frame
    # (~0.3 ms): counted once per tokenizer and text. A tokenizer is never changed after
    # loading, so its ids for a text never change.
    return tuple(tokenizer(text, truncation=False)["input_ids"])


class TokenCounter:
    """Counts CLIP tokens with one tokenizer (a profile's, or a loaded pipeline's)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, tokenizer_path: str) -> TokenCounter:
        """The counter of the tokenizer in a folder (or a hub id)."""
        return cls(_load(tokenizer_path))

    @classmethod
    def for_profile(
        cls, profile: types_pb2.Profile, settings: Settings | None = None
    ) -> TokenCounter:
        return cls(load_tokenizer(profile, settings))

    def ids(self, text: str) -> list[int]:
        """Token ids CLIP sees, start and end tokens included, nothing cut."""
        return list(_ids(self.tokenizer, text))

    def count(self, text: str) -> int:
        """Tokens CLIP sees, start and end tokens included."""
        return len(self.ids(text))

    def fits(self, text: str) -> bool:
        return self.count(text) <= LIMIT

    def problems(self, prompts: Sequence[str], field: str = "prompt") -> list[str]:
        """``frames[i].FIELD: N CLIP tokens with the style line, the limit is 77`` for each
        prompt over the limit, in order (empty when every prompt fits)."""
        out = []
        for index, prompt in enumerate(prompts):
            n = self.count(prompt)
            if n > LIMIT:
                out.append(
                    f"frames[{index}].{field}: {n} CLIP tokens with the style line, "
                    f"the limit is {LIMIT}"
                )
        return out

    def check(self, prompts: Sequence[str], field: str = "prompt") -> None:
        """Raise PromptTooLong for the first prompt over the limit."""
        found = self.problems(prompts, field)
        if found:
            raise PromptTooLong(found[0])

    def fit(self, text: str, field: str, truncate: bool) -> tuple[int, str | None]:
        """(CLIP tokens of ``text``, the text that does not fit, or None).

        Over the limit is a ValueError naming ``field`` and the count, unless
        ``truncate``: then the pipeline keeps the first 75 tokens (as diffusers does
        silently) and the dropped text is returned for the frame's record.
        """
        ids = self.ids(text)
        if len(ids) <= LIMIT:
            return len(ids), None
        if not truncate:
            raise ValueError(
                f"{field}: {len(ids)} CLIP tokens, the limit is {LIMIT} "
                "(ask for truncate_prompts to cut it)"
            )
        body = ids[1:-1]  # without the start and end tokens
        return len(ids), self.tokenizer.decode(body[LIMIT - 2 :]).strip()
