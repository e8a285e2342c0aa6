"""runtime/store/local.py: the folder layout, atomic writes, foreign files, empty folders,
file URLs."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ghibli_anim.contracts import keys
from ghibli_anim.runtime.store.local import LocalStore

JOB = "0123456789abcdef0123456789abcdef"

UPLOAD = "aaaaaaaabbbbbbbbccccccccdddddddd"


def _http(url: str, method: str = "GET", data: bytes | None = None, **headers: str) -> bytes:
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


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
