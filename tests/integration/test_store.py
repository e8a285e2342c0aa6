"""The store against a real S3 server (SeaweedFS) and a local folder."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ghibli_anim.contracts import config, keys
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.runtime.store.base import (
    NotFound,
    ObjectInfo,
    Store,
    StoreAuthError,
    StoreError,
    StoreUnavailable,
)
from ghibli_anim.runtime.store.local import LocalStore
from ghibli_anim.runtime.store.open import open_store
from ghibli_anim.runtime.store.s3 import S3Store

JOB = "0123456789abcdef0123456789abcdef"
OTHER_JOB = "fedcba9876543210fedcba9876543210"
UPLOAD = "aaaaaaaabbbbbbbbccccccccdddddddd"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(f"{request.param}_store")


def _http(url: str, method: str = "GET", data: bytes | None = None, **headers: str) -> bytes:
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


# -- both stores --------------------------------------------------------------


def test_put_get_stat(store: Store) -> None:
    key = keys.frame_key(JOB, 0)
    info = store.put(key, PNG, "image/png")
    digest = hashlib.sha256(PNG).hexdigest()
    assert info == ObjectInfo(key, len(PNG), digest, "image/png")
    assert store.get(key) == PNG
    assert store.stat(key) == ObjectInfo(key, len(PNG), digest, "image/png")
    assert store.exists(key)


def test_put_is_idempotent_and_replaces(store: Store) -> None:
    key = keys.plan_key(JOB)
    store.put(key, b'{"v": 1}', "application/json")
    store.put(key, b'{"v": 1}', "application/json")
    assert store.list(keys.job_prefix(JOB)) == [key]
    assert store.get(key) == b'{"v": 1}'
    store.put(key, b'{"v": 2}', "application/json")
    assert store.get(key) == b'{"v": 2}'
    stat = store.stat(key)
    assert stat is not None and stat.sha256 == hashlib.sha256(b'{"v": 2}').hexdigest()


def test_empty_object(store: Store) -> None:
    key = keys.manifest_key(JOB)
    store.put(key, b"")
    assert store.get(key) == b""
    stat = store.stat(key)
    assert stat is not None and stat.size == 0


def test_missing_key(store: Store) -> None:
    key = keys.frame_key(JOB, 7)
    with pytest.raises(NotFound) as info:
        store.get(key)
    assert isinstance(info.value, KeyError) and isinstance(info.value, LookupError)
    assert info.value.key == key and key in str(info.value)
    assert store.stat(key) is None
    assert not store.exists(key)
    store.delete(key)  # deleting nothing is fine


def test_list_is_sorted_and_scoped(store: Store) -> None:
    for i in (2, 0, 1):
        store.put(keys.frame_key(JOB, i), b"f%d" % i)
    store.put(keys.plan_key(JOB), b"{}")
    store.put(keys.frame_key(OTHER_JOB, 0), b"other")
    store.put(keys.upload_key(UPLOAD), b"up")
    store.put(keys.lora_key("ghibli"), b"lora")
    frames = [keys.frame_key(JOB, i) for i in range(3)]
    assert store.list(keys.job_prefix(JOB)) == [*frames, keys.plan_key(JOB)]
    assert store.list(f"jobs/{JOB}/frames/") == frames
    assert store.list(f"jobs/{JOB}/fr") == frames
    assert store.list(f"jobs/{JOB}/depth/") == []
    assert store.list("uploads/") == [keys.upload_key(UPLOAD)]
    assert store.list("loras/") == [keys.lora_key("ghibli")]
    assert store.list("loras/ghibli/") == [keys.lora_key("ghibli")]


def test_delete_and_delete_prefix(store: Store) -> None:
    for i in range(3):
        store.put(keys.frame_key(JOB, i), b"x")
        store.put(keys.depth_key(JOB, i), b"d")
    store.put(keys.plan_key(JOB), b"{}")
    store.put(keys.plan_key(OTHER_JOB), b"{}")

    store.delete(keys.plan_key(JOB))
    assert not store.exists(keys.plan_key(JOB))
    assert store.delete_prefix(f"jobs/{JOB}/depth/") == 3
    assert store.list(keys.job_prefix(JOB)) == [keys.frame_key(JOB, i) for i in range(3)]
    assert store.delete_prefix(keys.job_prefix(JOB)) == 3
    assert store.list(keys.job_prefix(JOB)) == []
    assert store.delete_prefix(keys.job_prefix(JOB)) == 0
    assert store.get(keys.plan_key(OTHER_JOB)) == b"{}"


BAD_KEYS = [
    "",
    "../etc/passwd",
    "/etc/passwd",
    f"/jobs/{JOB}/plan.json",
    "jobs/NOTANID/plan.json",
    f"jobs/{JOB.upper()}/plan.json",
    f"jobs/{JOB}/../{OTHER_JOB}/plan.json",
    f"jobs/{JOB}/frames/../../x.png",
    f"jobs/{JOB}/..",
    "uploads/../../x",
    "loras/../plan.json",
    "other/thing.png",
    f"jobs/{JOB}/plan.json\n",
]

BAD_PREFIXES = [
    "",
    "/",
    "jobs/",
    "jobs/bad/",
    f"jobs/{JOB}",  # would also match jobs/{JOB}xyz...
    f"jobs/{JOB}/../",
    f"/jobs/{JOB}/",
    "uploads/..",
    "loras/../",
    "other/",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(store: Store, key: str) -> None:
    calls = [
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.stat(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.presign_get(key),
        lambda: store.presign_put(key),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="key"):
            call()


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_bad_prefixes_are_refused(store: Store, prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        store.list(prefix)
    with pytest.raises(ValueError, match="prefix"):
        store.delete_prefix(prefix)


def test_presign_ttl_is_checked(store: Store) -> None:
    key = keys.plan_key(JOB)
    for ttl in (0, -5, 8 * 24 * 3600):
        with pytest.raises(ValueError, match="ttl_s"):
            store.presign_get(key, ttl_s=ttl)
        with pytest.raises(ValueError, match="ttl_s"):
            store.presign_put(key, ttl_s=ttl)


# -- local store ----------------------------------------------------------------


def test_local_layout(local_store: LocalStore) -> None:
    root = local_store.root
    local_store.put(keys.frame_key(JOB, 3), b"f")
    local_store.put(keys.upload_key(UPLOAD), b"u")
    local_store.put(keys.lora_key("ghibli"), b"l")
    assert (root / JOB / "frames" / "0003.png").read_bytes() == b"f"
    assert (root / "_uploads" / UPLOAD).read_bytes() == b"u"
    assert (root / "_loras" / "ghibli" / keys.LORA_WEIGHT_NAME).read_bytes() == b"l"


def test_local_leaves_no_temp_files(local_store: LocalStore, monkeypatch) -> None:
    key = keys.frame_key(JOB, 0)
    for i in range(20):
        local_store.put(key, b"frame %d" % i)
    local_store.put(keys.plan_key(JOB), b"{}")

    # A write that fails at the rename keeps the old object and no temp file.
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        local_store.put(key, b"half")
    monkeypatch.undo()

    assert local_store.get(key) == b"frame 19"
    files = sorted(p.relative_to(local_store.root).as_posix() for p in local_store.root.rglob("*"))
    assert files == [JOB, f"{JOB}/frames", f"{JOB}/frames/0000.png", f"{JOB}/plan.json"]


def test_local_list_ignores_foreign_files(local_store: LocalStore) -> None:
    local_store.put(keys.frame_key(JOB, 0), b"f")
    folder = local_store.root / JOB / "frames"
    (folder / ".tmp-abc123").write_bytes(b"partial")
    (folder / "notes.txt.bak").write_bytes(b"?")
    assert local_store.list(keys.job_prefix(JOB)) == [keys.frame_key(JOB, 0)]


def test_local_delete_prefix_removes_empty_folders(local_store: LocalStore) -> None:
    local_store.put(keys.frame_key(JOB, 0), b"f")
    local_store.put(keys.upload_key(UPLOAD), b"u")
    assert local_store.delete_prefix(keys.job_prefix(JOB)) == 1
    assert not (local_store.root / JOB).exists()
    assert local_store.root.is_dir()
    assert local_store.delete_prefix("uploads/") == 1
    assert (local_store.root / "_uploads").is_dir()


def test_local_presign_is_a_file_url(local_store: LocalStore) -> None:
    key = keys.upload_key(UPLOAD)
    put_url = local_store.presign_put(key)
    assert put_url.startswith("file://")
    Path(urlsplit(put_url).path).write_bytes(b"uploaded")
    get_url = local_store.presign_get(key, ttl_s=60)
    assert get_url == put_url
    assert _http(get_url) == b"uploaded"


# -- S3 -----------------------------------------------------------------------------


def test_s3_presigned_get_over_plain_http(s3_store: S3Store) -> None:
    key = keys.output_key(JOB, "gif")
    s3_store.put(key, PNG, "image/gif")
    url = s3_store.presign_get(key)
    assert urlsplit(url).netloc == s3_store.endpoint
    assert _http(url) == PNG
    # Anonymous access without the signature is refused.
    with pytest.raises(urllib.error.HTTPError) as info:
        _http(url.split("?", 1)[0])
    assert info.value.code == 403
    # So is a tampered signature.
    with pytest.raises(urllib.error.HTTPError) as info:
        _http(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
    assert info.value.code == 403


def test_s3_presigned_put_over_plain_http(s3_store: S3Store) -> None:
    key = keys.upload_key(UPLOAD)
    _http(s3_store.presign_put(key, ttl_s=60), method="PUT", data=b"client bytes")
    assert s3_store.get(key) == b"client bytes"
    stat = s3_store.stat(key)
    assert stat is not None and stat.size == len(b"client bytes")
    assert stat.sha256 is None  # not written by S3Store: no digest in metadata


def test_s3_expired_presigned_url_is_refused(s3_store: S3Store) -> None:
    key = keys.plan_key(JOB)
    s3_store.put(key, b"{}")
    url = s3_store.presign_get(key, ttl_s=1)
    put_url = s3_store.presign_put(keys.upload_key(UPLOAD), ttl_s=1)
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as info:
        _http(url)
    assert info.value.code == 403
    with pytest.raises(urllib.error.HTTPError) as info:
        _http(put_url, method="PUT", data=b"late")
    assert info.value.code == 403
    assert not s3_store.exists(keys.upload_key(UPLOAD))


def test_s3_presign_for_public_endpoint(make_s3_store, seaweed: SeaweedS3) -> None:
    store = make_s3_store(public_endpoint="https://cdn.example.test:9443")
    key = keys.output_key(JOB, "mp4")
    store.put(key, b"movie", "video/mp4")
    url = store.presign_get(key, ttl_s=120)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "cdn.example.test:9443")
    assert parts.path == f"/{store.bucket}/{key}"
    # Signed for the public host: the server accepts it when that Host arrives
    # (as through a proxy), and refuses it for its own host name.
    internal = f"http://{seaweed.endpoint}{parts.path}?{parts.query}"
    assert _http(internal, Host="cdn.example.test:9443") == b"movie"
    with pytest.raises(urllib.error.HTTPError) as info:
        _http(internal)
    assert info.value.code == 403


def test_s3_bad_public_endpoint_names_the_variable(seaweed: SeaweedS3) -> None:
    for bad in ("ftp://host:1", "http://host:1/path", "https://"):
        with pytest.raises(ValueError, match="ANIM_S3_PUBLIC_ENDPOINT"):
            S3Store(seaweed.endpoint, "a", "b", "bucket", public_endpoint=bad)


def test_s3_wrong_secret_is_refused_at_once(make_s3_store, s3_store: S3Store) -> None:
    s3_store.put(keys.plan_key(JOB), b"{}")
    secret = "wrong-secret-5f2b9c7e1d"
    bad = make_s3_store(bucket=s3_store.bucket, create=False, secret_key=secret)
    for call in (
        lambda: bad.put(keys.plan_key(JOB), b"x"),
        lambda: bad.get(keys.plan_key(JOB)),
        lambda: bad.list(keys.job_prefix(JOB)),
    ):
        started = time.monotonic()
        with pytest.raises(StoreAuthError) as info:
            call()
        assert time.monotonic() - started < 2.0  # no retries
        assert "SignatureDoesNotMatch" in str(info.value)
        assert secret not in str(info.value) and secret not in repr(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__
    assert s3_store.get(keys.plan_key(JOB)) == b"{}"


def test_s3_unknown_access_key_is_refused(make_s3_store, s3_store: S3Store) -> None:
    bad = make_s3_store(
        bucket=s3_store.bucket, create=False, access_key="nobody-key-31", secret_key="nobody-s"
    )
    with pytest.raises(StoreAuthError) as info:
        bad.stat(keys.plan_key(JOB))
    assert "nobody-key-31" not in str(info.value) and "nobody-s" not in str(info.value)


def test_s3_read_only_identity(make_s3_store, s3_store: S3Store, seaweed: SeaweedS3) -> None:
    key = keys.plan_key(JOB)
    s3_store.put(key, b"{}")
    reader = make_s3_store(
        bucket=s3_store.bucket,
        create=False,
        access_key=seaweed.read_only_key,
        secret_key=seaweed.read_only_secret,
    )
    assert reader.get(key) == b"{}"
    assert reader.list(keys.job_prefix(JOB)) == [key]
    with pytest.raises(StoreAuthError, match="AccessDenied"):
        reader.put(key, b"overwrite")
    assert s3_store.get(key) == b"{}"


def test_s3_missing_bucket_is_a_clear_error(make_s3_store) -> None:
    store = make_s3_store(bucket="t-never-created-bucket", create=False)
    with pytest.raises(StoreError, match="t-never-created-bucket"):
        store.put(keys.plan_key(JOB), b"{}")
    store.ensure_bucket()
    store.ensure_bucket()  # twice is fine
    store.put(keys.plan_key(JOB), b"{}")
    store.delete(keys.plan_key(JOB))
    store._client.remove_bucket(store.bucket)


def test_s3_get_checks_the_sha256(s3_store: S3Store) -> None:
    key = keys.plan_key(JOB)
    wrong = "0" * 64
    s3_store._client.put_object(
        s3_store.bucket, key, io.BytesIO(b"{}"), 2, metadata={"x-amz-meta-sha256": wrong}
    )
    with pytest.raises(StoreError, match="sha256"):
        s3_store.get(key)


def test_s3_retries_while_the_server_restarts(make_s3_store, private_seaweed: SeaweedS3) -> None:
    store = make_s3_store(server=private_seaweed, retry_budget_s=30.0)
    store.put(keys.frame_key(JOB, 0), b"before")
    private_seaweed.kill()

    outcome: dict[str, object] = {}

    def put() -> None:
        started = time.monotonic()
        try:
            outcome["info"] = store.put(keys.frame_key(JOB, 1), b"during")
        except BaseException as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - started

    thread = threading.Thread(target=put)
    thread.start()
    time.sleep(2.0)
    assert thread.is_alive(), outcome  # still retrying, not failed
    private_seaweed.restart()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["took"] >= 2.0  # type: ignore[operator]
    assert store.get(keys.frame_key(JOB, 1)) == b"during"
    assert store.get(keys.frame_key(JOB, 0)) == b"before"


def test_s3_gives_up_after_the_retry_budget(make_s3_store, private_seaweed: SeaweedS3) -> None:
    store = make_s3_store(server=private_seaweed, retry_budget_s=1.0)
    private_seaweed.kill()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=private_seaweed.endpoint):
            store.get(keys.plan_key(JOB))
        assert 0.5 <= time.monotonic() - started < 3.0
    finally:
        private_seaweed.start()  # so the bucket can be cleaned up


# -- open_store ---------------------------------------------------------------------


def test_open_store_chooses_by_anim_store(tmp_path: Path, s3_env: dict[str, str]) -> None:
    local = open_store(
        config.load("embedded", {"ANIM_STORE": "local", "ANIM_RUNS_DIR": str(tmp_path / "r")})
    )
    assert isinstance(local, LocalStore) and local.root == tmp_path / "r"

    env = {
        **s3_env,
        "ANIM_NATS_URL": "nats://127.0.0.1:4222",  # required for the renderer, unused here
        "ANIM_S3_PUBLIC_ENDPOINT": "http://public.test:8080",
        "ANIM_PRESIGN_TTL_S": "60",
    }
    s3 = open_store(config.load("renderer", env))
    assert isinstance(s3, S3Store) and s3.bucket == s3_env["ANIM_S3_BUCKET"]
    s3.put(keys.plan_key(JOB), b"{}")
    url = s3.presign_get(keys.plan_key(JOB))
    assert url.startswith(f"http://public.test:8080/{s3.bucket}/") and "X-Amz-Expires=60" in url
