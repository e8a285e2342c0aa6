"""services/web/views.py: the web page's data and markup without a planner: views, the form,
SSE messages, escaping."""

from __future__ import annotations

import html
import json
import re

import pytest

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.services.web import views
from ghibli_anim.services.web.app import job_html, render

JOB = "ab" * 16

EVIL = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'

BOARD = {
    "version": 1,
    "title": f"title {EVIL}",
    "style": f"ghibli style {EVIL}",
    "frames": [
        {"prompt": f"shot zero {EVIL}", "camera": {"zoom": 1.05, "pan_x": 0.01}},
        {"prompt": "shot one", "continuity": "cut", "strength": 0.3},
    ],
    "planner": {"backend": "offline", "offline": True},
}


def _file(rel: str, url: str, **kw) -> types_pb2.OutputFile:
    return types_pb2.OutputFile(name=rel.rsplit("/", 1)[-1], key=f"jobs/{JOB}/{rel}", url=url, **kw)


def _animation(status=types_pb2.JOB_STATUS_RENDERING) -> animation_pb2.Animation:
    anim = animation_pb2.Animation(
        job_id=JOB,
        status=status,
        frames_total=2,
        frames_done=1,
        idea=EVIL,
        title=f"title {EVIL}",
        error=f"error {EVIL}",
        storyboard_json=json.dumps(BOARD),
        seed=7,
        attempt=1,
    )
    anim.created_at.FromSeconds(1_800_000_000)
    anim.frame_files.extend(
        [
            _file("frames/0001.png", "http://s3.example/b/jobs/1.png?X-Amz-Signature=1"),
            _file("frames/0000.png", "https://s3.example/b/jobs/0.png?X-Amz-Signature=0"),
            _file("depth/0000.png", "http://s3.example/b/jobs/d0.png"),
            _file("frames/0000.json", "http://s3.example/b/jobs/0.json"),
            # Never offered to a browser: a local-folder path and a script URL.
            _file("depth/0001.png", "file:///runs/x/depth/0001.png"),
            _file("plan.json", "javascript:alert(1)"),
        ]
    )
    return anim


def test_job_view_keeps_browser_urls_in_order():
    view = views.job_view(_animation())
    assert view["status"] == "RENDERING" and view["cancellable"] and not view["resumable"]
    assert [f["index"] for f in view["frames"]] == [0, 1]
    assert view["frames"][0]["url"].startswith("https://s3.example/")
    assert view["depth"] == [{"index": 0, "url": "http://s3.example/b/jobs/d0.png"}]
    assert view["unreachable"] == 2
    assert view["outputs"] == []  # only a COMPLETED job's outputs are offered
    assert view["created_at"] == "2027-01-15T08:00:00Z"
    board = view["storyboard"]
    assert board["planner"] == {"backend": "offline", "model": "", "offline": True}
    assert [s["continuity"] for s in board["shots"]] == ["continue", "cut"]
    assert board["shots"][0]["camera_text"] == "zoom x1.05, pan +0.01, +0"
    assert board["shots"][1]["camera_text"] == "still" and board["shots"][1]["strength"] == 0.3


def test_a_job_waiting_for_review_shows_its_storyboard_and_can_be_cancelled():
    view = views.job_view(_animation(types_pb2.JOB_STATUS_PLANNED))
    assert view["status"] == "PLANNED" and view["cancellable"]
    assert not view["resumable"] and not view["terminal"]
    assert [s["continuity"] for s in view["storyboard"]["shots"]] == ["continue", "cut"]


def test_completed_outputs_in_page_order():
    anim = _animation(types_pb2.JOB_STATUS_COMPLETED)
    for name in ("manifest.json", "animation.mp4", "animation.gif", "frames.zip"):
        anim.outputs.append(
            _file(name, f"http://s3.example/{name}", size_bytes=10, sha256="0" * 64)
        )
    view = views.job_view(anim)
    assert [o["kind"] for o in view["outputs"]] == ["gif", "mp4", "zip", "manifest"]
    assert view["terminal"] and not view["cancellable"] and not view["resumable"]


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"frames": "nope"}'])
def test_storyboard_view_never_breaks_on_odd_documents(text):
    board = views.storyboard_view(text)
    assert board is None or board["shots"] == []


