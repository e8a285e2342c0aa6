"""The job API's own rules, without a server: which files are outputs, the order of pages,
and when a job's current attempt began (the per-client cap is the job store's:
tests/support/jobstore_cases.py)."""

from __future__ import annotations

import pytest

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.services.planner.housekeeping import started_at_cheaply
from ghibli_anim.services.planner.jobs_api import is_output, next_token, parse_page_token

JOB = "0123456789abcdef0123456789abcdef"


def test_outputs_are_the_animations_the_sheet_the_zip_and_the_manifest() -> None:
    outputs = {keys.output_key(JOB, fmt) for fmt in keys.OUTPUT_NAMES} | {keys.manifest_key(JOB)}
    assert all(is_output(JOB, key) for key in outputs)
    others = [
        keys.frame_key(JOB, 0),
        keys.frame_record_key(JOB, 0),
        keys.depth_key(JOB, 0),
        keys.plan_key(JOB),
        keys.plan_attempts_key(JOB),
        keys.init_key(JOB),
    ]
    assert not any(is_output(JOB, key) for key in others)


def test_a_page_token_names_its_position_and_its_listing() -> None:
    assert next_token(0, "") == next_token(0, "alice") == ""  # the end: no token
    assert parse_page_token("", "alice") == 0  # the first page
    everyone, alices = next_token(120, ""), next_token(120, "alice")
    assert everyone == "p120" and alices.startswith("p120-") and alices != next_token(120, "bob")
    assert parse_page_token(everyone, "") == parse_page_token(alices, "alice") == 120
    for token, client in [
        (alices, ""),  # a token of one listing in another
        (everyone, "alice"),
        (alices, "bob"),
        ("p0", ""),
        ("p-1", ""),
        ("0123456789abcdef0123456789abcdef", ""),  # a job id (tokens before the index)
        ("p1" + "0" * 19, ""),
    ]:
        with pytest.raises(ValueError, match=r"^page_token: must be the next_page_token of a"):
            parse_page_token(token, client)


def test_a_job_starts_when_created_unless_a_resume_may_have_restarted_it() -> None:
    state = animation_pb2.JobState(job_id=JOB, attempt=1)
    state.created_at.FromSeconds(1000)
    assert started_at_cheaply(state, now=5000, limit_s=60) == 1000
    state.attempt = 2
    assert started_at_cheaply(state, now=1030, limit_s=60) == 1000  # young: settled
    assert started_at_cheaply(state, now=5000, limit_s=60) is None  # needs its events
