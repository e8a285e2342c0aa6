"""The compose file's SeaweedFS, for real: `weed mini` with the flags of
docker-compose.yml and the identities of its `seaweedfs-s3` config (filled in
from a .env), on loopback ports. The bucket exists at start, the services'
identity can do everything the store does in it, and nothing outside it."""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio
from minio.error import S3Error
from support.deploy import compose, filled_env, k8s_secrets_module

from ghibli_anim.contracts import config, keys
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.runtime.processes import LOOPBACK
from ghibli_anim.runtime.store.base import StoreAuthError
from ghibli_anim.runtime.store.s3 import S3Store
from ghibli_anim.services.trainer.publish import lora_readme_key

pytestmark = pytest.mark.timeout(120)


class ComposeSeaweed(SeaweedS3):
    """SeaweedS3 running the compose service's command and identities."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        super().__init__(data_dir, env["S3_ROOT_USER"], env["S3_ROOT_PASSWORD"])
        service = compose(env)["services"]["seaweedfs"]
        self.compose_args = service["command"]
        self.compose_identities = json.loads(compose(env)["configs"]["seaweedfs-s3"]["content"])

    def identities(self) -> dict[str, object]:
        return self.compose_identities

    def _command(self) -> list[str]:
        assert self.compose_args[0] == "mini"
        # The compose flags first; then what must differ on a shared test machine
        # (folders and loopback ports): Go's flag parser keeps the last value.
        own = super()._command()
        return [own[0], own[1], "mini", *self.compose_args[1:], *own[3:]]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return filled_env()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[SeaweedS3]:
    weed = ComposeSeaweed(tmp_path_factory.mktemp("weed"), env)
    weed.start()
    try:
        # `-bucket` creates the bucket right after the S3 port opens, not before.
        deadline = time.monotonic() + 30
        while not weed.client().bucket_exists(env["ANIM_S3_BUCKET"]):
            assert time.monotonic() < deadline, (
                f"no bucket after 30 s:\n{weed.log_path.read_text()}"
            )
            time.sleep(0.1)
        yield weed
    finally:
        weed.stop()


def services_store(server: SeaweedS3, env: dict[str, str], bucket: str | None = None) -> S3Store:
    return S3Store(
        server.endpoint,
        env["ANIM_S3_ACCESS_KEY"],
        env["ANIM_S3_SECRET_KEY"],
        bucket or env["ANIM_S3_BUCKET"],
        region=server.region,
        retry_budget_s=0,
    )


def test_the_server_makes_the_services_bucket(server: SeaweedS3, env: dict[str, str]) -> None:
    default = next(v.default for v in config.VARS if v.name == "ANIM_S3_BUCKET")
    assert env["ANIM_S3_BUCKET"] == default
    assert default in [b.name for b in server.client().list_buckets()]


def test_services_can_do_what_the_store_does(server: SeaweedS3, env: dict[str, str]) -> None:
    store = services_store(server, env)
    store.ensure_bucket()
    prefix = "jobs/0123456789abcdef0123456789abcdef/"
    store.put(prefix + "frames/0000.png", b"frame")
    assert store.get(prefix + "frames/0000.png") == b"frame"
    assert store.stat(prefix + "frames/0000.png").size == 5
    assert store.list(prefix) == [prefix + "frames/0000.png"]
    with urllib.request.urlopen(store.presign_get(prefix + "frames/0000.png"), timeout=10) as r:
        assert r.read() == b"frame"
    put = urllib.request.Request(store.presign_put(prefix + "upload.bin"), b"up", method="PUT")
    with urllib.request.urlopen(put, timeout=10) as r:
        assert r.status == 200
    store.delete(prefix + "upload.bin")
    assert store.delete_prefix(prefix) == 1
    assert store.list(prefix) == []


def test_services_are_limited_to_the_bucket(server: SeaweedS3, env: dict[str, str]) -> None:
    admin = server.client()
    admin.make_bucket("private-notes")
    admin.put_object("private-notes", "a.txt", io.BytesIO(b"x"), 1)
    services = Minio(
        f"{LOOPBACK}:{server.port}",
        access_key=env["ANIM_S3_ACCESS_KEY"],
        secret_key=env["ANIM_S3_SECRET_KEY"],
        secure=False,
        region=server.region,
    )
    for attempt in (
        lambda: services.make_bucket("services-may-not"),
        lambda: services.get_object("private-notes", "a.txt").read(),
        lambda: list(services.list_objects("private-notes")),
        lambda: services.put_object("private-notes", "b.txt", io.BytesIO(b"y"), 1),
    ):
        with pytest.raises(S3Error) as info:
            attempt()
        assert info.value.code == "AccessDenied"


def test_a_wrong_secret_is_refused(server: SeaweedS3, env: dict[str, str]) -> None:
    wrong = {**env, "ANIM_S3_SECRET_KEY": env["ANIM_S3_SECRET_KEY"] + "x"}
    with pytest.raises(StoreAuthError):
        services_store(server, wrong).get("jobs/0123456789abcdef0123456789abcdef/plan.json")


# --------------------------------------------------------------------------
# Kubernetes: one identity per service (deploy/s3/services.json via deploy/k8s/secrets.py)
# --------------------------------------------------------------------------

JOB = "0123456789abcdef0123456789abcdef"
UPLOAD = "fedcba9876543210fedcba9876543210"
# The store key every service's health check stats (ghibli_anim/runtime/service.py).
PROBE = "jobs/00000000000000000000000000000000/plan.json"


class ServicesSeaweed(SeaweedS3):
    """SeaweedS3 with the identities the Kubernetes Secret holds."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        super().__init__(data_dir, env["S3_ROOT_USER"], env["S3_ROOT_PASSWORD"])
        self.k8s_identities = k8s_secrets_module().seaweedfs_identities(env)

    def identities(self) -> dict[str, object]:
        return self.k8s_identities


