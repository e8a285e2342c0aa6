"""services/planner/forks.py without a server: which shots a fork may change, prompt edits,
rekeyed specs, what is copied, and the frames a fork's plan counts as done."""

from __future__ import annotations

import json

import pytest
from google.protobuf.json_format import MessageToDict

from ghibli_anim.contracts import keys, lifecycle
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.storyboard import parse_storyboard
from ghibli_anim.runtime.store.local import LocalStore
from ghibli_anim.services.planner import forks

PARENT = "0123456789abcdef0123456789abcdef"
FORK = "fedcba9876543210fedcba9876543210"


def board(*shots: dict, style: str = "ghibli style"):
    return parse_storyboard(
        {"version": 1, "title": "t", "style": style, "frames": list(shots)}, len(shots)
    )


SHOTS = [
    {"prompt": "a boat", "camera": {"zoom": 1.05}},
    {"prompt": "a bridge", "camera": {"pan_x": 0.05}},
    {"prompt": "an eddy"},
]


def test_the_first_k_shots_must_be_the_parents_but_shot_k_minus_1s_camera() -> None:
    parent = board(*SHOTS)
    moved = [SHOTS[0], {**SHOTS[1], "camera": {"rotate": 5.0}}, {"prompt": "a pond"}]
    forks.check_board(parent, board(*moved), 2)  # shot 1's move only changes frame 2
    with pytest.raises(forks.ForkError, match=r"^storyboard_json: frames\[1\]\.camera differs"):
        forks.check_board(parent, board(*moved), 3)
    cut0 = [{**SHOTS[0], "continuity": "cut"}, *SHOTS[1:]]
    forks.check_board(parent, board(*cut0), 2)  # frame 0 starts fresh whatever it says
    with pytest.raises(forks.ForkError, match=r"frames\[0\]\.prompt \(with the style\) differs"):
        forks.check_board(parent, board(*SHOTS, style="watercolour"), 1)
    strong = [SHOTS[0], {**SHOTS[1], "strength": 0.5}, SHOTS[2]]
    with pytest.raises(forks.ForkError, match=r"frames\[1\]\.strength differs.*0\.\.1 of a fork"):
        forks.check_board(parent, board(*strong), 2)
    forks.check_board(parent, board(*strong), 1)


def test_from_frame_and_prompt_edits_are_checked() -> None:
    for k in (0, 3, -1):
        with pytest.raises(forks.ForkError, match=r"^fork\.from_frame: must be in 1\.\.2 \(the"):
            forks.check_from_frame(k, 3)
    edited = forks.edit_prompts(board(*SHOTS), {2: "a pond"}, 1)
    assert [s.prompt for s in edited.frames] == ["a boat", "a bridge", "a pond"]
    assert edited.frames[1].camera.pan_x == 0.05
    for frame in (0, 3):
        with pytest.raises(forks.ForkError, match=rf"^--prompt: frame {frame} must be in 1\.\.2"):
            forks.edit_prompts(board(*SHOTS), {frame: "x"}, 1)
    with pytest.raises(ValueError, match=r"duplicates frames\[0\]\.prompt"):
        forks.edit_prompts(board(*SHOTS), {1: "a boat"}, 1)
    req = animation_pb2.CreateAnimationRequest(frames=3, init_upload_id="u")
    req.fork.parent_job_id, req.fork.from_frame = "../x", 1
    with pytest.raises(forks.ForkError, match=r"^fork\.parent_job_id: must be a job id"):
        forks.check_request(req)
    req.fork.parent_job_id = PARENT
    with pytest.raises(forks.ForkError, match=r"^init_upload_id: a fork keeps"):
        forks.check_request(req)


def _spec(job: str, i: int) -> types_pb2.FrameSpec:
    return types_pb2.FrameSpec(
        index=i,
        prompt=f"p{i}",
        seed=7 + i,
        source_key=keys.frame_key(job, i - 1) if i else "",
        depth_key=keys.depth_key(job, i - 1) if i else "",
        color_reference_key=keys.frame_key(job, 0),
        profile=types_pb2.Profile(name="tiny"),
    )


def _record(job: str, i: int) -> dict:
    spec = MessageToDict(_spec(job, i), preserving_proto_field_name=True)
    return {"job_id": job, "frame": i, "spec": spec}