def test_browser_url_allows_http_only():
    assert views.browser_url("http://a/b") == "http://a/b"
    assert views.browser_url("HTTPS://a/b") == "HTTPS://a/b"
    for bad in ("file:///x", "javascript:alert(1)", "data:text/html,x", "//a/b", "http://[::1"):
        assert views.browser_url(bad) == ""


def test_job_page_escapes_every_user_string():
    page = job_html(views.job_view(_animation()))
    assert "<script>alert" not in page and "<img src=x" not in page
    escaped = html.escape(EVIL, quote=False)
    for text in (escaped, f"title {escaped}", f"error {escaped}", f"shot zero {escaped}"):
        assert text.replace('"', "&#34;") in page or text in page, text
    # The only script is the page's own, from this origin.
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/job.js" defer>']


def test_index_escapes_recent_jobs_and_form_values():
    form = views.SubmitForm(idea=EVIL, frames='3"><b>', profile='"><svg onload=x>')
    jobs = views.recent([_animation()], 5)
    page = render(
        "index.html", form=form, error=f"bad {EVIL}", jobs=jobs, list_error="", profiles=["tiny"]
    )
    assert "<script>alert" not in page and "<svg" not in page and '3"><b>' not in page
    assert "bad &lt;script&gt;" in page
    assert f'href="/jobs/{JOB}"' in page


def test_sse_message_is_one_line_of_json_per_field():
    data = {"reason": "two\nlines\r\nand data: fake\n\nid: 99", "frame": 3}
    text = views.sse_message("frame.failed", data, event_id=12)
    assert text.endswith("\n\n") and text.count("\n\n") == 1
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "id: 12" and lines[1] == "event: frame.failed"
    assert lines[2].startswith("data: ") and len(lines) == 3
    assert json.loads(lines[2][len("data: ") :]) == data
    with pytest.raises(ValueError, match="event: must be lowercase"):
        views.sse_message("evil\nid: 1", {})


def test_event_view_names_every_field():
    event = bus_pb2.Event(
        event_id="e1",
        type=bus_pb2.EVENT_TYPE_FRAME_PROGRESS,
        job_id=JOB,
        frame=2,
        attempt=1,
        sequence=41,
        step=3,
        steps=7,
        service="renderer",
        key=keys.frame_key(JOB, 2),
    )
    event.time.FromSeconds(1_800_000_000)
    view = views.event_view(event)
    assert view["type"] == "frame.progress" and (view["step"], view["steps"]) == (3, 7)
    assert view["sequence"] == 41 and view["time"] == "2027-01-15T08:00:00Z"
    assert view["key"] == f"jobs/{JOB}/frames/0002.png"


@pytest.mark.parametrize(
    ("header", "query", "after"),
    [(None, None, 0), ("17", None, 17), (None, "5", 5), ("17", "5", 17), ("", "5", 5)],
)
def test_resume_point_prefers_last_event_id(header, query, after):
    assert views.parse_after(header, query) == after


@pytest.mark.parametrize(("header", "query"), [("-1", None), (None, "x"), ("9" * 21, None)])
def test_resume_point_refuses_junk(header, query):
    with pytest.raises(ValueError, match="must be a stream sequence"):
        views.parse_after(header, query)


def _form(**fields) -> views.SubmitForm:
    base = {"idea": ["a cat"], "frames": ["4"], "format": ["gif", "mp4"]}
    base.update({k: [v] if isinstance(v, str) else v for k, v in fields.items()})
    return views.read_form(base)


