"""services/trainer/dataset.py (`dataset build`): file checks, duplicates, crops, captions
(tiny BLIP), metadata.csv, the datasets library, the hub dry run, bad arguments."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
from PIL import Image
from support.datasets import gradient_image, write_image_folder

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import Settings
from ghibli_anim.services.trainer.dataset import build_dataset, load_image_dataset


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Good images (PNG, JPEG, WebP, a JPEG named .png) and every kind of bad file."""
    return write_image_folder(tmp_path / "images")


EXPECTED_SKIPPED = {
    "bomb.png": "too many pixels",
    "broken.jpg": "corrupt JPEG image",
    "empty.webp": "empty file",
    "huge.png": "too many pixels: 9000x9000 = 81000000 (at most 67108864",
    "notes.png": "not a PNG, JPEG or WebP image",
    "sub": "a folder",
    "zz-copy-of-castle.png": "duplicate of castle.png",
}


def test_build_keeps_good_images_and_reports_the_rest(
    images: Path, tmp_path: Path, tiny_settings: Settings
) -> None:
    out = tmp_path / "dataset"
    report = build_dataset(images, out, settings=tiny_settings, profile="tiny", caption="keep")

    skipped = {s.file: s.reason for s in report.skipped}
    assert set(skipped) == {*EXPECTED_SKIPPED, "sky.png"}
    for name, reason in EXPECTED_SKIPPED.items():
        assert reason in skipped[name], (name, skipped[name])
    assert "no caption" in skipped["sky.png"]  # keep mode: no metadata.csv row, no sky.txt
    assert any("sky.png: JPEG content" in note for note in report.notes)

    assert [k.file_name for k in report.kept] == ["castle.png", "forest.png", "river.png"]
    by_name = {k.file_name: k.caption for k in report.kept}
    assert by_name == {
        "castle.png": 'ghibli style, a castle on a hill, "at dusk"',
        "forest.png": "ghibli style, a forest path",
        "river.png": "ghibli style, a river in the valley",
    }
    # The folder holds the crops and metadata.csv only; the originals are untouched.
    assert sorted(p.name for p in out.iterdir()) == [
        "castle.png",
        "forest.png",
        "metadata.csv",
        "river.png",
    ]
    for name in ("castle.png", "forest.png", "river.png"):
        with Image.open(out / name) as im:
            assert (im.format, im.size, im.mode) == ("PNG", (64, 64), "RGB")
    assert gradient_image(1).tobytes() == Image.open(images / "castle.png").tobytes()

    text = (out / "metadata.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "file_name,caption"
    assert text.splitlines()[1] == 'castle.png,"ghibli style, a castle on a hill, ""at dusk"""'
    rows = list(csv.DictReader(text.splitlines()))
    assert [(r["file_name"], r["caption"]) for r in rows] == list(by_name.items())

    loaded = load_image_dataset(out, tmp_path / "hf-cache")
    assert loaded.num_rows == 3 and loaded.column_names == ["image", "caption"]
    assert loaded["caption"] == list(by_name.values())
    assert loaded[0]["image"].size == (64, 64)
    assert report.rows_loaded == 3 and report.columns == ("image", "caption")


def test_blip_captions_end_to_end(images: Path, tmp_path: Path, tiny_settings: Settings) -> None:
    """The tiny BLIP (random weights) captions every image; captions are cleaned."""
    out = tmp_path / "dataset"
    report = build_dataset(
        images, out, settings=tiny_settings, profile="tiny", caption="blip", trigger="my style"
    )
    assert [k.file_name for k in report.kept] == [
        "castle.png",
        "forest.png",
        "river.png",
        "sky.png",
    ]
    for kept in report.kept:
        assert kept.caption_from == "blip"
        assert kept.caption.startswith("my style, ") and len(kept.caption) > len("my style, ")
        words = kept.caption.split()
        assert all(a != b for a, b in itertools.pairwise(words)), kept.caption
    # "both": the user's caption first, then BLIP's; BLIP's alone without one.
    both = build_dataset(
        images, tmp_path / "both", settings=tiny_settings, profile="tiny", caption="both"
    )
    captions_of = {k.file_name: k for k in both.kept}
    blip_text = report.kept[-1].caption.removeprefix("my style, ")
    assert captions_of["forest.png"].caption == f"ghibli style, a forest path, {blip_text}"
    assert captions_of["forest.png"].caption_from == "sidecar+blip"
    assert captions_of["sky.png"].caption == f"ghibli style, {blip_text}"
    loaded = load_image_dataset(tmp_path / "both", tmp_path / "hf-cache")
    assert loaded["caption"] == [k.caption for k in both.kept]


def test_resolution_zero_copies_the_originals(
    images: Path, tmp_path: Path, tiny_settings: Settings
) -> None:
    out = tmp_path / "originals"
    report = build_dataset(
        images, out, settings=tiny_settings, profile="tiny", caption="keep", resolution=0
    )
    assert [k.file_name for k in report.kept] == ["castle.png", "forest.jpg", "river.webp"]
    for kept in report.kept:
        assert (out / kept.file_name).read_bytes() == (images / kept.source).read_bytes()
    assert load_image_dataset(out, tmp_path / "hf-cache").num_rows == 3


def test_dry_run_writes_nothing_and_says_what_it_would_push(
    images: Path, tmp_path: Path, tiny_cache_dir: Path
) -> None:
    """The upload itself needs the hub (no network here): only the dry run is tested."""
    env = {"ANIM_CACHE_DIR": str(tiny_cache_dir), "ANIM_DEVICE": "cpu", "ANIM_STORE": "local"}
    settings = config.load("trainer", env)  # no HF_TOKEN
    out = tmp_path / "never"
    report = build_dataset(
        images,
        out,
        settings=settings,
        profile="tiny",
        caption="keep",
        dry_run=True,
        push_to_hub="someone/ghibli-images",
    )
    assert not out.exists()
    assert not list(tmp_path.glob(".never.*"))  # no staging folder left behind
    assert report.rows_loaded == 3
    assert report.push.startswith("dry run: would push 3 rows (columns image, caption;")
    assert "someone/ghibli-images" in report.push and "HF_TOKEN is NOT set" in report.push
    with pytest.raises(ValueError, match=r"^HF_TOKEN: required for --push-to-hub"):
        build_dataset(
            images,
            out,
            settings=settings,
            profile="tiny",
            caption="keep",
            push_to_hub="someone/ghibli-images",
        )
    with pytest.raises(ValueError, match=r"^--push-to-hub: must be a hub repository id"):
        build_dataset(
            images, out, settings=settings, profile="tiny", dry_run=True, push_to_hub="not a repo"
        )


def test_bad_arguments_name_the_flag(images: Path, tmp_path: Path, tiny_settings: Settings) -> None:
    def build(out: Path, **kwargs) -> None:
        build_dataset(images, out, settings=tiny_settings, profile="tiny", **kwargs)

    with pytest.raises(ValueError, match=r"^--out: must not be IMAGES_DIR"):
        build(images, caption="keep")
    with pytest.raises(ValueError, match=r"^--out: must not be IMAGES_DIR"):
        build(tmp_path, caption="keep")  # replacing it would delete the originals
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(ValueError, match=r"^--out: .* is not empty \(pass --overwrite"):
        build(full, caption="keep")
    build(full, caption="keep", overwrite=True)
    assert not (full / "x").exists() and (full / "metadata.csv").is_file()
    with pytest.raises(ValueError, match=r"^--resolution: must be an integer in 64\.\.2048"):
        build(tmp_path / "a", resolution=100)
    with pytest.raises(ValueError, match=r"^--caption: must be one of keep, blip, both"):
        build(tmp_path / "a", caption="manual")
    with pytest.raises(ValueError, match=r"^IMAGES_DIR: .* is not a folder"):
        build_dataset(tmp_path / "nope", tmp_path / "a", settings=tiny_settings, profile="tiny")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(
        ValueError,
        match=r"^IMAGES_DIR: no usable image .*\(1 file\(s\) skipped: readme\.txt: not a PNG",
    ):
        build_dataset(empty, tmp_path / "a", settings=tiny_settings, profile="tiny", caption="keep")
    assert not (tmp_path / "a").exists()
    bad_csv = tmp_path / "badcsv"
    bad_csv.mkdir()
    gradient_image(9).save(bad_csv / "a.png")
    (bad_csv / "metadata.csv").write_text("name,words\na.png,hello\n")
    with pytest.raises(ValueError, match=r"^metadata\.csv: needs a header with file_name"):
        build_dataset(
            bad_csv, tmp_path / "a", settings=tiny_settings, profile="tiny", caption="keep"
        )