def test_a_forks_specs_are_the_parents_rekeyed_then_its_own() -> None:
    own = [_spec(FORK, i) for i in range(3)]
    for s in own:
        s.prompt += " (fork)"
    specs = forks.fork_specs(FORK, 2, own, [_record(PARENT, 0), _record(PARENT, 1)])
    assert [s.prompt for s in specs] == ["p0", "p1", "p2 (fork)"]
    assert specs[1].source_key == keys.frame_key(FORK, 0)
    assert specs[1].depth_key == keys.depth_key(FORK, 0)
    assert specs[1].color_reference_key == keys.frame_key(FORK, 0)
    # A fork of a fork: each copied record names the job that rendered it.
    grand = forks.fork_specs(PARENT, 2, own, [_record(FORK, 0), _record(FORK, 1)])
    assert grand[1].source_key == keys.frame_key(PARENT, 0)
    with pytest.raises(forks.ForkError, match=r"record of frame 0 holds no FrameSpec"):
        forks.fork_specs(FORK, 1, own, [{"job_id": PARENT, "frame": 0}])


def test_reading_the_parent_and_copying_its_frames(tmp_path) -> None:
    store = LocalStore(tmp_path)
    store.put(keys.plan_key(PARENT), board(*SHOTS).to_json().encode())
    for i in range(2):
        store.put(keys.frame_key(PARENT, i), b"png%d" % i)
        store.put(keys.frame_record_key(PARENT, i), json.dumps(_record(PARENT, i)).encode())
    store.put(keys.depth_key(PARENT, 0), b"depth0")
    # K = N (3) keeps every frame (an extension, when the request has more); K > N cannot.
    with pytest.raises(forks.ForkError, match=r"^fork\.from_frame: must be in 1\.\.3 \(job "):
        forks.read_parent(store, PARENT, 4)
    with pytest.raises(forks.ForkError, match=rf"^fork\.parent_job_id: job {FORK} has no story"):
        forks.read_parent(store, FORK, 1)
    parent = forks.read_parent(store, PARENT, 2)
    assert parent.depth_maps == {0} and [s.prompt for s in parent.specs] == ["p0", "p1"]
    # Started from an init image: refused from its stored files alone (CreateAnimation with
    # fork, or a parent the job store no longer holds), naming the request's field.
    store.put(keys.init_key(PARENT), b"init")
    with pytest.raises(forks.ForkError, match=rf"^fork\.parent_job_id: job {PARENT} started from"):
        forks.read_parent(store, PARENT, 2)
    store.delete(keys.init_key(PARENT))
    written = forks.copy_frames(store, parent, FORK)
    assert written == [
        keys.frame_key(FORK, 0),
        keys.frame_record_key(FORK, 0),
        keys.depth_key(FORK, 0),
        keys.frame_key(FORK, 1),
        keys.frame_record_key(FORK, 1),
    ]
    store.delete_prefix(keys.job_prefix(PARENT))
    assert store.get(keys.frame_key(FORK, 1)) == b"png1"

    # Planned with the copies: frames 0 and 1 done (frame 0's depth map too), frame 2 next.
    state = animation_pb2.JobState(job_id=FORK, status=lifecycle.PLANNING)
    specs = [_spec(FORK, i) for i in range(3)]
    assert lifecycle.planned(
        state,
        title="t",
        backend="user",
        profile=types_pb2.Profile(),
        specs=specs,
        event_id="e",
        stored=store.list(keys.job_prefix(FORK)),
    )
    assert [(f.rendered, f.depth_ready) for f in state.frame_states] == [
        (True, True),
        (True, False),
        (False, False),
    ]
    assert state.status == lifecycle.RENDERING
    assert lifecycle.first_frame_not_rendered(state) == 2


def test_fork_animation_is_the_parents_request_with_its_changes() -> None:
    parent = animation_pb2.CreateAnimationRequest(
        idea="a boat",
        frames=3,
        idempotency_key="parent-key",
        client_id="alice",
        storyboard_json="{}",
        strength_schedule="0:0.2, 2:0.4",
        guidance=9.0,
        seed_mode_schedule="0:increment, 2:fixed",
        loras=["style.safetensors:0.8"],
        depth=True,
        formats=["gif"],
        fork=animation_pb2.ForkFrom(parent_job_id=FORK, from_frame=1),
        review=True,
    )
    edited = board(*SHOTS[:2], {"prompt": "a weir"})
    unchanged = forks.request_of_fork(
        parent, 42, animation_pb2.ForkAnimationRequest(fork=_fork_from(2)), edited
    )
    assert unchanged.seed == 42 and unchanged.HasField("seed")  # the resolved one
    assert (unchanged.idempotency_key, unchanged.client_id) == ("", "")
    assert not unchanged.review  # the parent's waiting for review is not the fork's
    assert unchanged.fork == _fork_from(2)  # its own, not the parent's fork
    assert parse_storyboard(unchanged.storyboard_json) == edited and unchanged.frames == 3
    for name in ("strength_schedule", "guidance", "seed_mode_schedule", "loras", "depth"):
        assert getattr(unchanged, name) == getattr(parent, name), name
    assert list(unchanged.formats) == ["gif"]

    changed = forks.request_of_fork(
        parent,
        42,
        animation_pb2.ForkAnimationRequest(
            fork=_fork_from(2),
            idempotency_key="fork-key",
            strength=0.3,
            guidance_schedule="0:6, 2:8",
            seed=5,
            seed_mode=types_pb2.SEED_MODE_FIXED,
            loras=["other.safetensors:0.5"],
            color_coherence="off",
            depth=False,
            review=True,
        ),
        edited,
    )
    # A plain value replaces the parent's schedule, which would otherwise override it.
    assert changed.strength == pytest.approx(0.3) and not changed.strength_schedule
    assert changed.guidance_schedule == "0:6, 2:8" and changed.guidance == 9.0
    assert changed.seed == 5 and changed.seed_mode == types_pb2.SEED_MODE_FIXED
    assert not changed.seed_mode_schedule
    assert list(changed.loras) == ["other.safetensors:0.5"]
    assert changed.color_coherence == "off" and not changed.depth
    assert changed.idempotency_key == "fork-key" and changed.review