def test_form_builds_the_request():
    req = views.build_request(
        _form(seed="42", depth="on", review="on", profile=" tiny ", idempotency_key="k-1")
    )
    assert (req.idea, req.frames, req.profile, req.depth) == ("a cat", 4, "tiny", True)
    assert req.review and not views.build_request(_form()).review
    assert req.HasField("seed") and req.seed == 42
    assert list(req.formats) == ["gif", "mp4"] and req.idempotency_key == "k-1"
    assert not views.build_request(_form()).HasField("seed")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"idea": "  "}, "idea: must not be empty"),
        ({"idea": "x" * 1001}, "idea: must be at most 1000 characters"),
        ({"frames": "abc"}, "frames: must be an integer in 1..120, got 'abc'"),
        ({"frames": "121"}, "frames: must be an integer in 1..120, got 121"),
        ({"seed": "-1"}, "seed: must be an integer in 0..4294967295, got -1"),
        ({"format": []}, "format: choose at least one of gif, mp4, webp, zip, contact"),
        ({"format": ["gif", "avi"]}, "format: must be a list of gif, mp4, webp, zip, contact"),
        ({"idempotency_key": "a b"}, "idempotency_key: must be 1..128 letters"),
    ],
)
def test_form_errors_name_the_field_and_range(fields, message):
    with pytest.raises(ValueError) as info:
        views.build_request(_form(**fields))
    assert str(info.value).startswith(message)


# -- directing: the storyboard editor and "re-render from here" ---------------------


# The storyboard drops markup from prompts: what a planned job's plan.json holds.
CLEAN_PROMPT_0 = 'shot zero alert("x") &'


def _posted(draft: dict) -> dict[str, list[str]]:
    """The editor's form as a browser posts it (parse_qs shape)."""
    fields = {"title": [draft["title"]], "style": [draft["style"]]}
    for i, shot in enumerate(draft["shots"]):
        fields.update({f"shot-{i}-{name}": [value] for name, value in shot.items()})
    return fields


def test_the_editor_shows_every_shot_field_and_an_untouched_form_approves_the_plan():
    text = json.dumps(BOARD)
    draft = views.board_draft(text)
    assert draft["title"] == f"title {EVIL}" and len(draft["shots"]) == 2
    assert draft["shots"][0] == {
        "prompt": f"shot zero {EVIL}",
        "negative_prompt": "",
        "strength": "",
        "continuity": "continue",
        "palette": "keep",
        "zoom": "1.05",
        "pan_x": "0.01",
        "pan_y": "",
        "rotate": "",
    }
    assert draft["shots"][1]["strength"] == "0.3" and draft["shots"][1]["continuity"] == "cut"
    posted = views.read_board_draft(_posted(draft), 2)
    assert posted == draft
    assert views.approval_json(text, posted) == ""  # unchanged: render the plan as it is


def test_an_edited_shot_is_the_approved_storyboard():
    text = json.dumps(BOARD)
    draft = views.board_draft(text)
    draft["shots"][1].update(prompt="a lantern in the rain", strength="", zoom="1.1")
    draft["style"] = "watercolour"
    board = json.loads(views.approval_json(text, draft))
    assert board["style"] == "watercolour" and board["planner"]["backend"] == "offline"
    assert board["frames"][0]["prompt"] == CLEAN_PROMPT_0  # as the storyboard stores it
    assert board["frames"][0]["camera"] == {
        "zoom": 1.05,
        "pan_x": 0.01,
        "pan_y": 0.0,
        "rotate": 0.0,
    }
    shot = board["frames"][1]
    assert shot["prompt"] == "a lantern in the rain" and shot["strength"] is None
    assert shot["camera"]["zoom"] == 1.1 and shot["continuity"] == "cut"


