"""No secret in logs, errors, manifests, events or stored files.

A stack whose S3 keys, NATS passwords (deploy/nats/nats.conf with auth.conf: each
service logs in as its own user), gRPC bearer token and LLM keys are distinctive
strings runs one job to completion and one that fails, is sent a refused request
and a call with a wrong token; the web page shows the job. Then everything the run
wrote is searched for every secret: the service logs (the web page's included),
every store object of both jobs (manifest and plan_attempts.json included), every
event's fields and the jobs' KV states; and the answers clients got (errors, the
page's JSON and event stream) for every secret but the S3 access key id, which
every presigned URL names by design (SigV4's X-Amz-Credential; the secret key
signs the URL and is never in it).
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest

from ghibli_anim.contracts import config, keys
from ghibli_anim.contracts.config import SERVICES
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.devtools.stack import LocalStack, SecuredNats
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.jobstore import JobStore
from ghibli_anim.runtime.store.s3 import S3Store

pytestmark = pytest.mark.timeout(300)

NATS_USERS = ("bus-init", "planner", "renderer", "depth", "assembler", "submitter")

S3_ACCESS = "AKGHIBLI7F3A9C1E5B2D"
S3_SECRET = "s3secret-Zq8vN2kW4xR7tY1u-ghibli"
TOKEN = "grpctoken-Hm5Jp9Ls3Dq6Wf2Xc8Vb"
WRONG_TOKEN = "wrongtoken-Ty4Gk7Nr1Ze9Ua3Qs6Po"
HF_SECRET = "hf_SECRETghibliR8mK2pL5tW9qZ3xN"
PLANNER_KEY = "llmkey-Bv6Nc2Mx8Lz4Kq1Jw7Hd"
NATS_PASSWORDS = {user: f"natspw-{user}-Xe3Rt6Yu9Io2Pa5Sd" for user in NATS_USERS}
SECRETS = {
    "ANIM_S3_SECRET_KEY": S3_SECRET,
    "ANIM_S3_ACCESS_KEY": S3_ACCESS,
    "ANIM_CLIENT_TOKEN / tokens file": TOKEN,
    "a wrong token a client sent": WRONG_TOKEN,
    "HF_TOKEN": HF_SECRET,
    "ANIM_PLANNER_API_KEY": PLANNER_KEY,
    **{f"NATS password of {user}": pw for user, pw in NATS_PASSWORDS.items()},
}


def nats_login(user: str) -> dict[str, str]:
    return {"ANIM_NATS_USER": user, "ANIM_NATS_PASSWORD": NATS_PASSWORDS[user]}


@pytest.fixture
def secret_stack(tmp_path: Path, tiny_cache_dir: Path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"tester:{TOKEN}\n")
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_ACK_WAIT_S": "10",
        "ANIM_DRAIN_S": "5",
        "ANIM_S3_ACCESS_KEY": S3_ACCESS,
        "ANIM_S3_SECRET_KEY": S3_SECRET,
        "ANIM_AUTH_TOKENS_FILE": str(tokens),
        "ANIM_PLANNER_BACKEND": "offline",
        "ANIM_PLANNER_API_KEY": PLANNER_KEY,
        "HF_TOKEN": HF_SECRET,
        "ANIM_LOG_LEVEL": "DEBUG",  # the most a log can say
        **nats_login("bus-init"),  # `bus init` in start(); each service logs in as itself
    }
    stack = LocalStack(tmp_path / "stack", services=(), env=env)
    stack.nats = SecuredNats(tmp_path / "stack" / "nats", NATS_PASSWORDS)
    stack.s3 = SeaweedS3(tmp_path / "stack" / "s3", S3_ACCESS, S3_SECRET)
    try:
        stack.start()
        for name in SERVICES:
            stack.add(name, start=False, env=nats_login(name))
        # The page reaches the planner with the client token (and holds no other secret).
        stack.add("web", start=False, env={"ANIM_CLIENT_TOKEN": TOKEN})
        for procs in stack.processes.values():
            for proc in procs:
                proc.start(timeout=120)
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()


def request(**fields) -> animation_pb2.CreateAnimationRequest:
    base = {"idea": "a paper lantern drifting over a night market", "frames": 3, "seed": 11}
    return animation_pb2.CreateAnimationRequest(**{**base, **fields})


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return response.read().decode()


def leaks(text: str, *, answer: bool = False) -> list[str]:
    return [
        name
        for name, secret in SECRETS.items()
        if secret in text and not (answer and secret == S3_ACCESS)
    ]


def test_no_secret_in_anything_a_run_writes(secret_stack: LocalStack):
    stack = secret_stack

    async def main():
        answers: list[str] = []  # what clients got back: error messages, pages
        async with AnimationClient(stack.planner_target, token=TOKEN, timeout_s=30) as client:
            good = await client.create(request(depth=True, formats=["gif"]))
            # Fails at render: its LoRA is not in the store (a store error's text).
            bad = await client.create(request(frames=2, loras=["store://loras/missing-style"]))
            events = {}
            for job in (good, bad):
                events[job.job_id] = [e async for e in client.watch(job.job_id, timeout_s=180)]
            views = [await client.get(job.job_id) for job in (good, bad)]
            # The page's JSON and event stream, served through its own planner client.
            for path in ("/api/jobs", f"/api/jobs/{good.job_id}", f"/jobs/{good.job_id}/events"):
                page = await asyncio.to_thread(fetch, stack.web_url + path)
                answers.append(page)
                assert good.job_id in page, page
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.create(request(frames=0))
            answers.append(refused.value.details() or "")
        async with AnimationClient(stack.planner_target, token=WRONG_TOKEN) as intruder:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await intruder.get(good.job_id)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            answers.append(denied.value.details() or "")
        settings = config.load("planner", {**stack.env(), **nats_login("planner")})
        conn = await connect(settings, "test", first_connect_timeout_s=10)
        try:
            jobs = await JobStore.open(conn.js)
            states = [(await jobs.get(job.job_id))[0] for job in (good, bad)]
        finally:
            await conn.close()
        return events, views, states, answers

    events, views, states, answers = asyncio.run(main())
    good, bad = views
    assert good.status == types_pb2.JOB_STATUS_COMPLETED, (good.error, stack.logs())
    assert bad.status == types_pb2.JOB_STATUS_FAILED, stack.logs()
    assert "missing-style" in bad.error

    store = S3Store.from_settings(config.load("client", stack.env()))
    written: dict[str, str] = {}
    for state in states:
        job_id = state.job_id
        for key in store.list(keys.job_prefix(job_id)):
            written[f"store {key}"] = store.get(key).decode("latin-1")
        written[f"KV state of {job_id}"] = str(state)
        for event in events[job_id]:
            written[f"event {event.sequence} of {job_id}"] = str(event)
    good_id = states[0].job_id
    assert f"store {keys.manifest_key(good_id)}" in written
    assert f"store {keys.plan_attempts_key(good_id)}" in written
    for procs in stack.processes.values():
        for proc in procs:
            written[f"log {proc.log_path.name}"] = proc.log_path.read_text(errors="replace")
    found = {where: leaks(text) for where, text in written.items() if leaks(text)}
    found |= {
        f"answer {i}": leaks(text, answer=True)
        for i, text in enumerate([*answers, bad.error])
        if leaks(text, answer=True)
    }
    assert found == {}, found
    # The search itself works: the secrets are there to find where they belong.
    assert leaks(Path(stack.service("planner").env["ANIM_AUTH_TOKENS_FILE"]).read_text())