def _fork_from(k: int) -> animation_pb2.ForkFrom:
    return animation_pb2.ForkFrom(parent_job_id=PARENT, from_frame=k)


def _parent(tmp_path, frames: int = 3) -> forks.ParentFrames:
    store = LocalStore(tmp_path)
    store.put(keys.plan_key(PARENT), board(*SHOTS[:frames]).to_json().encode())
    for i in range(frames):
        store.put(keys.frame_key(PARENT, i), b"png%d" % i)
        store.put(keys.frame_record_key(PARENT, i), json.dumps(_record(PARENT, i)).encode())
    return forks.read_parent(store, PARENT, frames)


def _extension(frames: int, storyboard_json: str = "") -> animation_pb2.CreateAnimationRequest:
    req = animation_pb2.CreateAnimationRequest(frames=frames, storyboard_json=storyboard_json)
    req.fork.parent_job_id, req.fork.from_frame = PARENT, 3
    return req


def test_an_extension_keeps_every_frame_and_leaves_or_takes_the_new_shots(tmp_path) -> None:
    parent = _parent(tmp_path)
    assert parent.from_frame == 3 and [s.prompt for s in parent.specs] == ["p0", "p1", "p2"]
    assert [k for _, k in forks.copies(parent, FORK)][-2:] == [
        keys.frame_key(FORK, 2),
        keys.frame_record_key(FORK, 2),
    ]
    # No storyboard: the parent's 3 shots, for the planner to continue to 5.
    req = _extension(5)
    forks.check_request(req)
    kept = forks.board_of(req, parent)
    assert [s.prompt for s in kept.frames] == ["a boat", "a bridge", "an eddy"]
    req.storyboard_json = kept.to_json()
    assert forks.to_continue(req) == kept
    # The parent's shots given (shot 2's camera may change: it moves frame 2 into frame 3).
    moved = [*SHOTS[:2], {**SHOTS[2], "camera": {"zoom": 1.1}}]
    assert forks.to_continue(_extension(5, board(*moved).to_json())) is not None
    forks.board_of(_extension(5, board(*moved).to_json()), parent)
    # The user's new shots: a storyboard of 5 is the whole one, nothing to continue.
    five = board(*SHOTS, {"prompt": "a pond"}, {"prompt": "a heron"}).to_json()
    assert len(forks.board_of(_extension(5, five), parent).frames) == 5
    assert forks.to_continue(_extension(5, five)) is None
    with pytest.raises(forks.ForkError, match=r"frames\[1\]\.prompt \(with the style\) differs"):
        forks.board_of(
            _extension(5, board(SHOTS[0], {"prompt": "a cat"}, SHOTS[2]).to_json()), parent
        )
    with pytest.raises(
        forks.ForkError,
        match=r"^storyboard_json: frames: expected exactly 5 frames, or the parent's 3 for the "
        r"planner to continue, got 4$",
    ):
        forks.board_of(_extension(5, board(*SHOTS, {"prompt": "a pond"}).to_json()), parent)
    # A same-length fork from K = N renders nothing: refused as ever.
    with pytest.raises(forks.ForkError, match=r"^fork\.from_frame: must be in 1\.\.2 \(the fork"):
        forks.check_request(_extension(3))
    # Only an extension leaves shots to the planner: a fork from K < N gives them all.
    store = LocalStore(tmp_path)
    from_2 = forks.read_parent(store, PARENT, 2)
    short = _extension(4, board(*SHOTS[:2]).to_json())
    short.fork.from_frame = 2
    with pytest.raises(
        forks.ForkError, match=r"^storyboard_json: frames: expected exactly 4 frames, got 2$"
    ):
        forks.board_of(short, from_2)
    short.storyboard_json = ""
    with pytest.raises(forks.ForkError, match=r"^frames: the parent's storyboard has 3 frames"):
        forks.board_of(short, from_2)


