"""`ghibli-anim dataset build` and `ghibli-anim train-lora` (cli/train.py): what they print,
write and exit with."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image
from support.datasets import write_image_folder, write_training_images

from ghibli_anim.cli import main as cli
from ghibli_anim.contracts import keys
from ghibli_anim.contracts.config import Settings
from ghibli_anim.runtime.store.local import LocalStore
from ghibli_anim.services.trainer.dataset import build_dataset


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Good images (PNG, JPEG, WebP, a JPEG named .png) and every kind of bad file."""
    return write_image_folder(tmp_path / "images")


def test_cli_dataset_build(
    images: Path, tmp_path: Path, tiny_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for name, value in {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_DEVICE": "cpu",
        "ANIM_STORE": "local",
    }.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "cli-out"
    code = cli.main(
        [
            "dataset",
            "build",
            str(images),
            "--out",
            str(out),
            "--caption",
            "keep",
            "--profile",
            "tiny",
            "--resolution",
            "128",
            "--trigger",
            "",
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "kept 3 image(s)" in printed
    assert "notes.png: not a PNG, JPEG or WebP image" in printed
    assert "zz-copy-of-castle.png: duplicate of castle.png" in printed
    assert "castle.png: 'a castle on a hill, \"at dusk\"'" in printed
    with Image.open(out / "castle.png") as im:
        assert im.size == (128, 128)
    digest = hashlib.sha256((out / "metadata.csv").read_bytes()).hexdigest()
    code = cli.main(
        [
            "dataset",
            "build",
            str(images),
            "--out",
            str(out),
            "--caption",
            "keep",
            "--profile",
            "tiny",
            "--quiet",
        ]
    )
    assert code == 2 and "--out:" in capsys.readouterr().err
    assert hashlib.sha256((out / "metadata.csv").read_bytes()).hexdigest() == digest


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory, tiny_settings: Settings) -> Path:
    """8 synthetic 64x64 images with captions, built by `dataset build --caption keep`."""
    images = tmp_path_factory.mktemp("train-images")
    write_training_images(images)
    out = tmp_path_factory.mktemp("train-data") / "dataset"
    report = build_dataset(images, out, settings=tiny_settings, profile="tiny", caption="keep")
    assert len(report.kept) == 8 and not report.skipped
    return out


def test_cli_trains_into_the_local_store(
    dataset_dir: Path,
    tmp_path: Path,
    tiny_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_DEVICE": "cpu",
        "ANIM_STORE": "local",
        "ANIM_RUNS_DIR": str(tmp_path / "runs"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(
        [
            "train-lora",
            "--dataset",
            str(dataset_dir),
            "--output",
            "store://loras/cli-style",
            "--profile",
            "tiny",
            "--steps",
            "3",
            "--lr",
            "1e-3",
            "--checkpoint-every",
            "0",
            "--seed",
            "5",
            "--work-dir",
            str(tmp_path / "work"),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "trained steps 0..3 (seed 5)" in out and "store://loras/cli-style" in out
    store = LocalStore(tmp_path / "runs")
    assert store.exists(keys.lora_key("cli-style"))
    assert store.exists("loras/cli-style/README.md")
    assert not (tmp_path / "work" / "checkpoint-3").exists()
