"""runtime/auth.py: gRPC access with bearer tokens, per-client caps, TLS and mutual TLS on a
real planner.

The planner runs in this process (``run_service``) against a real nats-server
and the local store; calls go through real gRPC channels.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.planner import in_process_planner

from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.runtime.auth import AuthConfigError, Tokens
from ghibli_anim.runtime.client import AnimationClient

ALICE = "alice-token-0123456789abcdef"

BOB = "bob-token-0123456789abcdef00"

planner = in_process_planner


def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# clients\nalice:{ALICE}\nbob:{BOB}\n")
    return path


def request(**fields):
    return animation_pb2.CreateAnimationRequest(idea="a moth at a lantern", frames=2, **fields)


async def test_tokens_are_required_and_scope_idempotency(nats_server, tmp_path, tiny_cache_dir):
    env = {"ANIM_AUTH_TOKENS_FILE": str(tokens_file(tmp_path)), "ANIM_MAX_JOBS_PER_CLIENT": "2"}
    async with planner(nats_server, tmp_path, tiny_cache_dir, **env) as target:
        for token, why in (("", "required"), ("x" * 30, "not valid")):
            async with AnimationClient(target, token=token) as client:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.create(request())
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert why in info.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    [e async for e in client.watch("a" * 32)]
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health stays open for probes.
        async with grpc.aio.insecure_channel(target) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        async with (
            AnimationClient(target, token=ALICE) as alice,
            AnimationClient(target, token=BOB) as bob,
        ):
            a1 = await alice.create(request(idempotency_key="k", client_id="bob"))
            b1 = await bob.create(request(idempotency_key="k"))
            a2 = await alice.create(request(idempotency_key="k"))
            assert a1.job_id != b1.job_id  # the key is per client, whatever client_id says
            assert a2.existing and a2.job_id == a1.job_id
            await alice.create(request())
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await alice.create(request())
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "alice: 2 unfinished jobs, the limit is 2" in info.value.details()
            await bob.create(request())  # bob has his own allowance


def test_tokens_file_errors_never_show_the_token(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("alice:short\n")
    with pytest.raises(AuthConfigError, match="line 1") as info:
        Tokens.load(path)
    assert "short" not in str(info.value)
    path.write_text("# nothing\n")
    with pytest.raises(AuthConfigError, match="holds no token"):
        Tokens.load(path)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    for name, cn in (("server", "localhost"), ("client", "alice")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
            cwd=d,
        )
    return d


async def test_mutual_tls(nats_server, tmp_path, tiny_cache_dir, pki):
    env = {
        "ANIM_TLS_CERT": str(pki / "server.pem"),
        "ANIM_TLS_KEY": str(pki / "server.key"),
        "ANIM_TLS_CLIENT_CA": str(pki / "ca.pem"),
    }
    async with planner(nats_server, tmp_path, tiny_cache_dir, **env) as target:
        async with AnimationClient(
            target,
            tls_ca=str(pki / "ca.pem"),
            tls_cert=str(pki / "client.pem"),
            tls_key=str(pki / "client.key"),
        ) as client:
            created = await client.create(request())
            assert len(created.job_id) == 32
        async with AnimationClient(target, tls_ca=str(pki / "ca.pem"), timeout_s=5) as anon:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await anon.create(request())
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # no client certificate
        async with AnimationClient(target, timeout_s=5) as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await plain.create(request())
