"""services/web/app.py: the web page's ASGI app over real HTTP against a real planner.

The planner runs in this process (``run_service``) on a real nats-server and the
local store, with no renderer: jobs plan, then wait in RENDERING, which is where
the page's cancel and resume matter. The web app runs under uvicorn on a
loopback port (``run_web``, as ``ghibli-anim serve web`` does) and is driven
with httpx, so the event stream is read as a browser gets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from support.planner import in_process_planner

from ghibli_anim.contracts import config
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.services.web import views
from ghibli_anim.services.web.app import WebApp
from ghibli_anim.services.web.service import run_web

pytestmark = pytest.mark.timeout(120)

EVIL = '<script>alert("x")</script> & <b onmouseover=alert(1)>dusk</b>'

TOKEN = "web-token-0123456789abcdef"

planner = in_process_planner


@contextlib.asynccontextmanager
async def web(
    target: str, tiny_cache_dir, stop: asyncio.Event | None = None, **extra
) -> AsyncIterator[httpx.AsyncClient]:
    """The web service on a free loopback port, and an HTTP client of it; setting
    ``stop`` stops the service as SIGTERM does."""
    settings = config.load(
        "web",
        {
            "ANIM_PLANNER_TARGET": target,
            "ANIM_WEB_HOST": "127.0.0.1",
            "ANIM_WEB_PORT": "0",
            "ANIM_CACHE_DIR": str(tiny_cache_dir),
            "ANIM_DRAIN_S": "5",
            **extra,
        },
    )
    stop = stop or asyncio.Event()
    bound: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_web(settings, stop, ready=bound.set_result))
    port = await asyncio.wait_for(bound, 30)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def form(**fields) -> dict[str, object]:
    base = {"idea": EVIL, "frames": "3", "format": ["gif", "mp4"], "seed": "11"}
    base.update(fields)
    return base


async def submit(http: httpx.AsyncClient, **fields) -> httpx.Response:
    return await http.post("/jobs", data=form(**fields))


def job_of(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    match = re.fullmatch(r"/jobs/([0-9a-f]{32})", response.headers["location"])
    assert match, response.headers["location"]
    return match.group(1)


def parse_sse(text: str) -> list[dict[str, str]]:
    """Messages of an SSE body: each a dict of its fields (comments dropped)."""
    messages = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            assert name not in fields, f"field {name} twice in one message: {block!r}"
            fields[name] = value
        if fields:
            messages.append(fields)
    return messages


async def test_submit_watch_cancel_and_resume_over_http(nats_server, tmp_path, tiny_cache_dir):
    async with (
        planner(nats_server, tmp_path, tiny_cache_dir) as target,
        web(target, tiny_cache_dir) as http,
    ):
        assert (await http.get("/readyz")).json() == {"planner": "SERVING"}
        page = await http.get("/")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        key = re.search(r'name="idempotency_key" value="([0-9a-f]{32})"', page.text).group(1)

        job_id = job_of(await submit(http, idempotency_key=key))
        # The same rendering of the form submitted twice is one job.
        assert job_of(await submit(http, idempotency_key=key)) == job_id

        # The live stream: follow it until the job is planned, then cancel from "the page".
        seen: list[dict[str, str]] = []
        async with http.stream("GET", f"/jobs/{job_id}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            body = ""
            async for chunk in stream.aiter_text():
                body += chunk
                seen = parse_sse(body)
                if any(m.get("event") == "job.planned" for m in seen):
                    cancelled = await http.post(
                        f"/jobs/{job_id}/cancel", headers={"accept": "application/json"}
                    )
                    assert cancelled.status_code == 200, cancelled.text
                    view = cancelled.json()
                    assert view["status"] == "CANCELLED" and view["resumable"]
                    assert not view["cancellable"]
                if seen and seen[-1].get("event") == "end":
                    break
        assert seen[0] == {"retry": "2000"}
        events = seen[1:-1]
        assert seen[-1] == {"event": "end", "data": json.dumps({"job_id": job_id}).replace(" ", "")}
        names = [m["event"] for m in events]
        assert names[0] == "job.created" and names[-1] == "job.cancelled"
        assert "job.planned" in names
        sequences = [int(m["id"]) for m in events]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        for m in events:
            data = json.loads(m["data"])
            assert data["type"] == m["event"] and data["job_id"] == job_id
            assert data["sequence"] == int(m["id"]) and data["time"].endswith("Z")

        # A reconnect with Last-Event-ID resumes after that event; the job is over, so it ends.
        planned = next(m for m in events if m["event"] == "job.planned")
        again = await http.get(f"/jobs/{job_id}/events", headers={"last-event-id": planned["id"]})
        replay = parse_sse(again.text)
        assert [m.get("event") for m in replay[1:]] == [
            *names[names.index("job.planned") + 1 :],
            "end",
        ]

        # The page and the JSON: the idea is escaped in HTML, exact in JSON.
        job_page = await http.get(f"/jobs/{job_id}")
        assert job_page.status_code == 200
        assert "<script>alert" not in job_page.text and "<b onmouseover" not in job_page.text
        assert html.escape(EVIL, quote=True).replace("&#x27;", "&#39;") in job_page.text.replace(
            "&#34;", "&quot;"
        )
        api = (await http.get(f"/api/jobs/{job_id}")).json()
        assert api["idea"] == EVIL and api["status"] == "CANCELLED"
        assert api["storyboard"] and len(api["storyboard"]["shots"]) == 3
        # The offline planner drops the tags but keeps the rest: text, escaped on the page.
        assert all('alert("x") & dusk' in s["prompt"] for s in api["storyboard"]["shots"])
        assert "alert(&#34;x&#34;) &amp; dusk, opening wide shot" in job_page.text
        # A local-folder store's file:// URLs never reach the page; it says so instead.
        assert api["frames"] == [] and api["unreachable"] > 0
        index = await http.get("/")
        assert f'href="/jobs/{job_id}"' in index.text and "<script>alert" not in index.text
        listed = (await http.get("/api/jobs", params={"limit": 5})).json()["jobs"]
        assert listed[0]["job_id"] == job_id

        # Resume from a plain form (a redirect back), then resuming again is refused.
        resumed = await http.post(f"/jobs/{job_id}/resume")
        assert resumed.status_code == 303 and resumed.headers["location"] == f"/jobs/{job_id}"
        refused = await http.post(f"/jobs/{job_id}/resume", headers={"accept": "application/json"})
        assert refused.status_code == 409
        assert "only FAILED or CANCELLED jobs can be resumed" in refused.json()["error"]
        assert (await http.post(f"/jobs/{job_id}/cancel")).status_code == 303


async def test_errors_are_escaped_and_mapped(nats_server, tmp_path, tiny_cache_dir):
    async with (
        planner(nats_server, tmp_path, tiny_cache_dir) as target,
        web(target, tiny_cache_dir) as http,
    ):
        # The form's own check, shown next to the values as typed.
        bad = await submit(http, frames="0")
        assert bad.status_code == 400
        assert "frames: must be an integer in 1..120, got 0" in bad.text
        assert "<script>alert" not in bad.text
        # The planner's validation, relayed (and escaped: the profile name is echoed).
        bad = await submit(http, profile="<i>nope</i>")
        assert bad.status_code == 400 and "profile" in bad.text
        assert "<i>nope" not in bad.text and "&lt;i&gt;nope" in bad.text
        # Another site's page cannot submit or cancel.
        evil = await http.post("/jobs", data=form(), headers={"origin": "http://evil.example"})
        assert evil.status_code == 403
        assert (await http.get("/api/jobs")).json()["jobs"] == []
        same = await http.post(
            "/jobs", data=form(), headers={"origin": str(http.base_url).rstrip("/")}
        )
        job_id = job_of(same)
        cross = await http.post(f"/jobs/{job_id}/cancel", headers={"sec-fetch-site": "cross-site"})
        assert cross.status_code == 403
        # Unknown and malformed ids, bad stream positions, junk bodies.
        missing = "0" * 32
        assert (await http.get(f"/jobs/{missing}")).status_code == 404
        assert (await http.get(f"/jobs/{missing}/events")).status_code == 404
        assert (await http.get("/api/jobs/not-an-id")).status_code == 404
        assert (await http.get(f"/jobs/{job_id}/events", params={"after": "x"})).status_code == 400
        assert (await http.get("/api/jobs", params={"limit": "0"})).status_code == 400
        assert (
            await http.post(
                "/jobs",
                content=b"x" * 20000,
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
        ).status_code == 413
        assert (await http.post("/jobs", json={"idea": "x"})).status_code == 415
        assert (await http.post(f"/jobs/{job_id}/cancel")).status_code == 303


async def test_the_planner_token_is_sent(nats_server, tmp_path, tiny_cache_dir):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"web:{TOKEN}\n")
    async with planner(
        nats_server, tmp_path, tiny_cache_dir, ANIM_AUTH_TOKENS_FILE=str(tokens)
    ) as target:
        async with web(target, tiny_cache_dir) as http:
            # Health needs no token: ready, but every job call is refused, as a gateway error.
            assert (await http.get("/readyz")).status_code == 200
            refused = await submit(http)
            assert refused.status_code == 502
            assert "refused the web service&#39;s credentials" in refused.text
        async with web(target, tiny_cache_dir, ANIM_CLIENT_TOKEN=TOKEN) as http:
            job_id = job_of(await submit(http))
            api = (await http.get(f"/api/jobs/{job_id}")).json()
            assert api["idea"] == EVIL
            assert (await http.post(f"/jobs/{job_id}/cancel")).status_code == 303


async def test_stopping_ends_open_event_streams(nats_server, tmp_path, tiny_cache_dir):
    stop = asyncio.Event()
    async with (
        planner(nats_server, tmp_path, tiny_cache_dir) as target,
        web(target, tiny_cache_dir, stop) as http,
    ):
        job_id = job_of(await submit(http))
        body = ""
        # No renderer: the job waits in RENDERING, so only stopping can end this stream.
        async with http.stream("GET", f"/jobs/{job_id}/events") as stream:
            async for chunk in stream.aiter_text():
                body += chunk
                if "event: job.planned" in body and not stop.is_set():
                    stop.set()
        # It ended without `end`: a browser reconnects (to another replica) and resumes.
        assert "event: end" not in body and "event: job.planned" in body

        # An idle stream sends a comment now and then, so proxies keep it open.
        last = max(int(m["id"]) for m in parse_sse(body) if "id" in m)
        async with AnimationClient(target) as client:
            relay = WebApp(client, keepalive_s=0.2)._relay(job_id, after=last)
            try:
                assert await anext(relay) == "retry: 2000\n\n"
                assert await asyncio.wait_for(anext(relay), 10) == ": keepalive\n\n"
            finally:
                await relay.aclose()


async def test_metrics_count_requests_by_route(nats_server, tmp_path, tiny_cache_dir):
    from prometheus_client.parser import text_string_to_metric_families

    def requests(text: str) -> dict[tuple[str, str], float]:
        out = {}
        for family in text_string_to_metric_families(text):
            if family.name == "anim_web_requests":
                for sample in family.samples:
                    if sample.name == "anim_web_requests_total":
                        out[sample.labels["route"], sample.labels["status"]] = sample.value
        return out

    async with (
        planner(nats_server, tmp_path, tiny_cache_dir) as target,
        web(target, tiny_cache_dir) as http,
    ):
        before = requests((await http.get("/metrics")).text)
        await http.get("/healthz")
        missing = "0" * 32
        assert (await http.get(f"/api/jobs/{missing}")).status_code == 404
        response = await http.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        after = requests(response.text)
    grew = {key: after[key] - before.get(key, 0.0) for key in after}
    assert grew[("/healthz", "200")] == 1
    assert grew[("/api/jobs/{job_id}", "404")] == 1  # ids folded into one label


async def wait_status(http: httpx.AsyncClient, job_id: str, status: str) -> dict:
    for _ in range(300):
        view = (await http.get(f"/api/jobs/{job_id}")).json()
        if view["status"] == status:
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {status}: {view['status']}")


def editor_fields(page: str) -> dict[str, str]:
    """The storyboard editor's fields as the page fills them in."""
    form = page[
        page.index('id="storyboard-editor"') : page.index(
            "</form>", page.index("storyboard-editor")
        )
    ]
    fields = {
        m.group(1): html.unescape(m.group(2))
        for m in re.finditer(r'<input id="[^"]*" name="([^"]+)"[^>]*?value="([^"]*)"', form, re.S)
    }
    for m in re.finditer(r'<textarea id="[^"]*" name="([^"]+)"[^>]*>([^<]*)</textarea>', form):
        fields[m.group(1)] = html.unescape(m.group(2))
    for m in re.finditer(r'<select id="[^"]*" name="([^"]+)">(.*?)</select>', form, re.S):
        fields[m.group(1)] = re.search(r'<option value="([^"]+)" selected>', m.group(2)).group(1)
    return fields


