"""runtime/store/base.py: which prefixes a listing or a prefix delete accepts (no server)."""

from __future__ import annotations

import pytest

from ghibli_anim.contracts import keys
from ghibli_anim.runtime.store.base import check_prefix

JOB = "ab" * 16


@pytest.mark.parametrize(
    "prefix",
    [
        f"jobs/{JOB}/",
        f"jobs/{JOB}/frames/",
        "uploads/",
        "uploads/0f",
        "loras/",
        "loras/ghi",
        "loras/ghibli-v2/",
        # Every LoRA name check_name accepts lists, up to its 64 characters.
        f"loras/{'a' * 64}/",
        f"loras/{'a' * 64}/{keys.LORA_WEIGHT_NAME}",
    ],
)
def test_prefixes_that_start_a_valid_key(prefix: str) -> None:
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "jobs/",
        "jobs/x/",
        f"jobs/{JOB}/../",
        f"jobs/{JOB}//",
        "secrets/",
        f"loras/{'a' * 65}/",  # longer than any LoRA name
        "loras/-x/",
        "loras/x-/",
        "loras/x/../../jobs/",
        "/jobs/",
    ],
)
def test_prefixes_that_could_escape_or_name_nothing_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match=r"^prefix: must start with"):
        check_prefix(prefix)
