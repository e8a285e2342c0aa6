"""The job API's own rules, without a server: the per-client cap, which files are outputs,
the order of pages, and when a job's current attempt began."""

from __future__ import annotations

from ghibli_anim.contracts import keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.services.planner.housekeeping import started_at_cheaply
from ghibli_anim.services.planner.jobs_api import count_unfinished, is_output, page_after

JOB = "0123456789abcdef0123456789abcdef"


def job(client: str, status: int) -> animation_pb2.JobState:
    state = animation_pb2.JobState(job_id=keys.new_job_id(), status=status)
    state.request.client_id = client
    return state


def test_count_unfinished_counts_one_clients_running_jobs() -> None:
    states = [job("alice", s) for s in lifecycle.STATUSES] + [job("bob", lifecycle.RENDERING)]
    assert count_unfinished(states, "alice") == len(lifecycle.UNFINISHED) == 4
    assert count_unfinished(states, "bob") == 1
    assert count_unfinished(states, "carol") == 0


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


def test_pages_follow_the_ids_in_order() -> None:
    ids = ["c" * 32, "a" * 32, "b" * 32]
    assert page_after(ids, "") == ["a" * 32, "b" * 32, "c" * 32]
    assert page_after(ids, "a" * 32) == ["b" * 32, "c" * 32]
    assert page_after(ids, "c" * 32) == []


def test_a_job_starts_when_created_unless_a_resume_may_have_restarted_it() -> None:
    state = animation_pb2.JobState(job_id=JOB, attempt=1)
    state.created_at.FromSeconds(1000)
    assert started_at_cheaply(state, now=5000, limit_s=60) == 1000
    state.attempt = 2
    assert started_at_cheaply(state, now=1030, limit_s=60) == 1000  # young: settled
    assert started_at_cheaply(state, now=5000, limit_s=60) is None  # needs its events
