"""`dataset build`: file checks, duplicates, crops, captions (tiny BLIP), metadata.csv, datasets."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ghibli_anim.cli import main as cli
from ghibli_anim.contracts import config, profiles
from ghibli_anim.contracts.config import Settings
from ghibli_anim.services.trainer import captions
from ghibli_anim.services.trainer.dataset import build_dataset, load_image_dataset
from ghibli_anim.services.trainer.images import sniff, square_crop, to_rgb


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: a busy 2-core machine makes two threads many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A deterministic picture: a colour gradient with a bright disc."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 255, 3)
    pixels = np.stack(
        [(x * 255 // w + base[0]) % 256, (y * 255 // h + base[1]) % 256, np.full_like(x, base[2])],
        axis=-1,
    )
    cx, cy = rng.integers(10, w - 10), rng.integers(10, h - 10)
    pixels[(x - cx) ** 2 + (y - cy) ** 2 < 100] = 255
    return Image.fromarray(pixels.astype(np.uint8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _claimed_size_png(path: Path, width: int, height: int) -> None:
    """A valid PNG header claiming ``width`` x ``height`` pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _chunk(b"IEND", b"")
    )


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Good images (PNG, JPEG, WebP, a JPEG named .png) and every kind of bad file."""
    folder = tmp_path / "images"
    folder.mkdir()
    _image(1).save(folder / "castle.png")
    _image(2).save(folder / "forest.jpg", quality=90)
    _image(3).save(folder / "river.webp")
    _image(4).save(folder / "sky.png", format="JPEG")  # signature says JPEG, name says PNG
    (folder / "zz-copy-of-castle.png").write_bytes((folder / "castle.png").read_bytes())
    (folder / "notes.png").write_text("this is a text file, not an image\n")
    whole = (folder / "forest.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    _claimed_size_png(folder / "huge.png", 9000, 9000)  # 81 Mpx: over our cap, under Pillow's
    _claimed_size_png(folder / "bomb.png", 100_000, 100_000)  # over Pillow's own hard limit
    (folder / "empty.webp").write_bytes(b"")
    (folder / "sub").mkdir()
    # Captions of the user, in the seed paper's CSV and as a sidecar file.
    (folder / "metadata.csv").write_text(
        'file_name,caption\ncastle.png,"a castle on a hill, ""at dusk"""\n'
        "forest.jpg,a forest path\n"
    )
    (folder / "river.txt").write_text("a river  in\nthe valley\n")
    return folder


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
    assert _image(1).tobytes() == Image.open(images / "castle.png").tobytes()

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


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a cat cat cat on a roof", "a cat on a roof"),
        ("a samurai samurai samurai", "a samurai"),
        ("a house on a hill on a hill on a hill", "a house on a hill"),
        ("arafed man standing in a field", "man standing in a field"),
        ("  a   boat,\nat sea  ", "a boat, at sea"),
        ("A Cat cat, cat", "A Cat"),
        ("the dog and the cat", "the dog and the cat"),
    ],
)
def test_caption_cleaner(raw: str, clean: str) -> None:
    assert captions.clean_caption(raw) == clean


def test_trigger_goes_first_once() -> None:
    assert captions.with_trigger("a cat", "ghibli style") == "ghibli style, a cat"
    assert captions.with_trigger("Ghibli Style, a cat", "ghibli style") == "Ghibli Style, a cat"
    assert captions.with_trigger("", "ghibli style") == "ghibli style"
    assert captions.with_trigger("a cat", "") == "a cat"


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
    _image(9).save(bad_csv / "a.png")
    (bad_csv / "metadata.csv").write_text("name,words\na.png,hello\n")
    with pytest.raises(ValueError, match=r"^metadata\.csv: needs a header with file_name"):
        build_dataset(
            bad_csv, tmp_path / "a", settings=tiny_settings, profile="tiny", caption="keep"
        )


def test_profiles_name_their_captioner(tmp_path: Path) -> None:
    settings = config.load("client", {"ANIM_CACHE_DIR": str(tmp_path), "ANIM_STORE": "local"})
    assert profiles.load_captioner("tiny", settings) == "tiny:blip"
    assert profiles.load_captioner("sd15-ghibli", settings) == profiles.DEFAULT_CAPTIONER
    table = (
        '[profiles.mine]\nbase_model = "tiny:pipeline"\nscheduler = "DDIM"\nwidth = 64\n'
        "height = 64\nsteps = 4\nguidance = 7.5\nstrength = 0.2\n"
    )
    (tmp_path / "p.toml").write_text(table)
    own = config.load(
        "client",
        {
            "ANIM_CACHE_DIR": str(tmp_path),
            "ANIM_STORE": "local",
            "ANIM_PROFILES_FILE": str(tmp_path / "p.toml"),
        },
    )
    assert profiles.load_captioner("mine", own) == profiles.DEFAULT_CAPTIONER
    (tmp_path / "p.toml").write_text(table + 'captioner = "tiny:nothing"\n')
    with pytest.raises(ValueError, match=r"^profiles\.mine\.captioner: tiny component must be"):
        profiles.load_captioner("mine", own)


def test_signatures() -> None:
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "PNG"
    assert sniff(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff(b"GIF89a") is None


def test_pixels_are_made_rgb_upright_and_square() -> None:
    clear = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)  # transparency -> white
    deep = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert deep.mode.startswith("I;16")
    assert to_rgb(deep).getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped to white
    tall = Image.new("RGB", (40, 80), (0, 0, 0))
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = io.BytesIO()
    tall.save(data, format="JPEG", exif=exif.tobytes())
    upright = to_rgb(Image.open(data))
    assert upright.size == (80, 40)  # turned upright before cropping
    assert square_crop(upright, 32).size == (32, 32)
    assert square_crop(Image.new("RGB", (300, 100)), 64).size == (64, 64)


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