@pytest.fixture(scope="module")
def k8s_server(
    tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> Iterator[SeaweedS3]:
    weed = ServicesSeaweed(tmp_path_factory.mktemp("weed-k8s"), env)
    weed.start()
    try:
        weed.client().make_bucket(env["ANIM_S3_BUCKET"])
        yield weed
    finally:
        weed.stop()


def service_store(server: SeaweedS3, env: dict[str, str], service: str) -> S3Store:
    module = k8s_secrets_module()
    return S3Store(
        server.endpoint,
        module.access_key(service),
        module.secret_key(env, service),
        env["ANIM_S3_BUCKET"],
        region=server.region,
        retry_budget_s=0,
    )


def fetch(url: str, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data, method="PUT" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.read()


def denied(call) -> None:
    with pytest.raises(StoreAuthError):
        call()


def test_each_service_can_do_what_its_code_does_and_nothing_else(
    k8s_server: SeaweedS3, env: dict[str, str]
) -> None:
    """The chain of one job, each step under its own service's identity, in order: the
    calls each service's code makes on its keys pass, and writes to another service's
    keys, listings and deletions they never make are refused."""
    planner, renderer, depth, assembler, trainer = (
        service_store(k8s_server, env, s)
        for s in ("planner", "renderer", "depth", "assembler", "trainer")
    )
    # Every service's health check (the trainer runs no server).
    for store in (planner, renderer, depth, assembler):
        assert store.stat(PROBE) is None

    # Trainer: publishes a LoRA and its card.
    trainer.put(keys.lora_key("ghibli-style"), b"weights")
    trainer.put(lora_readme_key("ghibli-style"), b"card")
    denied(lambda: trainer.get(PROBE))
    denied(lambda: trainer.put(keys.plan_key(JOB), b"x"))

    # Planner: an upload through a URL it signs, the job's init image and plan.
    fetch(planner.presign_put(keys.upload_key(UPLOAD)), b"upload")
    assert planner.get(keys.upload_key(UPLOAD)) == b"upload"
    assert planner.stat(keys.upload_key(UPLOAD)).size == 6
    planner.put(keys.init_key(JOB), b"init")
    planner.put(keys.plan_key(JOB), b"{}")
    planner.put(keys.plan_attempts_key(JOB), b"[]")
    assert planner.stat(keys.lora_key("ghibli-style")).size == 7
    denied(lambda: planner.put(keys.lora_key("ghibli-style"), b"x"))

    # Renderer: reads the init image, the LoRA and the previous frame; writes frames and
    # the depth maps it makes with them.
    assert renderer.get(keys.init_key(JOB)) == b"init"
    assert renderer.get(keys.lora_key("ghibli-style")) == b"weights"
    for i in (0, 1):
        renderer.put(keys.frame_key(JOB, i), b"frame%d" % i)
        renderer.put(keys.frame_record_key(JOB, i), b"{}")
    renderer.put(keys.depth_key(JOB, 1), b"depth1")
    assert renderer.get(keys.frame_key(JOB, 0)) == b"frame0"
    for key in (keys.plan_key(JOB), keys.output_key(JOB, "gif"), keys.manifest_key(JOB)):
        denied(lambda key=key: renderer.put(key, b"x"))
    denied(lambda: renderer.put(keys.upload_key(UPLOAD), b"x"))
    denied(lambda: renderer.list(keys.job_prefix(JOB)))
    # Deleting is writing: allowed on its own frames only.
    denied(lambda: renderer.delete(keys.plan_key(JOB)))
    assert planner.get(keys.plan_key(JOB)) == b"{}"

    # Depth: reads a frame, writes its depth map (EstimateDepth, or a renderer that made none).
    assert depth.get(keys.frame_key(JOB, 0)) == b"frame0"
    depth.put(keys.depth_key(JOB, 0), b"depth")
    denied(lambda: depth.put(keys.frame_key(JOB, 1), b"x"))
    denied(lambda: depth.put(keys.manifest_key(JOB), b"x"))

    # Assembler: reads frames, records and depth maps; writes outputs and the manifest.
    assert assembler.get(keys.frame_record_key(JOB, 1)) == b"{}"
    assert assembler.get(keys.depth_key(JOB, 0)) == b"depth"
    for fmt in keys.OUTPUT_NAMES:
        assembler.put(keys.output_key(JOB, fmt), b"out")
    assembler.put(keys.manifest_key(JOB), b"{}")
    denied(lambda: assembler.put(keys.frame_key(JOB, 0), b"x"))
    denied(lambda: assembler.put(keys.plan_key(JOB), b"x"))
    denied(lambda: assembler.get(keys.upload_key(UPLOAD)))

    # Planner: the job's files (GetAnimation), downloads, then DeleteAnimation.
    listed = planner.list(keys.job_prefix(JOB))
    assert keys.output_key(JOB, "mp4") in listed and keys.depth_key(JOB, 0) in listed
    assert fetch(planner.presign_get(keys.output_key(JOB, "mp4"))) == b"out"
    assert planner.delete_prefix(keys.job_prefix(JOB)) == len(listed)
    planner.delete(keys.upload_key(UPLOAD))
    assert planner.list(keys.job_prefix(JOB)) == []


def test_a_service_cannot_use_another_ones_secret(
    k8s_server: SeaweedS3, env: dict[str, str]
) -> None:
    module = k8s_secrets_module()
    impostor = S3Store(
        k8s_server.endpoint,
        module.access_key("planner"),
        module.secret_key(env, "renderer"),
        env["ANIM_S3_BUCKET"],
        region=k8s_server.region,
        retry_budget_s=0,
    )
    with pytest.raises(StoreAuthError):
        impostor.stat(PROBE)
