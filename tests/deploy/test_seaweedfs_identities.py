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
from support.deploy import compose, filled_env

from ghibli_anim.contracts import config
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.runtime.processes import LOOPBACK
from ghibli_anim.runtime.store.base import StoreAuthError
from ghibli_anim.runtime.store.s3 import S3Store

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
