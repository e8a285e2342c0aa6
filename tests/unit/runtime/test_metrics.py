"""runtime/metrics.py without a bus: the endpoint, scrape-time gauges, the GPU collector,
stage timing, consumer outcomes, and the Grafana dashboard against the metrics the code
defines."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ghibli_anim.runtime import metrics

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy/grafana/ghibli-anim-dashboard.json"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the endpoint --------------------------------------------------------------


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_one_endpoint_per_port_shared_until_its_last_user_releases_it() -> None:
    port = metrics.serve("127.0.0.1", 0)
    try:
        assert metrics.serve("127.0.0.1", 0) == port  # the embedded mode's second service
        names = {f.name for f in text_string_to_metric_families(_get(port))}
        assert "process_cpu_seconds" in names
        metrics.release("127.0.0.1", 0)
        _get(port)  # still served: one user left
    finally:
        metrics.release("127.0.0.1", 0)
    with pytest.raises(urllib.error.URLError):
        _get(port)


def test_a_taken_port_fails_naming_the_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(metrics.MetricsPortError, match=f"^ANIM_METRICS_PORT: .*:{port}"):
            metrics.serve("127.0.0.1", port)


async def test_scrape_time_gauges_come_from_the_services_loop() -> None:
    collector = metrics.ScrapeTimeCollector()
    loop = asyncio.get_running_loop()

    async def backlog() -> list[metrics.Sample]:
        await asyncio.sleep(0)  # runs on the loop, as NATS calls do
        return [("anim_consumer_pending", {"consumer": "render"}, 3.0)]

    async def broken() -> list[metrics.Sample]:
        raise ConnectionError("NATS is away")

    async def jobs() -> list[metrics.Sample]:
        return metrics.jobs_samples({"COMPLETED": 2}, ("RENDERING", "COMPLETED"))

    for source in (backlog, broken, jobs):
        collector.add(loop, source)
    families = {f.name: f for f in await asyncio.to_thread(lambda: list(collector.collect()))}
    assert [(s.labels, s.value) for s in families["anim_consumer_pending"].samples] == [
        ({"consumer": "render"}, 3.0)
    ]
    assert {s.labels["state"]: s.value for s in families["anim_jobs"].samples} == {
        "RENDERING": 0.0,
        "COMPLETED": 2.0,
    }
    # On the loop's own thread it would wait for itself: it reports nothing instead.
    assert list(collector.collect()) == []


def test_gpu_collector_neither_imports_torch_nor_starts_cuda() -> None:
    script = textwrap.dedent(
        """
        import sys
        from ghibli_anim.runtime import metrics
        import ghibli_anim.services.planner.service, ghibli_anim.services.assembler.service
        assert list(metrics.GpuMemoryCollector().collect()) == []
        assert "torch" not in sys.modules, "metrics or planner/assembler imported torch"
        import torch
        assert list(metrics.GpuMemoryCollector().collect()) == [] or torch.cuda.is_initialized()
        assert not torch.cuda.is_initialized()
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- frame stages ------------------------------------------------------------


def test_frame_timer_observes_every_stage_once_per_frame() -> None:
    metrics.renderer()
    before = {s: sample("anim_frame_stage_seconds_count", stage=s) for s in metrics.STAGES}
    rendered = sample("anim_frames_rendered_total", mode="img2img")
    timer = metrics.FrameTimer()
    timer.add("queue_wait", 0.5)
    with timer.time("load"):
        pass
    timer.add("denoise", 1.25)
    timer.add("denoise", 0.25)
    timer.add("encode", -1.0)  # a clock quirk never makes a stage negative
    with pytest.raises(ValueError, match=r"^stage: must be one of queue_wait, load"):
        timer.add("paint", 1.0)
    timer.observe("img2img")
    assert timer.seconds["denoise"] == 1.5 and timer.seconds["encode"] == 0.0
    for stage in metrics.STAGES:
        assert sample("anim_frame_stage_seconds_count", stage=stage) == before[stage] + 1
    assert sample("anim_frames_rendered_total", mode="img2img") == rendered + 1


def test_consumer_outcomes_are_a_closed_set() -> None:
    consumer = metrics.ConsumerMetrics("render")
    before = sample("anim_messages_handled_total", consumer="render", outcome="retry")
    consumer.handled("retry", 0.1)
    assert sample("anim_messages_handled_total", consumer="render", outcome="retry") == before + 1
    with pytest.raises(ValueError, match=r"^outcome: must be one of ok, retry"):
        consumer.handled("maybe")


# -- the dashboard -----------------------------------------------------------


def _exported_samples() -> set[str]:
    """Every sample name the services can export (``anim_*``)."""
    metrics.renderer()
    metrics.planner()
    metrics.ConsumerMetrics("plan")
    from ghibli_anim.services.web import app as web_app  # the web page's own metrics

    web_app._REQUESTS.labels("/", "200")
    web_app._REQUEST_SECONDS.labels("/")

    names = set(metrics.SCRAPE_GAUGES) | {metrics.GPU_ALLOCATED, metrics.GPU_RESERVED}
    for family in REGISTRY.collect():
        names |= {s.name for s in family.samples}
    return {n for n in names if n.startswith("anim_")}


def test_dashboard_charts_every_metric_and_only_real_ones() -> None:
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\banim_[a-z_]+", e)}
    exported = _exported_samples()
    assert used <= exported, f"the dashboard charts unknown metrics: {sorted(used - exported)}"
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported}
    charted = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families <= charted, f"metrics missing from the dashboard: {sorted(families - charted)}"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}" and p["description"], p["title"]
    # No two panels overlap on Grafana's 24-column grid.
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, p["title"]
                cells.add((x, y))
