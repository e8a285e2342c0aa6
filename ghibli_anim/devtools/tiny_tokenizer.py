"""The tiny CLIP tokenizer: a byte-level vocabulary with whole-word merges.

Pure Python (no torch, no transformers): the planner, which has no torch, writes
these files itself. The vocabulary is laid out like CLIP's own, and the words a
storyboard prompt uses each become one token, so realistic prompts fit CLIP's 77
tokens under the tiny tokenizer as they do under the real one.
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

__all__ = [
    "BOS_TOKEN",
    "CLIP_MAX_LENGTH",
    "EOS_TOKEN",
    "WORDS",
    "clip_vocab_and_merges",
    "clip_vocab_size",
    "json_bytes",
    "tokenizer_files",
    "write_tokenizer",
]

CLIP_MAX_LENGTH = 77

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# Words that become whole tokens (and stems that take suffixes): enough for the
# prompts a storyboard writes, so realistic prompts fit CLIP's 77 tokens under the
# tiny tokenizer too. Order matters a little: BPE applies the lowest-ranked merge
# first, so the commonest words come first.
WORDS = [
    word
    for line in (
        "a the of and in on at to with from by for over under into through across above below is",
        "are was be it its this that his her their they he she we you i one two three an as or",
        "not no all some many few more most very so but up down out off near far ghibli style",
        "studio anime animation art painting illustration detailed cinematic film small little",
        "big large huge tiny tall long short wide old new young ancient quiet calm soft warm cool",
        "cold bright dark light gentle golden silver green blue red yellow white black orange",
        "pink purple brown grey gray colorful pastel vivid misty foggy rainy sunny dragon girl",
        "boy cat dog bird birds fox wolf spirit spirits forest tree trees town city village",
        "castle house houses home roof roofs tower street streets road bridge river lake sea",
        "ocean wave waves beach island mountain mountains hill hills valley field fields meadow",
        "garden flower flowers grass sky skies cloud clouds sun moon star stars rain snow wind",
        "fire water smoke light lights shadow shadows window windows door train airship ship boat",
        "plane car bicycle market shop lantern lanterns station temple shrine cottage farm",
        "medieval countryside landscape scene view background foreground sunset sunrise dusk dawn",
        "night evening morning day afternoon twilight summer winter spring autumn fall season",
        "flying flies fly glide glides gliding soar soars soaring walk walks walking run runs",
        "running sit sits sitting stand stands standing look looks looking float floats floating",
        "drift drifts drifting sail sails sailing fall falls falling rise rises rising move moves",
        "moving turn turns turning pass passes passing watch watches watching sleep sleeps camera",
        "pan pans zoom zooms slowly slow fast gently toward towards behind between around beneath",
        "beyond along against among inside outside left right center middle top bottom close far",
        "distant wide shot scale view frame frames motion still blurry blurred lowres low quality",
        "worst bad ugly deformed distorted extra missing text watermark signature jpeg artifacts",
        "cropped duplicate disfigured mutated poorly drawn hands face faces eyes hair body people",
        "person man woman child children friends family high resolution masterpiece best sharp",
        "focus lighting atmosphere atmospheric mood peaceful magical fantasy dream dreamy",
        "whimsical nostalgic serene lush green overgrown anatomy limbs fingers realistic photo",
        "photorealistic render noise grainy oversaturated",
    )
    for word in line.split()
]

# Endings that follow a word stem ("glide" + "s", "walk" + "ing").
_SUFFIXES = ("s", "es", "ed", "ing", "ly", "er", "y", "ness", "ful")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _learn_merges(corpus: dict[tuple[str, ...], int]) -> list[tuple[str, str]]:
    """Byte-pair encoding training: merge the most frequent pair until words are whole.

    Ties go to the smallest pair, so the result depends on the corpus only. BPE
    replays merges in rank order, so every corpus word encodes to one token.
    """
    words = [list(symbols) for symbols in corpus]
    freqs = list(corpus.values())
    counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> word indices
    for i, symbols in enumerate(words):
        for pair in pairwise(symbols):
            counts[pair] += freqs[i]
            where[pair].add(i)
    merges: list[tuple[str, str]] = []
    while counts:
        best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        a, b = best
        for i in sorted(where.pop(best)):
            old = words[i]
            for pair in pairwise(old):
                counts[pair] -= freqs[i]
                if counts[pair] == 0:
                    del counts[pair]
            new: list[str] = []
            j = 0
            while j < len(old):
                if j + 1 < len(old) and old[j] == a and old[j + 1] == b:
                    new.append(a + b)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            words[i] = new
            for pair in pairwise(new):
                counts[pair] += freqs[i]
                where[pair].add(i)
    return merges


@cache
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The tiny CLIP vocabulary and merge list, laid out like CLIP's own.

    Vocabulary: the 256 byte characters, the same with ``</w>`` (end of word),
    one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` last.
    Merges: learnt from ``WORDS`` (each whole, with ``</w>``, and as a bare stem
    that a suffix may follow) and ``_SUFFIXES``; earlier words count as more
    frequent. Every listed word becomes one token; other text still tokenizes,
    byte by byte at worst.
    """
    words = list(dict.fromkeys(WORDS))
    corpus: dict[tuple[str, ...], int] = defaultdict(int)
    for rank, word in enumerate(words):
        freq = len(words) - rank
        corpus[(*word[:-1], word[-1] + "</w>")] += freq
        if len(word) > 1:
            corpus[tuple(word)] += freq
    for suffix in _SUFFIXES:
        corpus[(*suffix[:-1], suffix[-1] + "</w>")] += len(words)
    merges = _learn_merges(dict(corpus))

    byte_chars = list(_bytes_to_unicode().values())
    vocab_list = [*byte_chars, *(c + "</w>" for c in byte_chars)]
    vocab_list += [a + b for a, b in merges]
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    if len(vocab) != len(vocab_list):  # cannot happen: every merge makes a new symbol
        raise AssertionError("tiny tokenizer: duplicate vocabulary entries")
    return vocab, merges


def json_bytes(obj: Any) -> bytes:
    """Stable JSON: sorted keys, fixed indent, trailing newline (every tiny JSON file)."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def tokenizer_files() -> dict[str, bytes]:
    """File name -> bytes of the tiny CLIP tokenizer folder.

    Loadable by ``CLIPTokenizer.from_pretrained`` and ``AutoTokenizer``; the
    pipeline's text encoder is sized to this vocabulary.
    """
    vocab, merges = clip_vocab_and_merges()
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    special = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
    }
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        # Without an explicit length the pipeline fails with OverflowError.
        "model_max_length": CLIP_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    return {
        "vocab.json": json_bytes(vocab),
        "merges.txt": merges_txt.encode(),
        "tokenizer_config.json": json_bytes(config),
        "special_tokens_map.json": json_bytes(special),
    }


def write_tokenizer(folder: Path) -> None:
    """Write the tiny CLIP tokenizer files into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in tokenizer_files().items():
        (folder / name).write_bytes(data)


def clip_vocab_size() -> int:
    """Entries in the tiny CLIP vocabulary: the text encoder's ``vocab_size``."""
    return len(clip_vocab_and_merges()[0])
