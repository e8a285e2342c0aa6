"""runtime/store/base.py: the Store contract, kept by both stores (a real S3 server,
SeaweedFS, and a local folder)."""

from __future__ import annotations

import hashlib

import pytest

from ghibli_anim.contracts import keys
from ghibli_anim.runtime.store.base import NotFound, ObjectInfo, Store

JOB = "0123456789abcdef0123456789abcdef"

OTHER_JOB = "fedcba9876543210fedcba9876543210"

UPLOAD = "aaaaaaaabbbbbbbbccccccccdddddddd"

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(f"{request.param}_store")


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


def test_stat_many_answers_in_order_with_none_for_the_missing(store: Store) -> None:
    written = {keys.frame_key(JOB, i): bytes([i]) * (100 + i) for i in range(0, 24, 2)}
    for key, data in written.items():
        store.put(key, data, "image/png")
    asked = [keys.frame_key(JOB, i) for i in range(24)]  # the odd frames were never written
    got = store.stat_many(asked)
    assert got == [store.stat(key) for key in asked]
    for key, info in zip(asked, got, strict=True):
        if key in written:
            data = written[key]
            assert info == ObjectInfo(key, len(data), hashlib.sha256(data).hexdigest(), "image/png")
        else:
            assert info is None
    assert store.stat_many([]) == []
    with pytest.raises(ValueError, match="key"):
        store.stat_many([*asked, "../escape"])


def test_copy_is_an_object_of_its_own(store: Store) -> None:
    # A fork's frames are copies of its parent's: deleting the parent's keeps them.
    source, dest = keys.frame_key(JOB, 1), keys.frame_key(OTHER_JOB, 1)
    store.put(source, PNG, "image/png")
    store.copy(source, dest)
    store.delete_prefix(keys.job_prefix(JOB))
    assert store.get(dest) == PNG
    assert store.stat(dest) == ObjectInfo(
        dest, len(PNG), hashlib.sha256(PNG).hexdigest(), "image/png"
    )
    with pytest.raises(NotFound):
        store.copy(source, keys.frame_key(OTHER_JOB, 2))
    assert not store.exists(keys.frame_key(OTHER_JOB, 2))


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
