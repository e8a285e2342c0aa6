"""bench/soak.py's pure parts: the seeded plan of jobs and kills, the exactly-once check of
one job's frames, and the summary line. (The soak itself is not a test: ``make soak``.)"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_jobs_are_spread_evenly_and_drawn_from_the_seed(soak) -> None:
    jobs = soak.plan_jobs(200, 10, seed=1)
    assert len(jobs) == 200 and [j.index for j in jobs] == list(range(200))
    assert jobs[0].at_s == 0 and jobs[-1].at_s == pytest.approx(597.0)
    assert all(b.at_s - a.at_s == pytest.approx(3.0) for a, b in itertools.pairwise(jobs))
    assert {j.frames for j in jobs} == {2, 3, 4}
    depth = sum(j.depth for j in jobs)
    assert 40 <= depth <= 95  # about a third
    assert len({j.client for j in jobs}) == soak.CLIENTS
    assert soak.plan_jobs(200, 10, seed=1) == jobs
    assert soak.plan_jobs(200, 10, seed=2) != jobs
    request = jobs[3].request(run_seed=1)
    assert request.profile == "tiny" and request.frames == jobs[3].frames
    assert request.depth == jobs[3].depth and request.seed == jobs[3].seed
    assert request.idempotency_key == "soak-1-3" and request.client_id == jobs[3].client
    with pytest.raises(ValueError, match="jobs >= 1 and minutes > 0"):
        soak.plan_jobs(0, 10, seed=1)


def test_kills_every_20_to_40_s_of_each_target(soak) -> None:
    kills = soak.plan_kills(10, seed=1)
    assert soak.plan_kills(10, seed=1) == kills and soak.plan_kills(10, seed=2) != kills
    gaps = [b.at_s - a.at_s for a, b in zip([soak.Kill(0.0, "x"), *kills], kills, strict=False)]
    assert all(20 <= g <= 40 for g in gaps) and kills[-1].at_s < 600
    assert 600 / 40 - 1 <= len(kills) <= 600 / 20
    assert {k.target for k in kills} == set(soak.TARGETS)
    renderers = {k.replica for k in kills if k.target == "renderer"}
    assert renderers == set(range(soak.RENDERERS))
    assert all(k.replica == 0 for k in kills if k.target != "renderer")
    assert soak.plan_kills(0.3, seed=1) == []  # 18 s: before the first kill


def good_job(frames: int = 3):
    stored = [f"jobs/j/frames/{i:04d}{s}" for i in range(frames) for s in (".png", ".json")]
    shas = {i: f"{i:064x}" for i in range(frames)}
    manifest = {"frames": [{"index": i, "sha256": shas[i]} for i in range(frames)]}
    rendered = [(i, 1) for i in range(frames)]
    return rendered, stored, manifest, shas


def test_a_clean_job_has_no_frame_problem(soak) -> None:
    rendered, stored, manifest, shas = good_job()
    assert soak.frame_problems(3, rendered, stored, manifest, shas, 3) == []
    # A frame rendered again on a later attempt (its worker was killed) is not a double.
    assert soak.frame_problems(3, [*rendered, (1, 2)], stored, manifest, shas, 3) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda r, s, m, h: (r[:-1], s, m, h, 3), "frame.rendered for frames [0, 1]"),
        (lambda r, s, m, h: ([*r, (1, 1)], s, m, h, 3), "frame.rendered twice"),
        (
            lambda r, s, m, h: (r, [k for k in s if not k.endswith("0002.png")], m, h, 3),
            "stored .png frames ['0000.png', '0001.png']",
        ),
        (
            lambda r, s, m, h: (r, [*s, "jobs/j/frames/0003.json"], m, h, 3),
            "stored .json frames",
        ),
        (lambda r, s, m, h: (r, s, None, h, 3), "no manifest"),
        (
            lambda r, s, m, h: (r, s, {"frames": m["frames"] + m["frames"][-1:]}, h, 3),
            "manifest frames [0, 1, 2, 2]",
        ),
        (
            lambda r, s, m, h: (r, s, m, {**h, 2: "0" * 64}, 3),
            "manifest sha256 of frame 2 is not the stored PNG's",
        ),
        (lambda r, s, m, h: (r, s, m, h, 4), "frames_done 4 of 3"),
    ],
)
def test_each_way_a_frame_goes_missing_or_doubles_is_named(soak, change, problem) -> None:
    rendered, stored, manifest, shas, done = change(*good_job())
    problems = soak.frame_problems(3, rendered, stored, manifest, shas, done)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_summary_is_one_line_of_pairs_in_order(soak) -> None:
    assert soak.summary_line({"jobs": 200, "identical": "5/5", "ok": 1}) == (
        "jobs=200 identical=5/5 ok=1"
    )