async def test_review_edit_and_approve_from_the_page(nats_server, tmp_path, tiny_cache_dir):
    async with (
        planner(nats_server, tmp_path, tiny_cache_dir) as target,
        web(target, tiny_cache_dir) as http,
    ):
        job_id = job_of(await submit(http, idea="a fox naps in a mossy hollow", review="on"))
        planned = await wait_status(http, job_id, "PLANNED")
        page = (await http.get(f"/jobs/{job_id}")).text
        fields = editor_fields(page)
        assert fields["shot-1-prompt"] == planned["storyboard"]["shots"][1]["prompt"]
        assert {"title", "style", "shot-2-zoom", "shot-0-continuity"} <= set(fields)

        # Bad values: refused at the edge, naming the shot and field, everything kept as typed.
        typed = {**fields, "shot-1-prompt": "a fox wakes at dawn", "shot-2-strength": "lots"}
        bad = await http.post(f"/jobs/{job_id}/approve", data=typed)
        assert bad.status_code == 400
        assert "frames[2].strength: must be a number in (0, 1], got &#39;lots&#39;" in bad.text
        assert editor_fields(bad.text) == typed
        # The planner's own check (77 CLIP tokens with the style), relayed next to the form.
        long_prompt = " ".join(f"word{i}" for i in range(120))
        refused = await http.post(
            f"/jobs/{job_id}/approve", data={**fields, "shot-1-prompt": long_prompt}
        )
        assert refused.status_code == 400, refused.text
        assert 'id="editor-error"' in refused.text and "frames[1].prompt" in refused.text
        assert editor_fields(refused.text)["shot-1-prompt"] == long_prompt
        assert (await http.get(f"/api/jobs/{job_id}")).json()["status"] == "PLANNED"
        # Another site's page cannot approve.
        cross = await http.post(
            f"/jobs/{job_id}/approve", data=fields, headers={"sec-fetch-site": "cross-site"}
        )
        assert cross.status_code == 403

        approved = await http.post(
            f"/jobs/{job_id}/approve", data={**fields, "shot-1-prompt": "a fox wakes at dawn"}
        )
        assert approved.status_code == 303 and approved.headers["location"] == f"/jobs/{job_id}"
        view = await wait_status(http, job_id, "RENDERING")  # no renderer here: it waits
        assert [s["prompt"] for s in view["storyboard"]["shots"]] == [
            planned["storyboard"]["shots"][0]["prompt"],
            "a fox wakes at dawn",
            planned["storyboard"]["shots"][2]["prompt"],
        ]
        # Approving again is the planner's refusal, shown on the page.
        again = await http.post(f"/jobs/{job_id}/approve", data=fields)
        assert again.status_code == 409 and "PLANNED" in again.text
        assert 'id="storyboard-editor"' not in (await http.get(f"/jobs/{job_id}")).text

        # Unchanged, the approval sends no storyboard: the job renders its plan.
        other = job_of(await submit(http, idea="a heron in reeds", review="on"))
        planned = await wait_status(http, other, "PLANNED")
        page = (await http.get(f"/jobs/{other}")).text
        async with AnimationClient(target) as client:
            stored = (await client.get(other)).storyboard_json
        as_posted = {name: [value] for name, value in editor_fields(page).items()}
        assert views.approval_json(stored, views.read_board_draft(as_posted, 3)) == ""
        assert (
            await http.post(f"/jobs/{other}/approve", data=editor_fields(page))
        ).status_code == 303
        view = await wait_status(http, other, "RENDERING")
        assert view["storyboard"] == planned["storyboard"]
        assert (await http.post(f"/jobs/{other}/cancel")).status_code == 303
        assert (await http.post(f"/jobs/{job_id}/cancel")).status_code == 303