@pytest.mark.parametrize(
    ("shot", "field", "value", "message"),
    [
        (1, "strength", "abc", "frames[1].strength: must be a number in (0, 1], got 'abc'"),
        (1, "strength", "2", "frames[1].strength: must be a number in (0, 1], got 2"),
        (0, "zoom", "3", "frames[0].camera.zoom: must be a number in [0.8, 1.25], got 3"),
        (0, "rotate", "left", "frames[0].camera.rotate: must be a number in [-15, 15]"),
        (0, "prompt", "  ", "frames[0].prompt: must not be empty"),
        (1, "continuity", "jump", "frames[1].continuity:"),
        (1, "prompt", f"SHOT zero {EVIL}", "frames[1].prompt: duplicates frames[0].prompt"),
    ],
)
def test_editor_errors_name_the_shot_and_field(shot, field, value, message):
    draft = views.board_draft(json.dumps(BOARD))
    draft["shots"][shot][field] = value
    with pytest.raises(ValueError) as info:
        views.approval_json(json.dumps(BOARD), draft)
    assert str(info.value).startswith(message), str(info.value)


def test_a_refused_edit_comes_back_as_typed_and_escaped():
    draft = views.board_draft(json.dumps(BOARD))
    draft["shots"][1]["prompt"] = f"typed {EVIL}"
    draft["shots"][1]["strength"] = '2"><b>'
    view = views.job_view(_animation(types_pb2.JOB_STATUS_PLANNED))
    page = job_html(view, editor=draft, editor_error=f"frames[1].strength: bad {EVIL}")
    assert "<script>alert" not in page and "<img src=x" not in page and '2"><b>' not in page
    assert 'id="storyboard-editor"' in page and 'action="/jobs/' + JOB + '/approve"' in page
    assert "typed &lt;script&gt;" in page and 'value="2&#34;&gt;&lt;b&gt;"' in page
    assert "frames[1].strength: bad &lt;script&gt;" in page
    # A job that is not waiting for review has no editor.
    assert 'id="storyboard-editor"' not in job_html(views.job_view(_animation()))


@pytest.mark.parametrize(
    ("text", "frames", "message"),
    [
        ("0", 4, "from_frame: frame 0 cannot be re-rendered from"),
        ("4", 4, "from_frame: must be a frame of this job, an integer in 1..3, got '4'"),
        ("-1", 4, "from_frame: must be a frame of this job, an integer in 1..3, got '-1'"),
        ("x", 4, "from_frame: must be a frame of this job, an integer in 1..3, got 'x'"),
        ("1", 1, "from_frame: a job of 1 frame cannot be re-rendered from a frame"),
    ],
)
def test_re_render_from_frame_k_needs_k_in_1_to_n_minus_1(text, frames, message):
    with pytest.raises(ValueError) as info:
        views.check_from_frame(text, frames)
    assert str(info.value).startswith(message), str(info.value)


def _finished_parent() -> animation_pb2.Animation:
    anim = _animation(types_pb2.JOB_STATUS_COMPLETED)
    anim.profile = "tiny"
    for name in ("animation.gif", "animation.mp4", "manifest.json"):
        anim.outputs.append(_file(name, f"http://s3.example/{name}"))
    return anim


def test_re_render_from_here_forks_with_the_edited_shot():
    parent = _finished_parent()
    form = views.fork_form(parent, 1)
    assert (form.from_frame, form.seed) == ("1", "7")
    assert form.shot["prompt"] == "shot one" and form.shot["strength"] == "0.3"
    form.shot.update(prompt="a heron lands", rotate="5")
    form.seed = "123"
    form.idempotency_key = "k-1"
    posted = views.read_fork_form(
        {
            "from_frame": [form.from_frame],
            "seed": [form.seed],
            "idempotency_key": [form.idempotency_key],
            **{f"fork-{k}": [v] for k, v in form.shot.items()},
        }
    )
    assert posted == form
    req = views.build_fork_request(parent, posted)
    # ForkAnimation: the planner takes every other setting from the parent's request.
    assert isinstance(req, animation_pb2.ForkAnimationRequest)
    assert (req.fork.parent_job_id, req.fork.from_frame) == (JOB, 1)
    assert req.seed == 123 and req.idempotency_key == "k-1"
    assert not req.prompts and not req.HasField("strength") and not req.HasField("depth")
    board = json.loads(req.storyboard_json)
    assert board["frames"][0]["prompt"] == CLEAN_PROMPT_0
    assert board["frames"][1]["prompt"] == "a heron lands"
    assert board["frames"][1]["camera"]["rotate"] == 5.0
    assert board["frames"][1]["strength"] == 0.3 and board["frames"][1]["continuity"] == "cut"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"from_frame": "0"}, "from_frame: frame 0 cannot be re-rendered from"),
        ({"seed": "-3"}, "seed: must be an integer in 0..4294967295, got -3"),
        ({"seed": ""}, "seed: must be an integer in 0..4294967295, got ''"),
        ({"idempotency_key": "a b"}, "idempotency_key: must be 1..128 letters"),
        ({"shot": {"strength": "0"}}, "frames[1].strength: must be a number in (0, 1], got 0"),
        ({"shot": {"pan_x": "1"}}, "frames[1].camera.pan_x: must be a number in [-0.25, 0.25]"),
    ],
)
def test_re_render_errors_name_the_field(change, message):
    form = views.fork_form(_finished_parent(), 1)
    form.shot.update(change.pop("shot", {}))
    for name, value in change.items():
        setattr(form, name, value)
    with pytest.raises(ValueError) as info:
        views.build_fork_request(_finished_parent(), form)
    assert str(info.value).startswith(message), str(info.value)