def test_extend_animation_is_the_fork_from_n_with_its_settings() -> None:
    """Every field ExtendAnimation shares by name with ForkAnimation (the render settings,
    the key, the client) carries over, so both are checked by the same code."""
    extend = animation_pb2.ExtendAnimationRequest(
        parent_job_id=PARENT,
        frames=2,
        storyboard_json="{}",
        prompts=[animation_pb2.PromptEdit(frame=3, prompt="a pond")],
        idempotency_key="key",
        client_id="alice",
        strength=0.3,
        guidance_schedule="0:6, 2:8",
        seed=5,
        seed_mode=types_pb2.SEED_MODE_FIXED,
        loras=["other.safetensors:0.5"],
        color_coherence="off",
        depth=False,
        review=True,
    )
    fork = forks.fork_of_extension(extend, 3)
    assert fork.fork == animation_pb2.ForkFrom(parent_job_id=PARENT, from_frame=3)
    # The storyboard and prompts become the fork's storyboard (extension_board), not edits.
    assert not fork.storyboard_json and not fork.prompts
    assert fork.HasField("depth") and not fork.depth and not fork.HasField("guidance")
    wanted = MessageToDict(extend, preserving_proto_field_name=True)
    for name in ("parent_job_id", "frames", "storyboard_json", "prompts"):
        wanted.pop(name)
    got = MessageToDict(fork, preserving_proto_field_name=True)
    got.pop("fork")
    assert got == wanted
    # Every render setting of ForkAnimation is one of ExtendAnimation's, of the same type.
    fork_fields = animation_pb2.ForkAnimationRequest.DESCRIPTOR.fields_by_name
    extend_fields = animation_pb2.ExtendAnimationRequest.DESCRIPTOR.fields_by_name
    for name, field in fork_fields.items():
        if name == "fork":
            continue
        assert name in extend_fields, name
        same = extend_fields[name]
        assert (same.type, same.is_repeated, same.has_presence) == (
            field.type,
            field.is_repeated,
            field.has_presence,
        ), name

    parent = animation_pb2.CreateAnimationRequest(idea="a boat", frames=3, formats=["gif"])
    req = forks.request_of_fork(parent, 42, fork, board(*SHOTS), frames=5)
    assert req.frames == 5 and req.fork.from_frame == 3
    assert forks.to_continue(req) == board(*SHOTS)  # the planner continues it


def test_extension_board_from_a_plan_prompts_or_the_planner() -> None:
    parent = board(*SHOTS)
    assert forks.extension_board(parent, 5, None, {}) == parent  # the planner continues it
    given = forks.extension_board(parent, 5, None, {3: "a pond", 4: "a heron"})
    assert [s.prompt for s in given.frames] == [
        "a boat",
        "a bridge",
        "an eddy",
        "a pond",
        "a heron",
    ]
    plan = board(*SHOTS, {"prompt": "a pond"}, {"prompt": "a weir"})
    edited = forks.extension_board(parent, 5, plan, {4: "a heron"})
    assert [s.prompt for s in edited.frames][3:] == ["a pond", "a heron"]
    assert forks.extension_board(parent, 5, parent, {}) == parent

    def refused(plan, edits, **names) -> str:
        with pytest.raises(forks.ForkError) as info:
            forks.extension_board(parent, 5, plan, edits, **names)
        return str(info.value)

    api = {"field": "prompts", "plan_field": "storyboard_json"}
    assert refused(None, {3: "a pond"}, **api) == (
        "prompts: without storyboard_json, give a prompt for every new frame 3..4 (or none: "
        "the planner continues the storyboard); frame 4 is missing"
    )
    assert refused(None, {2: "a", 3: "b", 4: "c"}).endswith("; got frame 2")
    assert refused(parent, {3: "a pond"}, **api) == (
        "prompts: edits the new frames 3..4 of a storyboard_json that holds them (5 shots); "
        "this one has 3"
    )
    assert refused(plan, {2: "a weir"}, **api) == (
        "prompts: frame 2 must be in 3..4 (frames before frame 3 are the parent's)"
    )


@pytest.mark.parametrize(("added", "have"), [(0, 3), (118, 3), (-1, 3), (1, 120)])
def test_an_extension_adds_1_to_the_limit_less_n_frames(added: int, have: int) -> None:
    with pytest.raises(forks.ForkError) as info:
        forks.check_extension_frames(added, have, PARENT)
    assert str(info.value) == (
        f"frames: must be in 1..{120 - have} (job {PARENT} has {have} frames, the limit is "
        f"120), got {added}"
    )
    forks.check_extension_frames(117, 3, PARENT)