async def test_extend_is_checked_at_the_edge_and_by_the_planner(
    nats_server, tmp_path, tiny_cache_dir
):
    async with (
        planner(nats_server, tmp_path, tiny_cache_dir) as target,
        web(target, tiny_cache_dir) as http,
    ):
        job_id = job_of(await submit(http, idea="a tram crosses a bridge"))
        await wait_status(http, job_id, "RENDERING")
        # Still rendering: no form, and the planner refuses a hand-made post.
        assert 'id="extend-form"' not in (await http.get(f"/jobs/{job_id}")).text
        busy = await http.post(f"/jobs/{job_id}/extend", data={"frames": "2"})
        assert busy.status_code == 409, busy.text
        assert f"parent_job_id: job {job_id} is RENDERING" in busy.text
        assert (await http.post(f"/jobs/{job_id}/cancel")).status_code == 303

        page = await http.get(f"/jobs/{job_id}")
        assert page.status_code == 200 and 'id="extend-form"' in page.text
        assert 'name="frames" type="number" required min="1"' in page.text
        form_html = page.text[page.text.index('id="extend-form"') :]
        key = re.search(r'name="idempotency_key" value="([0-9a-f]{32})"', form_html).group(1)
        bad = await http.post(
            f"/jobs/{job_id}/extend", data={"frames": "118", "idempotency_key": key}
        )
        assert bad.status_code == 400 and 'id="extend-error"' in bad.text
        assert (
            "frames: must be an integer in 1..117 (this job has 3 frames, the limit is 120), "
            "got &#39;118&#39;"
        ) in bad.text
        assert 'value="118"' in bad.text and f'value="{key}"' in bad.text
        cross = await http.post(
            f"/jobs/{job_id}/extend",
            data={"frames": "2", "idempotency_key": key},
            headers={"origin": "http://evil.example"},
        )
        assert cross.status_code == 403
        # The planner's refusal (nothing rendered: no frames to keep), next to the form.
        refused = await http.post(
            f"/jobs/{job_id}/extend", data={"frames": "2", "idempotency_key": key}
        )
        assert refused.status_code == 400, refused.text
        assert 'id="extend-error"' in refused.text
        assert f"parent_job_id: frame 0 of job {job_id} is not in the store" in refused.text
        assert len((await http.get("/api/jobs")).json()["jobs"]) == 1  # no job was made


