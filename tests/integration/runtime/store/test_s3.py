"""runtime/store/s3.py against a real S3 server (SeaweedFS): presigned URLs, credentials,
missing buckets, checksums, retries while the server restarts."""

from __future__ import annotations

import io
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest

from ghibli_anim.contracts import keys
from ghibli_anim.devtools.seaweed import SeaweedS3, volumes_on_disk
from ghibli_anim.runtime.store.base import StoreAuthError, StoreError, StoreUnavailable
from ghibli_anim.runtime.store.s3 import S3Store

JOB = "0123456789abcdef0123456789abcdef"

UPLOAD = "aaaaaaaabbbbbbbbccccccccdddddddd"

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def _http(url: str, method: str = "GET", data: bytes | None = None, **headers: str) -> bytes:
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


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


def test_a_volume_left_empty_by_a_kill_does_not_hold_up_the_restart(
    make_s3_store, private_seaweed: SeaweedS3
) -> None:
    """Killed while growing a volume, SeaweedFS leaves an empty ``N.dat`` that the next start
    skips: the restart is ready as soon as the volumes that hold data are back (it waited
    for the empty one, for ever, in a chaos test)."""
    store = make_s3_store(server=private_seaweed)
    store.put(keys.frame_key(JOB, 0), b"before")
    private_seaweed.kill()
    data = private_seaweed.data_dir / "data"
    loaded = volumes_on_disk(data)
    (data / "9999.dat").touch()  # what the kill mid-growth leaves
    assert volumes_on_disk(data) == loaded >= 1
    private_seaweed.start(timeout=20)
    assert store.get(keys.frame_key(JOB, 0)) == b"before"


def test_stat_many_keeps_several_heads_in_flight(s3_store: S3Store, monkeypatch) -> None:
    # Each HEAD is a round trip to the server: one after another, a completed job's view
    # would wait on ~3 a frame. Every HEAD here waits until 4 are in flight together.
    stored = [keys.frame_key(JOB, i) for i in range(8)]
    for key in stored:
        s3_store.put(key, PNG, "image/png")
    together = threading.Barrier(4, timeout=10)
    head = s3_store._client.stat_object

    def stat_object(*args, **kwargs):
        together.wait()  # BrokenBarrierError after 10 s unless 4 HEADs wait at once
        return head(*args, **kwargs)

    monkeypatch.setattr(s3_store._client, "stat_object", stat_object)
    infos = s3_store.stat_many(stored)
    assert [info.key for info in infos if info is not None] == stored
