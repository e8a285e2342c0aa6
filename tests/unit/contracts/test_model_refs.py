"""contracts/model_refs.py: where model references may point (hub ids, tiny components,
local paths inside ANIM_MODEL_ROOTS, the hub cache), and what they resolve to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.profiles import PROFILE, client_settings, file_settings

from ghibli_anim.contracts import model_refs, profiles
from ghibli_anim.devtools import tiny_models, tiny_tokenizer


def test_local_path_inside_a_model_root(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "sd").mkdir(parents=True)
    settings = file_settings(
        tmp_path, PROFILE.format(base=f"{root}/sd"), ANIM_MODEL_ROOTS=str(root)
    )
    p = profiles.load_profile("mine", settings)
    assert model_refs.locate(p.base_model, settings) == str((root / "sd").resolve())
    with pytest.raises(ValueError, match=r"^model: path .* does not exist"):
        model_refs.locate(f"{root}/missing", settings)


def test_path_outside_the_model_roots_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    text = PROFILE.format(base=str(tmp_path / "elsewhere"))
    settings = file_settings(tmp_path, text, ANIM_MODEL_ROOTS=str(root))
    with pytest.raises(ValueError, match=r"^profiles\.mine\.base_model: path .* is outside"):
        profiles.load_profile("mine", settings)


def test_dot_dot_escape_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    settings = client_settings(tmp_path, ANIM_MODEL_ROOTS=str(root))
    with pytest.raises(ValueError) as info:
        model_refs.locate(f"{root}/../../etc", settings, field="profile.controlnet")
    message = str(info.value)
    assert message.startswith("profile.controlnet: path ") and "'..' leads to" in message


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    settings = client_settings(tmp_path, ANIM_MODEL_ROOTS=str(root))
    with pytest.raises(ValueError, match=r"^depth_model: path .* is outside ANIM_MODEL_ROOTS"):
        model_refs.locate(f"{root}/link", settings, field="depth_model")


def test_local_paths_need_model_roots(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^base_model: local path .* ANIM_MODEL_ROOTS names no"):
        model_refs.locate(str(tmp_path), client_settings(tmp_path), field="base_model")


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        ("owner/name", "hub"),
        ("owner/name/sub/folder", "hub"),
        ("tiny:pipeline", "tiny"),
        ("store://loras/my-style", "store"),
    ],
)
def test_reference_kinds(tmp_path: Path, ref: str, kind: str) -> None:
    assert model_refs.check_ref(ref, client_settings(tmp_path), "ref", allow_store=True) == kind


@pytest.mark.parametrize(
    "ref", ["name-only", "owner/../name", "http://example.com/m", "owner/na me", "", " a/b"]
)
def test_bad_references(tmp_path: Path, ref: str) -> None:
    with pytest.raises(ValueError, match=r"^ref: "):
        model_refs.check_ref(ref, client_settings(tmp_path), "ref")


def test_hub_ids_pass_through_and_store_refs_are_refused(tmp_path: Path) -> None:
    settings = client_settings(tmp_path)
    assert model_refs.locate("owner/name", settings) == "owner/name"
    with pytest.raises(ValueError, match=r"^lora: store:// references are allowed for LoRAs"):
        model_refs.locate("store://loras/x", settings, field="lora")
    with pytest.raises(ValueError, match=r"^lora: store://loras/x is in the object store"):
        model_refs.locate("store://loras/x", settings, field="lora", allow_store=True)


def test_tiny_references_build_on_first_use(tmp_path: Path) -> None:
    settings = client_settings(tmp_path)
    path = Path(model_refs.locate("tiny:tokenizer", settings))
    assert path == tmp_path / "cache" / f"tiny-v{tiny_models.TINY_VERSION}" / "tokenizer"
    assert sorted(p.name for p in path.iterdir()) == sorted(tiny_tokenizer.tokenizer_files())
    assert model_refs.locate("tiny:tokenizer", settings) == str(path)


def test_hub_subfolder_comes_from_the_hub_cache(tmp_path: Path) -> None:
    """``owner/name/tokenizer`` resolves offline from HF_HOME, without torch."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--owner--name"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    tiny_tokenizer.write_tokenizer(repo / "snapshots" / commit / "tokenizer")
    code = (
        "import sys\n"
        "from ghibli_anim.contracts import config, model_refs\n"
        "s = config.load('client')\n"
        "print(model_refs.locate('owner/name/tokenizer', s, field='profile.tokenizer'))\n"
        "try:\n"
        "    model_refs.locate('owner/name/nothing', s, field='profile.tokenizer')\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found, missing = done.stdout.strip().splitlines()
    assert Path(found) == repo / "snapshots" / commit / "tokenizer"
    assert missing == "profile.tokenizer: hub repository owner/name has no folder 'nothing'"