async def test_re_render_from_a_frame_is_checked_at_the_edge_and_by_the_planner(
    nats_server, tmp_path, tiny_cache_dir
):
    async with (
        planner(nats_server, tmp_path, tiny_cache_dir) as target,
        web(target, tiny_cache_dir) as http,
    ):
        job_id = job_of(await submit(http, idea="a tram crosses a bridge"))
        await wait_status(http, job_id, "RENDERING")
        # Still rendering: no editor yet, and the page says why.
        busy = await http.get(f"/jobs/{job_id}", params={"frame": "1"})
        assert busy.status_code == 409 and "it is RENDERING" in busy.text
        assert 'id="fork-editor"' not in busy.text
        assert (await http.post(f"/jobs/{job_id}/cancel")).status_code == 303

        page = await http.get(f"/jobs/{job_id}", params={"frame": "1"})
        assert page.status_code == 200 and 'id="fork-editor"' in page.text
        shot = (await http.get(f"/api/jobs/{job_id}")).json()["storyboard"]["shots"][1]
        assert html.escape(shot["prompt"], quote=False) in page.text
        assert 'id="fork-seed" name="seed" type="number" required' in page.text
        key = re.search(r'name="idempotency_key" value="([0-9a-f]{32})"', page.text).group(1)
        for frame, message in [
            ("0", "from_frame: frame 0 cannot be re-rendered from"),
            ("3", "from_frame: must be a frame of this job, an integer in 1..2, got &#39;3&#39;"),
            ("x", "from_frame: must be a frame of this job, an integer in 1..2, got &#39;x&#39;"),
        ]:
            bad = await http.get(f"/jobs/{job_id}", params={"frame": frame})
            assert bad.status_code == 400 and message in bad.text, frame
            assert 'id="fork-editor"' not in bad.text

        form = {
            "from_frame": "1",
            "seed": "11",
            "idempotency_key": key,
            "fork-prompt": "a tram in the snow",
            "fork-negative_prompt": "",
            "fork-strength": "0.4",
            "fork-continuity": "continue",
            "fork-palette": "keep",
            "fork-zoom": "",
            "fork-pan_x": "",
            "fork-pan_y": "",
            "fork-rotate": "",
        }
        bad = await http.post(f"/jobs/{job_id}/fork", data={**form, "fork-strength": "7"})
        assert bad.status_code == 400
        assert "frames[1].strength: must be a number in (0, 1], got 7" in bad.text
        assert 'value="7"' in bad.text and "a tram in the snow</textarea>" in bad.text
        bad = await http.post(f"/jobs/{job_id}/fork", data={**form, "from_frame": "0"})
        assert bad.status_code == 400 and "frame 0 cannot be re-rendered from" in bad.text
        cross = await http.post(
            f"/jobs/{job_id}/fork", data=form, headers={"origin": "http://evil.example"}
        )
        assert cross.status_code == 403
        # The planner's refusal (nothing rendered: no frame 0 to keep), next to the form.
        refused = await http.post(f"/jobs/{job_id}/fork", data=form)
        assert refused.status_code == 400, refused.text
        assert 'id="fork-error"' in refused.text
        assert f"fork.parent_job_id: frame 0 of job {job_id} is not in the store" in refused.text
        assert "a tram in the snow</textarea>" in refused.text
        assert len((await http.get("/api/jobs")).json()["jobs"]) == 1  # no job was made

        # Only a fork plays a parent beside it, the one its job view names: a link cannot
        # put another job there.
        side = await http.get(f"/jobs/{job_id}", params={"parent": "0" * 32, "from": "1"})
        assert side.status_code == 200 and 'id="compare-card"' not in side.text
