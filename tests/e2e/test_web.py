"""The web page in a real browser against the distributed tiny stack.

Headless Chromium (Debian's ``chromium`` package, driven by Playwright with
``executable_path``; nothing is downloaded) opens ``ghibli-anim serve web``,
which talks to the stack's planner over gRPC; images come straight from
SeaweedFS through presigned http URLs, as in a deployment. Profile ``tiny``:
frames are noise, so this checks what the page shows and when, never looks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import shutil
from collections.abc import Iterator

import pytest

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.devtools.stack import LocalStack, WebProcess
from ghibli_anim.runtime.client import AnimationClient

pytestmark = pytest.mark.timeout(300)

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 120_000  # generous: two CPU cores shared with other test runs


@pytest.fixture(scope="module")
def web(stack: LocalStack) -> Iterator[WebProcess]:
    proc = stack.add("web")
    assert isinstance(proc, WebProcess)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)  # .ci/run installs it: its absence there is a failure
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, web):
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors
    try:
        yield page
    finally:
        context.close()


def submit(
    page, web: WebProcess, idea: str, frames: int, *, depth: bool, seed: int, review: bool = False
) -> str:
    """Fill in and send the form like a person; the job id from the page it lands on."""
    page.goto(web.url)
    page.fill("#idea", idea)
    page.fill("#frames", str(frames))
    page.fill("#seed", str(seed))
    if depth:
        page.check("#depth")
    if review:
        page.check("#review")
    page.click("#submit")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    return page.url.rsplit("/", 1)[1]


def count(page, selector: str) -> int:
    return page.locator(selector).count()


def planner_view(stack: LocalStack, job_id: str):
    """The job as the planner itself has it (not from the page)."""

    async def get():
        async with AnimationClient(stack.planner_target) as client:
            return await client.get(job_id)

    # Playwright's sync API runs its own event loop in this thread: use another.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, get()).result(timeout=60)


def planner_status(stack: LocalStack, job_id: str) -> int:
    return planner_view(stack, job_id).status


def wait_completed(page) -> None:
    page.wait_for_function(
        "() => document.getElementById('job-status').textContent === 'COMPLETED'"
    )


def test_submit_and_watch_the_frames_land(stack, web, page, tmp_path):
    frames = 4
    job_id = submit(
        page, web, "a paper boat drifts down a rainy street", frames, depth=True, seed=5
    )

    # The storyboard, every frame and depth map as they land, then the animation.
    page.wait_for_function(
        f"() => document.querySelectorAll('#storyboard tbody tr').length === {frames}"
    )
    assert "a paper boat drifts down a rainy street" in page.inner_text("#storyboard")
    page.wait_for_function(f"() => document.querySelectorAll('#frames figure').length === {frames}")
    page.wait_for_function(
        f"() => document.querySelectorAll('#depth figure').length === {frames - 1}"
    )
    page.wait_for_function(
        "() => { const g = document.getElementById('final-gif');"
        " return g !== null && g.complete && g.naturalWidth > 0; }"
    )
    page.wait_for_function(
        "() => document.getElementById('job-status').textContent === 'COMPLETED'"
    )
    assert page.inner_text("#frames-done") == str(frames)
    # Every frame and depth map was loaded from the store (presigned http URLs).
    widths = page.eval_on_selector_all(
        "#frames img, #depth img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
    )
    assert len(widths) == 2 * frames - 1 and all(w > 0 for w in widths), widths
    links = page.eval_on_selector_all(
        "#downloads a", "as => as.map(a => [a.textContent, a.getAttribute('href')])"
    )
    names = {name for name, _ in links}
    assert {"animation.gif", "animation.mp4", "animation.webp", "manifest.json"} <= names
    assert all(href.startswith(stack.s3.url + "/") for _, href in links), links
    assert page.locator("#final-mp4").count() == 1
    # The event log saw the chain, in order, ending with the job's completion.
    log = page.locator("#events li").all_inner_texts()
    assert any("frame.rendered frame 0" in line for line in log), log
    assert "job.completed" in log[-1], log
    assert page.locator("#cancel").is_hidden() and page.locator("#resume").is_hidden()
    assert page.errors == []

    shot = tmp_path / "web-job.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot of job {job_id}: {shot}")
    assert shot.stat().st_size > 0
    assert planner_status(stack, job_id) == types_pb2.JOB_STATUS_COMPLETED


def test_cancel_and_resume_from_the_page(stack, web, page):
    # 120 frames take minutes here: the job is still rendering when the buttons are clicked.
    job_id = submit(page, web, "a kite tugs at its string over a hill", 120, depth=False, seed=9)
    page.wait_for_selector("#frames figure[data-index='0'] img")
    assert page.locator("#resume").is_hidden()
    page.click("#cancel")
    page.wait_for_function(
        "() => document.getElementById('job-status').textContent === 'CANCELLED'"
    )
    page.wait_for_selector("#resume", state="visible")
    assert page.locator("#cancel").is_hidden()
    assert planner_status(stack, job_id) == types_pb2.JOB_STATUS_CANCELLED
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#events li'))"
        ".some(li => li.dataset.type === 'job.cancelled')"
    )

    # Resume: the page follows the new attempt; cancel it again so the stack is free.
    page.click("#resume")
    page.wait_for_selector("#cancel", state="visible")
    assert planner_status(stack, job_id) != types_pb2.JOB_STATUS_CANCELLED
    assert page.inner_text("#job-attempt") == "2"
    page.click("#cancel")
    page.wait_for_function(
        "() => document.getElementById('job-status').textContent === 'CANCELLED'"
    )
    assert planner_status(stack, job_id) == types_pb2.JOB_STATUS_CANCELLED
    assert page.errors == []


def test_review_edit_approve_then_re_render_from_a_frame(stack, web, page, tmp_path):
    from .test_chain import s3_store

    # Review: the page shows the storyboard editor once the job waits; edit shot 1, approve.
    job_id = submit(
        page, web, "a lighthouse keeper climbs the stairs", 3, depth=False, seed=21, review=True
    )
    page.wait_for_selector("#storyboard-editor")
    assert planner_status(stack, job_id) == types_pb2.JOB_STATUS_PLANNED
    assert page.input_value("#shot-1-prompt")  # the planned prompt, ready to edit
    page.fill("#shot-1-prompt", "a lighthouse beam sweeps the fog")
    page.screenshot(path=str(tmp_path / "web-review.png"), full_page=True)
    page.click("#approve")
    page.wait_for_url(re.compile(rf"/jobs/{job_id}$"))
    wait_completed(page)
    assert "a lighthouse beam sweeps the fog" in page.inner_text("#storyboard")
    assert json.loads(planner_view(stack, job_id).storyboard_json)["frames"][1]["prompt"] == (
        "a lighthouse beam sweeps the fog"
    )

    # The frame strip: frame 1 opens its shot and the seed; edit, re-render from here.
    page.wait_for_selector("#frames figure[data-index='2'] img")
    page.click("#frames figure[data-index='1'] a")
    page.wait_for_selector("#fork-editor")
    assert page.input_value("#fork-prompt") == "a lighthouse beam sweeps the fog"
    assert page.input_value("#fork-seed") == "21"
    page.fill("#fork-prompt", "a lighthouse under a sky full of stars")
    page.screenshot(path=str(tmp_path / "web-refork.png"), full_page=True)
    page.click("#refork-submit")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    fork_id = page.url.split("/jobs/", 1)[1][:32]
    assert fork_id != job_id
    wait_completed(page)

    # The fork kept frame 0 byte for byte and rendered frames 1 and 2 with the edit.
    store = s3_store(stack)
    assert store.get(keys.frame_key(fork_id, 0)) == store.get(keys.frame_key(job_id, 0))
    assert store.get(keys.frame_key(fork_id, 1)) != store.get(keys.frame_key(job_id, 1))
    assert store.exists(keys.frame_key(fork_id, 2))
    board = json.loads(planner_view(stack, fork_id).storyboard_json)
    assert board["frames"][1]["prompt"] == "a lighthouse under a sky full of stars"
    manifest = json.loads(store.get(keys.manifest_key(fork_id)))
    assert manifest["request"]["fork"] == {"parent_job_id": job_id, "from_frame": 1}

    # Its page plays the parent beside it, with a link to the parent.
    for side in ("compare-self", "compare-parent"):
        page.wait_for_function(
            f"() => {{ const g = document.querySelector('#{side} img');"
            " return g !== null && g.complete && g.naturalWidth > 0; }"
        )
    assert page.get_attribute("#parent-link", "href") == f"/jobs/{job_id}"
    assert page.errors == []
    page.screenshot(path=str(tmp_path / "web-fork.png"), full_page=True)
    print(f"screenshots of jobs {job_id} and its fork {fork_id}: {tmp_path}")
