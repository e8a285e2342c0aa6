"""cli/jobs.py: the notice of a frame re-rendered in float32, which ``submit --wait`` and
``generate`` print from the frame.rendered event's reason (as they print a planner's)."""

from __future__ import annotations

from ghibli_anim.cli.jobs import Progress
from ghibli_anim.contracts import events
from ghibli_anim.contracts.pb import bus_pb2

NOTICE = (
    "frame 2: the rendered image has NaN or inf pixels in float16, so its VAE decode was "
    "re-rendered in float32; set ANIM_DTYPE=float32 if this keeps happening"
)


def _rendered(frame: int, reason: str = "") -> bus_pb2.Event:
    return bus_pb2.Event(type=events.FRAME_RENDERED, frame=frame, reason=reason)


def test_a_frame_notice_is_printed_once(capsys) -> None:
    progress = Progress()
    progress.on_event(_rendered(2, NOTICE), frames_total=4)
    progress.on_event(_rendered(2, NOTICE), frames_total=4)  # a redelivered event
    progress.on_event(_rendered(3), frames_total=4)
    assert capsys.readouterr().err == f"notice: {NOTICE}\n"
    assert progress.frames_done == {2, 3}


def test_quiet_prints_no_notice(capsys) -> None:
    Progress(quiet=True).on_event(_rendered(2, NOTICE), frames_total=4)
    assert capsys.readouterr().err == ""
