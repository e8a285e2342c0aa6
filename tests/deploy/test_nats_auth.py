"""deploy/nats/auth.conf against a real nats-server started with deploy/nats/nats.conf.

Each service's user runs the bus calls its code makes (JobStore, publish_work,
publish_event, WorkConsumer with acks and heartbeats, event watches, the
anim.request.* requests and replies) and must meet no permissions violation; then each
user tries something outside its subjects and the server refuses it. The server reports a
refused core publish or subscription only through the client's error callback (nats-py
raises nothing), so the tests wait for that report.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import nats.errors
import pytest
import tenacity

from ghibli_anim.contracts import keys
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.runtime.bus.connection import Bus
from ghibli_anim.runtime.bus.consumer import Delivery, conductor_consumer, work_consumer
from ghibli_anim.runtime.bus.names import (
    ADVISORIES_CONSUMER,
    ADVISORIES_STREAM,
    CONDUCTOR,
    EVENT_PREFIX,
    EVENTS_STREAM,
    IDEM_BUCKET,
    JOBS_BUCKET,
    PLANNER_QUEUE,
    REQUEST_APPROVE,
    REQUEST_CREATE,
    REQUEST_EXTEND,
    REQUEST_FORK,
    STEPS,
    WORK_PREFIX,
    WORK_STREAM,
    job_events_filter,
    work_subject,
)
from ghibli_anim.runtime.bus.publish import new_event, publish_event, publish_work
from ghibli_anim.runtime.bus.topology import init_bus
from ghibli_anim.runtime.bus.watch import read_job_events, watch_job_events
from ghibli_anim.runtime.jobstore import JobStore
from ghibli_anim.runtime.processes import NatsServer, find_binary
from ghibli_anim.services.planner.grpc_api import BUS_CALLS

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"
AUTH_CONF = ROOT / "deploy" / "nats" / "auth.conf"

USERS = ("bus-init", "planner", "renderer", "depth", "assembler", "submitter")
E = bus_pb2


def password_var(user: str) -> str:
    """The server-side environment variable holding ``user``'s password."""
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


def passwords() -> dict[str, str]:
    return {user: f"test-{user}-password-0123" for user in USERS}


@pytest.fixture
def secured_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsServer]:
    """nats-server with the deployment's nats.conf (auth.conf included)."""
    for user, password in passwords().items():
        monkeypatch.setenv(password_var(user), password)
    server = NatsServer(tmp_path / "nats", config_file=NATS_CONF)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Errors:
    """What the server reported to one connection's error callback."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._changed = asyncio.Condition()

    async def record(self, exc: Exception) -> None:
        async with self._changed:
            self.messages.append(str(exc))
            self._changed.notify_all()

    async def wait_for(self, *parts: str, timeout: float = 30.0) -> str:
        """The first reported error that contains every one of ``parts``."""

        def found() -> str | None:
            low = [p.lower() for p in parts]
            return next((m for m in self.messages if all(p in m.lower() for p in low)), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
        message = found()
        assert message is not None
        return message


@asynccontextmanager
async def login(server: NatsServer, user: str) -> AsyncIterator[tuple[Bus, Errors]]:
    errors = Errors()
    nc = await nats.connect(
        server.url,
        user=user,
        password=passwords()[user],
        error_cb=errors.record,
        allow_reconnect=False,
        connect_timeout=10,
        name=user,
    )
    conn = Bus(nc=nc, js=nc.jetstream(timeout=30.0), name=user)
    try:
        yield conn, errors
    finally:
        await conn.close()


async def no_violations(conn: Bus, errors: Errors) -> None:
    # The server answers a PING after everything sent before it: any refusal of
    # an earlier publish or subscription has reached the error callback by then.
    await conn.nc.flush(timeout=30)
    assert errors.messages == [], f"{conn.name}: {errors.messages}"


def server_log(server: NatsServer) -> str:
    return server.log_path.read_text(errors="replace")


async def consume_one(js, step: str, message_type, *, stream: str = WORK_STREAM):
    """Run the service's WorkConsumer until it has handled (and acked) one message."""
    handled: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handler(work, delivery: Delivery) -> None:
        await delivery.msg.in_progress()  # the heartbeat every long handler sends
        if not handled.done():
            handled.set_result(work)

    # Generous timeouts: the machine may be busy; nothing here waits for them to expire.
    options = {"fetch_timeout_s": 1.0, "ack_timeout_s": 30.0}
    if stream == EVENTS_STREAM:
        consumer = conductor_consumer(js, handler, **options)
    else:
        consumer = work_consumer(js, step, message_type, handler, **options)
    await consumer.start()
    try:
        work = await asyncio.wait_for(handled, 30)
    finally:
        # stop() returns once the message in hand is finished: acknowledged by then.
        await consumer.stop(grace_s=30)
    assert consumer.stats.acked == 1, consumer.stats
    return work


