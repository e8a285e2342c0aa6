"""Every service's Prometheus endpoint after one job, with the services as processes.

Four ``ghibli-anim serve`` processes (each with ANIM_METRICS_PORT) against real
NATS and SeaweedFS; the endpoints are read with prometheus_client's parser of
the text format. Fresh processes, so counts are exact for the one job.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.processes import port_taken, starts

from ghibli_anim.contracts import config, keys
from ghibli_anim.contracts.config import SERVICES
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.devtools.stack import LocalStack
from ghibli_anim.runtime import metrics, processes
from ghibli_anim.runtime.bus.names import CONDUCTOR_EVENTS
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.store.s3 import S3Store

pytestmark = pytest.mark.timeout(300)

FRAMES = 3


class Scrape:
    """One read of a /metrics endpoint."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, sample: str, **labels: str) -> float:
        """The sum of the samples named ``sample`` whose labels include ``labels``."""
        return sum(
            s.value
            for f in self.families.values()
            for s in f.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def labels(self, sample: str, label: str) -> set[str]:
        return {
            s.labels[label]
            for f in self.families.values()
            for s in f.samples
            if s.name == sample and label in s.labels
        }


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return Scrape(response.read().decode())


def eventually(port: int, check: Callable[[Scrape], bool], timeout: float = 30.0) -> Scrape:
    """The first scrape of ``port`` that passes ``check`` (the last ack of a job may
    land just after the client saw the job complete)."""
    deadline = time.monotonic() + timeout
    while True:
        got = scrape(port)
        if check(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.fixture(scope="module")
def metered(tmp_path_factory, tiny_cache_dir):
    """A stack whose four services serve metrics; yields (stack, {service: port})."""
    env = {"ANIM_CACHE_DIR": str(tiny_cache_dir), "ANIM_PROFILE": "tiny", "ANIM_ACK_WAIT_S": "10"}
    stack = LocalStack(tmp_path_factory.mktemp("metered"), services=(), env=env)
    try:
        stack.start()
        procs = {name: stack.add(name, start=False, metrics=True) for name in SERVICES}
        with ThreadPoolExecutor(len(procs)) as pool:  # start them side by side
            for started in [pool.submit(p.start, timeout=120) for p in procs.values()]:
                started.result()
    except BaseException:
        print(stack.logs())
        stack.stop()
        raise
    # Read once started: a start on a port another process took meanwhile picks again.
    yield stack, {name: p.metrics_port for name, p in procs.items()}
    stack.stop()


def test_each_service_shows_the_jobs_frames_and_latencies(metered):
    stack, ports = metered
    before = {name: scrape(port) for name, port in ports.items()}
    assert before["renderer"].value("anim_frames_rendered_total") == 0

    async def run_job():
        async with AnimationClient(stack.planner_target, timeout_s=60) as client:
            job = await client.create(
                animation_pb2.CreateAnimationRequest(
                    idea="a kite rises over a green hill", frames=FRAMES, seed=5, depth=True
                )
            )
            events = [e async for e in client.watch(job.job_id)]
            return job.job_id, events, await client.get(job.job_id)

    job_id, events, anim = asyncio.run(run_job())
    assert anim.status == types_pb2.JOB_STATUS_COMPLETED, stack.logs()
    store = S3Store.from_settings(config.load("client", stack.env()))
    records = [json.loads(store.get(keys.frame_record_key(job_id, i))) for i in range(FRAMES)]

    renderer = eventually(
        ports["renderer"],
        lambda s: s.value("anim_messages_handled_total", consumer="render", outcome="ok") == FRAMES,
    )
    assert renderer.value("anim_frames_rendered_total") == FRAMES
    modes = {r["mode"] for r in records}
    assert renderer.labels("anim_frames_rendered_total", "mode") >= modes
    assert renderer.value("anim_frames_failed_total") == 0
    assert renderer.value("anim_message_redeliveries_total") == 0
    for stage in metrics.STAGES:
        assert renderer.value("anim_frame_stage_seconds_count", stage=stage) == FRAMES, stage
    for stage in ("queue_wait", "load", "denoise", "store"):
        assert renderer.value("anim_frame_stage_seconds_sum", stage=stage) > 0, stage
    # The denoise stage is the pipeline call each record times.
    denoise = renderer.value("anim_frame_stage_seconds_sum", stage="denoise")
    assert denoise == pytest.approx(sum(r["elapsed_s"] for r in records), abs=1e-3)
    assert renderer.value("anim_denoise_steps_total") == sum(r["steps_effective"] for r in records)
    assert renderer.value("anim_message_handle_seconds_count", consumer="render") == FRAMES
    assert renderer.value("anim_message_queue_wait_seconds_count", consumer="render") == FRAMES
    assert renderer.labels("anim_consumer_pending", "consumer") == {"render"}
    assert renderer.value("anim_consumer_pending", consumer="render") == 0
    # Planner-only series stay in the planner.
    assert "anim_jobs" not in renderer.families

    # The renderer made the depth maps with its frames: the depth worker had nothing to do.
    assert renderer.value("anim_frame_stage_seconds_sum", stage="depth") > 0
    depth = eventually(
        ports["depth"], lambda s: s.labels("anim_consumer_pending", "consumer") == {"depth"}
    )
    assert depth.value("anim_messages_handled_total", consumer="depth") == 0
    assert "anim_frames_rendered" not in depth.families

    assembler = eventually(
        ports["assembler"],
        lambda s: s.value("anim_messages_handled_total", consumer="assemble", outcome="ok") == 1,
    )
    assert assembler.value("anim_message_handle_seconds_count", consumer="assemble") == 1
    assert assembler.value("anim_message_queue_wait_seconds_count", consumer="assemble") == 1

    # The conductor sees only the events it acts on: no starts, no progress.
    # anim_jobs is read from KV at scrape time; a scrape on a busy machine may leave
    # it out (its source is capped at SCRAPE_TIMEOUT_S), so wait for one that has it.
    acted_on = [e for e in events if e.type in CONDUCTOR_EVENTS]
    assert len(acted_on) < len(events)
    planner = eventually(
        ports["planner"],
        lambda s: (
            s.value("anim_messages_handled_total", consumer="conductor", outcome="ok")
            == len(acted_on)
            and s.value("anim_jobs", state="COMPLETED") == 1
        ),
    )
    assert planner.value("anim_messages_handled_total", consumer="conductor") == len(acted_on)
    assert planner.value("anim_messages_handled_total", consumer="plan", outcome="ok") == 1
    assert planner.value("anim_jobs", state="COMPLETED") == 1
    assert planner.value("anim_jobs") == 1  # one job in all, every other state at 0
    assert planner.labels("anim_jobs", "state") == {
        "PENDING", "PLANNING", "PLANNED", "RENDERING", "ASSEMBLING", "COMPLETED", "FAILED",
        "CANCELLED",
    }  # fmt: skip
    assert planner.value("anim_job_seconds_count") == 1
    assert planner.labels("anim_consumer_pending", "consumer") == {
        "plan",
        "conductor",
        "advisories",
    }
    assert planner.value("anim_consumer_pending") == 0
    # Every process exports the client library's own metrics too.
    for scrape_ in (renderer, depth, assembler, planner):
        assert scrape_.value("process_cpu_seconds_total") > 0


@pytest.mark.parametrize(
    ("name", "metered_too", "taken_index", "error"),
    [
        ("planner", True, 0, "error: ANIM_GRPC_PORT: cannot bind"),
        ("planner", True, 1, "error: ANIM_METRICS_PORT: cannot serve metrics on"),
        ("web", False, 0, "error: ANIM_WEB_HOST/ANIM_WEB_PORT: cannot listen on"),
    ],
)
def test_a_port_taken_before_the_first_start_is_picked_again(
    metered, monkeypatch, name, metered_too, taken_index, error
):
    # Another process binds a port between its choice and the server binding it.
    stack, _ = metered
    pick = processes.free_ports
    first = pick(2 if metered_too else 1)  # what the process picks first: its port, then metrics
    picks = iter([list(first)])  # the picker pops from what it gets
    monkeypatch.setattr(processes, "free_ports", lambda count: next(picks, None) or pick(count))
    with port_taken(first[taken_index]):
        proc = stack.add(name, metrics=metered_too)
    try:
        assert proc.port != first[0]
        if metered_too:
            assert proc.metrics_port not in (None, first[1])
            assert scrape(proc.metrics_port).value("anim_messages_handled_total") == 0
        log = proc.log_path.read_text()
        assert f"{error} 127.0.0.1:{first[taken_index]}" in log, log
        assert "a port was taken meanwhile" in log
        assert starts(proc) == 2
    finally:
        proc.stop()  # the job test above counted on one planner
