"""runtime/store/open.py: ANIM_STORE chooses the store."""

from __future__ import annotations

from pathlib import Path

from ghibli_anim.contracts import config, keys
from ghibli_anim.runtime.store.local import LocalStore
from ghibli_anim.runtime.store.open import open_store
from ghibli_anim.runtime.store.s3 import S3Store

JOB = "0123456789abcdef0123456789abcdef"


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
