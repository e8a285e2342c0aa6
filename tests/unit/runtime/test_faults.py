"""runtime/faults.py: the rules of ANIM_FAULT, and the ``load`` point's one action."""

from __future__ import annotations

import pytest

from ghibli_anim.runtime import faults


def test_rules_parse() -> None:
    assert faults.parse("render:3:pause; load:-1:slow;depth:*:fail") == [
        faults.Fault("render", 3, "pause"),
        faults.Fault("load", -1, "slow"),
        faults.Fault("depth", None, "fail"),
    ]


def test_the_load_point_takes_only_slow() -> None:
    # Loading runs in a thread at start, where pause, retry and fail have no message to hold.
    with pytest.raises(ValueError) as refused:
        faults.parse("load:-1:pause")
    assert str(refused.value) == "ANIM_FAULT: rule 'load:-1:pause': the load point takes only slow"


def test_unknown_points_are_named() -> None:
    with pytest.raises(ValueError, match=r"^ANIM_FAULT: rule 'boot:1:slow' must be POINT"):
        faults.parse("boot:1:slow")


def test_a_slow_load_is_long_and_a_slow_step_short(monkeypatch) -> None:
    # The load's delay must outlast a few health polls on a busy machine; a step's stays short.
    monkeypatch.setattr(faults, "_FAULTS", faults.parse("load:-1:slow;render:2:slow"))
    assert faults.load_delay() == faults.SLOW_LOAD_S == 10.0
    assert faults.step_delay("render", 2) == faults.SLOW_STEP_S == 2.0
    assert faults.step_delay("render", 3) == 0.0
    monkeypatch.setattr(faults, "_FAULTS", faults.parse("render:*:slow"))
    assert faults.load_delay() == 0.0