def test_auth_conf_passes_the_servers_own_check(monkeypatch: pytest.MonkeyPatch) -> None:
    for user, password in passwords().items():
        monkeypatch.setenv(password_var(user), password)
    binary = str(find_binary("nats-server"))
    ok = subprocess.run([binary, "-t", "-c", str(NATS_CONF)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # A missing password is a start-up error, not an account without a password.
    monkeypatch.delenv(password_var("renderer"))
    bad = subprocess.run([binary, "-t", "-c", str(NATS_CONF)], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "NATS_RENDERER_PASSWORD" in bad.stdout + bad.stderr


def test_every_user_has_a_password_variable() -> None:
    text = AUTH_CONF.read_text()
    for user in USERS:
        assert f"user: {user}\n" in text
        assert f"password: ${password_var(user)}\n" in text
    assert "no_auth_user" not in text


def allowed_publish(user: str) -> list[str]:
    """The quoted subjects of ``user``'s publish allow list in auth.conf."""
    text = AUTH_CONF.read_text()
    block = text.split(f"user: {user}\n", 1)[1].split("subscribe:", 1)[0]
    return re.findall(r'"([^"]+)"', block)


def test_auth_conf_names_the_codes_streams_consumers_and_buckets() -> None:
    streams = {
        WORK_STREAM,
        EVENTS_STREAM,
        ADVISORIES_STREAM,
        f"KV_{JOBS_BUCKET}",
        f"KV_{IDEM_BUCKET}",
    }
    durables = {*STEPS, CONDUCTOR, ADVISORIES_CONSUMER}
    for user in USERS:
        for subject in allowed_publish(user):
            if subject.startswith(("$JS.API.CONSUMER.", "$JS.ACK.")):
                parts = subject.removeprefix("$JS.API.CONSUMER.").removeprefix("$JS.ACK.")
                parts = parts.removeprefix("MSG.NEXT.").removeprefix("INFO.").split(".")
                parts = parts[1:] if parts[0] in ("CREATE", "DELETE") else parts
                assert parts[0] in streams, subject
                if len(parts) > 1 and parts[1] not in (">", "*"):
                    assert parts[1] in durables, subject
            elif subject.startswith("$KV."):
                assert subject.split(".")[1] in (JOBS_BUCKET, IDEM_BUCKET), subject
            elif subject.startswith("anim."):
                assert subject.startswith((WORK_PREFIX, EVENT_PREFIX, *BUS_CALLS)), subject
    # Each worker pulls from its own durable only.
    for user, step in (("renderer", "render"), ("depth", "depth"), ("assembler", "assemble")):
        pulls = [s for s in allowed_publish(user) if s.startswith("$JS.API.CONSUMER.MSG.NEXT.")]
        assert pulls == [f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{step}"]
    for subject in BUS_CALLS:
        assert f'"{subject} {PLANNER_QUEUE}"' in AUTH_CONF.read_text()
    # The submitter may ask every request the planner answers on the bus, nothing else.
    assert sorted(allowed_publish("submitter")) == sorted(BUS_CALLS)


async def test_services_do_their_work_within_their_permissions(secured_nats: NatsServer) -> None:
    server = secured_nats
    job_id = keys.new_job_id()

    async with login(server, "bus-init") as (conn, errors):
        await init_bus(conn.js, ack_wait_s=3.0, max_deliver=3)
        await no_violations(conn, errors)

    async with login(server, "planner") as (planner, planner_errors):
        jobs = await JobStore.open(planner.js)
        # CreateAnimation: idempotency claim, job state, first work and event.
        assert await jobs.claim_idempotency("client", "key-1", job_id) == job_id
        assert await jobs.claim_idempotency("client", "key-1", keys.new_job_id()) == job_id
        await jobs.create(
            animation_pb2.JobState(job_id=job_id, status=types_pb2.JOB_STATUS_PENDING)
        )
        await jobs.update(job_id, lambda s: setattr(s, "status", types_pb2.JOB_STATUS_PLANNING))
        assert await jobs.list() == [job_id]
        await publish_event(planner.js, new_event(E.EVENT_TYPE_JOB_CREATED, job_id))
        await publish_work(
            planner.js, "plan", E.PlanWork(job_id=job_id), job_id=job_id, frame=-1, attempt=0
        )
        work = await consume_one(planner.js, "plan", E.PlanWork)
        assert work.job_id == job_id
        event = await consume_one(planner.js, CONDUCTOR, E.Event, stream=EVENTS_STREAM)
        assert event.type == E.EVENT_TYPE_JOB_CREATED
        # The conductor hands out the other steps.
        await jobs.update(job_id, lambda s: setattr(s, "status", types_pb2.JOB_STATUS_RENDERING))
        await publish_work(
            planner.js, "render", E.RenderWork(job_id=job_id), job_id=job_id, frame=0, attempt=0
        )
        await publish_work(
            planner.js, "depth", E.DepthWork(job_id=job_id), job_id=job_id, frame=0, attempt=0
        )
        await publish_work(
            planner.js,
            "assemble",
            E.AssembleWork(job_id=job_id),
            job_id=job_id,
            frame=-1,
            attempt=0,
        )
        await no_violations(planner, planner_errors)

    for user, step, message_type, emitted in (
        ("renderer", "render", E.RenderWork, E.EVENT_TYPE_FRAME_RENDERED),
        ("depth", "depth", E.DepthWork, E.EVENT_TYPE_DEPTH_READY),
        ("assembler", "assemble", E.AssembleWork, E.EVENT_TYPE_JOB_ASSEMBLED),
    ):
        async with login(server, user) as (conn, errors):
            jobs = await JobStore.open(conn.js)
            state, _ = await jobs.get(job_id)
            assert state.status == types_pb2.JOB_STATUS_RENDERING
            work = await consume_one(conn.js, step, message_type)
            assert work.job_id == job_id
            await publish_event(conn.js, new_event(emitted, job_id, 0, service=user))
            await no_violations(conn, errors)
    async with login(server, "renderer") as (conn, errors):
        for kind in (
            E.EVENT_TYPE_FRAME_STARTED,
            E.EVENT_TYPE_FRAME_PROGRESS,
            E.EVENT_TYPE_FRAME_FAILED,
        ):
            await publish_event(conn.js, new_event(kind, job_id, 1, service="renderer"))
        await no_violations(conn, errors)
    async with login(server, "depth") as (conn, errors):
        await publish_event(conn.js, new_event(E.EVENT_TYPE_DEPTH_FAILED, job_id, 1))
        await no_violations(conn, errors)
    async with login(server, "assembler") as (conn, errors):
        await publish_event(conn.js, new_event(E.EVENT_TYPE_ASSEMBLY_FAILED, job_id))
        await no_violations(conn, errors)

    async with (
        login(server, "planner") as (planner, planner_errors),
        login(server, "submitter") as (submitter, submitter_errors),
    ):
        # WatchAnimation reads a job's events through an ordered consumer.
        events = await read_job_events(planner.js, job_id, timeout=30)
        assert [e.type for e in events][:2] == [
            E.EVENT_TYPE_JOB_CREATED,
            E.EVENT_TYPE_FRAME_RENDERED,
        ]
        async with await watch_job_events(
            planner.js, job_id, after_sequence=events[-1].sequence
        ) as watch:
            await publish_event(planner.js, new_event(E.EVENT_TYPE_JOB_COMPLETED, job_id))
            assert (await watch.next(timeout=30)).type == E.EVENT_TYPE_JOB_COMPLETED

        # Every request the planner answers on the bus (CreateAnimation, ApproveAnimation,
        # ForkAnimation, ExtendAnimation): the submitter asks, the planner answers in its
        # queue group.
        async def answer(msg) -> None:
            await msg.respond(b"created:" + msg.data)

        assert set(BUS_CALLS) == {REQUEST_CREATE, REQUEST_APPROVE, REQUEST_FORK, REQUEST_EXTEND}
        for subject in BUS_CALLS:
            sub = await planner.nc.subscribe(subject, queue=PLANNER_QUEUE, cb=answer)
            await planner.nc.flush()
            # The planner's interest can reach the submitter's requests a moment after its
            # flush on a busy machine (no responders then): ask again, briefly.
            retrying = tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception_type(nats.errors.NoRespondersError),
                wait=tenacity.wait_fixed(0.2),
                stop=tenacity.stop_after_delay(10),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    reply = await submitter.nc.request(subject, b"req", timeout=30)
            assert reply.data == b"created:req"
            await sub.unsubscribe()

        # Work that ran out of deliveries: the planner pulls the max-deliveries
        # advisories, reads the work message they point at and removes it.
        advisories = await planner.js.pull_subscribe_bind(
            durable=ADVISORIES_CONSUMER, stream=ADVISORIES_STREAM
        )
        with contextlib.suppress(nats.errors.TimeoutError):
            await advisories.fetch(1, timeout=1.0)
        await advisories.unsubscribe()
        stuck = await planner.js.publish(work_subject("render"), b"stuck work")
        assert (await planner.js.get_msg(WORK_STREAM, stuck.seq)).data == b"stuck work"
        await planner.js.delete_msg(WORK_STREAM, stuck.seq)

        # DeleteAnimation: the job's events, its state.
        await planner.js.purge_stream(EVENTS_STREAM, subject=job_events_filter(job_id))
        assert await read_job_events(planner.js, job_id) == []
        await jobs_delete(planner, job_id)
        await no_violations(planner, planner_errors)
        await no_violations(submitter, submitter_errors)

    assert "Violation" not in server_log(server)


async def jobs_delete(conn: Bus, job_id: str) -> None:
    jobs = await JobStore.open(conn.js)
    await jobs.delete(job_id)
    assert await jobs.list() == []


# (user, subject) pairs the server must refuse to publish.
REFUSED_PUBLISH = (
    ("renderer", "anim.work.render"),
    ("renderer", "anim.event.job.completed.0123"),
    ("renderer", "$KV.anim-jobs.0123"),
    ("renderer", "$JS.API.CONSUMER.INFO.ANIM_WORK.plan"),
    ("renderer", "$JS.API.CONSUMER.MSG.NEXT.ANIM_WORK.assemble"),
    ("depth", "anim.event.frame.rendered.0123"),
    ("depth", "$JS.API.DIRECT.GET.KV_anim-idem.$KV.anim-idem.x"),
    ("assembler", "anim.event.job.completed.0123"),
    ("assembler", "$JS.API.STREAM.CREATE.ANIM_WORK"),
    ("planner", "$JS.API.STREAM.DELETE.ANIM_WORK"),
    ("planner", "$JS.API.CONSUMER.DELETE.ANIM_WORK.render"),
    ("planner", "$JS.API.STREAM.PURGE.ANIM_WORK"),
    ("submitter", "anim.work.plan"),
    ("submitter", "anim.event.job.created.0123"),
)


@pytest.mark.parametrize(("user", "subject"), REFUSED_PUBLISH)
async def test_publish_outside_a_users_subjects_is_refused(
    secured_nats: NatsServer, user: str, subject: str
) -> None:
    async with login(secured_nats, user) as (conn, errors):
        await conn.nc.publish(subject, b"x")
        message = await errors.wait_for("permissions violation", subject)
        assert "publish" in message.lower()


@pytest.mark.parametrize(
    ("user", "subject", "queue"),
    (
        ("planner", "anim.request.create", ""),  # only in the planners' queue group
        ("submitter", "anim.request.create", "planner"),
        ("planner", "anim.request.fork", ""),
        ("planner", "anim.request.extend", ""),
        ("renderer", "anim.event.>", ""),
        ("assembler", "anim.work.>", ""),
    ),
)
async def test_subscription_outside_a_users_subjects_is_refused(
    secured_nats: NatsServer, user: str, subject: str, queue: str
) -> None:
    async with login(secured_nats, user) as (conn, errors):
        await conn.nc.subscribe(subject, queue=queue)
        message = await errors.wait_for("permissions violation", "subscription", subject)
        assert subject in message


async def test_a_jetstream_publish_outside_the_subjects_gets_no_ack(
    secured_nats: NatsServer,
) -> None:
    async with login(secured_nats, "bus-init") as (conn, _):
        await init_bus(conn.js, ack_wait_s=3.0, max_deliver=3)
    async with login(secured_nats, "renderer") as (conn, errors):
        with pytest.raises(nats.errors.TimeoutError):
            await conn.js.publish(work_subject("render"), b"x", stream=WORK_STREAM, timeout=1.0)
        await errors.wait_for("permissions violation", "anim.work.render")


@pytest.mark.parametrize("password", [None, "wrong-password"])
async def test_anonymous_and_wrong_password_are_refused(
    secured_nats: NatsServer, password: str | None
) -> None:
    errors = Errors()
    options = {"user": "planner", "password": password} if password else {}
    with pytest.raises(Exception) as info:
        await nats.connect(
            secured_nats.url,
            error_cb=errors.record,
            allow_reconnect=False,
            connect_timeout=5,
            max_reconnect_attempts=0,
            **options,
        )
    assert "authorization violation" in (str(info.value) + " ".join(errors.messages)).lower()
