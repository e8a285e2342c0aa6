"""contracts/profiles.py: the built-in file, overrides, bad entries named, captioners, and
request overrides of a profile (LoRAs, a single-file base model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.model_roots import roots_settings
from support.profiles import PROFILE, client_settings, file_settings

from ghibli_anim.contracts import config, profiles
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.contracts.profiles import load_profile, resolve_profile
from ghibli_anim.devtools.tiny_models import SINGLE_FILE_NAME


def test_built_in_names(tmp_path: Path) -> None:
    assert profiles.profile_names(client_settings(tmp_path)) == ["sd15-ghibli", "tiny"]


def test_default_profile_is_the_papers(tmp_path: Path) -> None:
    p = profiles.load_profile(None, client_settings(tmp_path))
    assert p.name == "sd15-ghibli"
    assert p.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert p.tokenizer == "stable-diffusion-v1-5/stable-diffusion-v1-5/tokenizer"
    assert [(lo.source, round(lo.scale, 6)) for lo in p.loras] == [
        ("ibrahim7004/ghibli-stableDiff-finetuned", 0.8)
    ]
    assert p.controlnet == "lllyasviel/sd-controlnet-depth"
    assert p.depth_model == "depth-anything/Depth-Anything-V2-Small-hf"
    assert (p.width, p.height, p.steps, p.fps) == (512, 512, 50, 8)
    assert (p.guidance, round(p.strength, 6), p.controlnet_scale) == (8.5, 0.15, 1.0)
    assert p.style == "ghibli style" and "watermark" in p.negative_prompt


def test_tiny_profile_names_only_tiny_models(tmp_path: Path) -> None:
    p = profiles.load_profile("tiny", client_settings(tmp_path))
    refs = [p.base_model, p.tokenizer, p.controlnet, p.depth_model]
    assert all(ref.startswith("tiny:") for ref in refs)
    assert (p.width, p.height, p.steps, p.fps, p.guidance) == (64, 64, 10, 8, 8.5)
    assert list(p.loras) == []


def test_unknown_profile(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        profiles.load_profile("x", client_settings(tmp_path))
    assert str(info.value) == "profile: must be one of sd15-ghibli, tiny, got 'x'"


def test_anim_profile_picks_the_default(tmp_path: Path) -> None:
    assert profiles.load_profile("", client_settings(tmp_path, ANIM_PROFILE="tiny")).name == "tiny"


def test_file_override_replaces_the_built_in_file(tmp_path: Path) -> None:
    settings = file_settings(tmp_path, PROFILE.format(base="owner/model"))
    assert profiles.profile_names(settings) == ["mine"]
    p = profiles.load_profile("mine", settings)
    assert (p.scheduler, p.width, p.guidance, p.fps, p.controlnet_scale) == ("DDIM", 96, 7.0, 8, 1)
    assert p.tokenizer == "owner/model/tokenizer"  # the base model's, when left out
    with pytest.raises(ValueError, match=r"^profile: must be one of mine, got 'tiny'$"):
        profiles.load_profile("tiny", settings)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("widht = 64", r"^profiles\.mine\.widht: unknown field"),
        ("fps = 0", r"^profiles\.mine\.fps: must be an integer in 1\.\.60, got 0"),
        ('controlnet = "a/../b"', r"^profiles\.mine\.controlnet: must be a hub id"),
        ('depth_model = "tiny:unet"', r"^profiles\.mine\.depth_model: tiny component must be"),
        ("[[profiles.mine.loras]]\nscale = 1.0", r"^profiles\.mine\.loras\[0\]\.source: required"),
        (
            '[[profiles.mine.loras]]\nsource = "store://loras/Bad Name"',
            r"^profiles\.mine\.loras\[0\]\.source \(LoRA name\): must be",
        ),
        (
            '[[profiles.mine.loras]]\nsource = "a/b"\nscale = 3',
            r"^profiles\.mine\.loras\[0\]\.scale: must be a number in \[-2, 2\]",
        ),
    ],
)
def test_bad_entries_name_the_field(tmp_path: Path, extra: str, message: str) -> None:
    settings = file_settings(tmp_path, PROFILE.format(base="owner/model") + extra + "\n")
    with pytest.raises(ValueError, match=message):
        profiles.load_profile("mine", settings)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("width = 96", 'width = "96"', r"^profiles\.mine\.width: must be an integer"),
        ("width = 96", "width = 100", r"^profiles\.mine\.width: .* a multiple of 8, got 100"),
        ('scheduler = "ddim"', 'scheduler = "k_lms"', r"^profiles\.mine\.scheduler: must be one"),
        ("strength = 0.3", "", r"^profiles\.mine\.strength: required$"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = PROFILE.format(base="owner/model").replace(old, new)
    with pytest.raises(ValueError, match=message):
        profiles.load_profile("mine", file_settings(tmp_path, text))


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    settings = client_settings(tmp_path, ANIM_PROFILES_FILE=str(tmp_path / "nope.toml"))
    with pytest.raises(ValueError, match=r"^ANIM_PROFILES_FILE: cannot read"):
        profiles.profile_names(settings)
    with pytest.raises(ValueError, match=r"^ANIM_PROFILES_FILE: invalid TOML"):
        profiles.profile_names(file_settings(tmp_path, "[profiles.x\n"))


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("ddim", "DDIM"), ("euler_a", "EulerA"), ("dpm++ karras", "DPM++ Karras"), ("LCM", "LCM")],
)
def test_scheduler_names(name: str, canonical: str) -> None:
    assert profiles.check_scheduler(name) == canonical


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


# -- single-file base models and request overrides (ANIM_MODEL_ROOTS: tests/unit/conftest.py's
# `models`) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('base_model = "{m}/tiny/pipeline.safetensors"\n', r"^profiles\.bad\.config: required"),
        (
            'base_model = "tiny:pipeline"\nconfig = "tiny:pipeline"\n',
            r"^profiles\.bad\.config: only",
        ),
        ('base_model = "{m}/x.ckpt"\n', r"^profiles\.bad\.base_model: .*pickle checkpoint"),
        (
            'base_model = "{m}/tiny/pipeline.safetensors"\nconfig = "a/b/c"\n',
            r"^profiles\.bad\.config: a hub config must be owner/name",
        ),
        ('base_model = "tiny:pipeline"\nlcm_lora = "../x"\n', r"^profiles\.bad\.lcm_lora: "),
    ],
)
def test_profile_errors_name_the_field(models, tiny_cache_dir, table: str, message: str) -> None:
    body = table.format(m=models)
    text = f'[profiles.bad]\n{body}scheduler = "DDIM"\nwidth = 64\nheight = 64\nsteps = 4\n'
    text += "guidance = 7.5\nstrength = 0.15\n"
    path = models / "bad.toml"
    path.write_text(text)
    settings = roots_settings(models, tiny_cache_dir, ANIM_PROFILES_FILE=str(path))
    with pytest.raises(ValueError, match=message):
        load_profile("bad", settings)


def test_lora_override_syntax_and_single_file_base(models, tiny_cache_dir) -> None:
    settings = roots_settings(models, tiny_cache_dir, ANIM_TINY_VAE="true")
    req = animation_pb2.CreateAnimationRequest(
        idea="a fox",
        frames=2,
        profile="tiny",
        loras=[f"{models}/lcm:0.25", "tiny:lcm_lora"],
        base_model=f"{models}/tiny/{SINGLE_FILE_NAME}",
    )
    profile = resolve_profile(req, settings)
    assert [(lo.source, lo.scale) for lo in profile.loras] == [
        (f"{models}/lcm", 0.25),
        ("tiny:lcm_lora", 1.0),
    ]
    assert profile.base_model.endswith(SINGLE_FILE_NAME)
    assert profile.tokenizer == "tiny:tokenizer"  # the config of the profile's own base
    assert profile.tiny_autoencoder == "tiny:taesd"  # ANIM_TINY_VAE