def test_fork_page_shows_the_frame_editor_and_the_parent_side_by_side():
    parent = views.job_view(_finished_parent())
    assert views.player(parent) == {"kind": "gif", "url": "http://s3.example/animation.gif"}
    view = views.job_view(_finished_parent())
    form = views.fork_form(_finished_parent(), 1)
    form.idempotency_key = "k"
    compare = {
        "job_id": "cd" * 16,
        "error": "",
        "title": f"parent {EVIL}",
        "status": "COMPLETED",
        "from_frame": "1",
        "player": views.player(parent),
    }
    page = job_html(view, fork=form, parent=compare)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert 'id="fork-editor"' in page and f'action="/jobs/{JOB}/fork"' in page
    assert 'name="from_frame" value="1"' in page and 'id="fork-seed"' in page
    assert f'href="/jobs/{JOB}?frame=0#refork"' in page  # every frame opens its editor
    assert f'<a id="parent-link" href="/jobs/{"cd" * 16}">parent &lt;script&gt;' in page
    assert page.count('src="http://s3.example/animation.gif"') == 3  # players, fork, parent


def test_extend_by_m_frames_keeps_every_setting_of_the_parent():
    parent = _finished_parent()
    have = parent.frames_total
    posted = views.read_extend_form({"frames": [" 4 "], "idempotency_key": ["k-2"]})
    assert posted == views.ExtendForm(frames="4", idempotency_key="k-2")
    req = views.build_extend_request(parent, posted)
    # ExtendAnimation: the planner continues the storyboard and keeps every setting.
    assert req == animation_pb2.ExtendAnimationRequest(
        parent_job_id=JOB, frames=4, idempotency_key="k-2"
    )
    most = 120 - have
    for frames in ("0", str(most + 1), "x", ""):
        with pytest.raises(ValueError) as info:
            views.build_extend_request(parent, views.ExtendForm(frames=frames))
        assert str(info.value) == (
            f"frames: must be an integer in 1..{most} (this job has {have} frames, the limit "
            f"is 120), got {frames!r}"
        )
    with pytest.raises(ValueError, match=r"^idempotency_key: must be 1\.\.128 letters"):
        views.build_extend_request(parent, views.ExtendForm("1", "a b"))


def test_only_a_finished_job_below_the_limit_offers_extend():
    finished = views.job_view(_finished_parent())
    assert views.extendable(finished)
    assert not views.extendable(views.job_view(_animation()))  # still rendering
    assert not views.extendable({**finished, "frames_total": 120})
    page = job_html(finished, extend=views.ExtendForm(frames="<2>", idempotency_key="k"))
    assert 'id="extend-form"' in page and f'action="/jobs/{JOB}/extend"' in page
    assert 'value="&lt;2&gt;"' in page and f'max="{120 - finished["frames_total"]}"' in page
    assert 'id="extend-form"' not in job_html(finished)
