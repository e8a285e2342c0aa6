"""The renderer for real use, on the tiny models: single-file checkpoints, overrides, the
fast preset, prompt length, init-image validation, and the GPU benchmark's CPU smoke run."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ghibli_anim.cli import main as cli
from ghibli_anim.contracts import config, limits, uploads
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.pb import animation_pb2, types_pb2
from ghibli_anim.contracts.profiles import load_profile, resolve_profile
from ghibli_anim.contracts.storyboard import parse_storyboard
from ghibli_anim.contracts.validate import validate_create
from ghibli_anim.devtools.tiny_models import SINGLE_FILE_NAME
from ghibli_anim.services.planner.frame_specs import resolve_frames
from ghibli_anim.services.renderer.diffusion import img2img_steps, render_frame
from ghibli_anim.services.renderer.pipelines import PipelineCache

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a small dragon glides over a quiet medieval town at dusk, ghibli style"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on a shared 2-core machine: one torch thread is faster than two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_cache_dir: Path, tiny_settings: Settings) -> Path:
    """ANIM_MODEL_ROOTS holding the tiny models and, from the CLI, their single-file export."""
    from ghibli_anim.contracts.model_refs import tiny_dir

    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_dir(tiny_settings) / "pipeline", root / "tiny" / "pipeline")
    shutil.copytree(tiny_dir(tiny_settings) / "lcm_lora", root / "lcm")
    # Existing components are kept: only the single file is written.
    assert cli.main(["models", "tiny", str(root / "tiny"), "--single-file"]) == 0
    return root


def _settings(models: Path, tiny_cache_dir: Path, **extra: str) -> Settings:
    profiles = models / "profiles.toml"
    env = {
        "ANIM_CACHE_DIR": str(tiny_cache_dir),
        "ANIM_MODEL_ROOTS": str(models),
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        "ANIM_STORE": "local",
        **({"ANIM_PROFILES_FILE": str(profiles)} if profiles.exists() else {}),
        **extra,
    }
    return config.load("client", env)


def _write_profiles(models: Path, extra: str = "") -> None:
    base = (ROOT / "ghibli_anim/contracts/profiles.toml").read_text()
    tiny = base[base.index("[profiles.tiny]") :]
    single = (
        tiny.replace("[profiles.tiny]", "[profiles.single]")
        .replace(
            'base_model = "tiny:pipeline"',
            f'base_model = "{models}/tiny/{SINGLE_FILE_NAME}"\nconfig = "{models}/tiny/pipeline"',
        )
        .replace('tokenizer = "tiny:tokenizer"\n', "")
    )
    (models / "profiles.toml").write_text(tiny + "\n" + single + "\n" + extra)


def _spec(profile: types_pb2.Profile, **fields) -> types_pb2.FrameSpec:
    spec = types_pb2.FrameSpec(
        index=0,
        prompt=PROMPT,
        seed=21,
        guidance=7.5,
        steps=3,
        scheduler="DDIM",
        width=64,
        height=64,
        continuity=types_pb2.CONTINUITY_CUT,
        profile=profile,
    )
    for name, value in fields.items():
        setattr(spec, name, value)
    return spec


def test_single_file_checkpoint_renders_the_folders_bytes(models, tiny_cache_dir) -> None:
    exported = models / "tiny" / SINGLE_FILE_NAME
    first = exported.read_bytes()
    assert cli.main(["models", "tiny", str(models / "tiny"), "--single-file"]) == 0
    assert exported.read_bytes() == first  # deterministic export
    from safetensors import safe_open

    with safe_open(exported, "pt") as f:  # the original (LDM) key layout
        names = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in names
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in names
    assert any(n.startswith("cond_stage_model.transformer.text_model.") for n in names)
    _write_profiles(models)
    settings = _settings(models, tiny_cache_dir)
    single = load_profile("single", settings)
    assert single.tokenizer == f"{models}/tiny/pipeline/tokenizer"  # the config's
    cache = PipelineCache(settings, max_entries=2)
    from_file = render_frame(_spec(single), cache=cache, settings=settings)
    from_folder = render_frame(
        _spec(load_profile("tiny", settings)), cache=cache, settings=settings
    )
    assert from_file.png == from_folder.png
    assert from_file.record["models"]["base_model"]["sha256"] == _sha256(exported)
    assert from_file.record["models"]["config"]["ref"] == f"{models}/tiny/pipeline"
    assert len(cache) == 2


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    settings = _settings(models, tiny_cache_dir, ANIM_PROFILES_FILE=str(path))
    with pytest.raises(ValueError, match=message):
        load_profile("bad", settings)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"loras": ["/etc/passwd.safetensors"]},
            r"^loras\[0\]: path .* is outside ANIM_MODEL_ROOTS",
        ),
        ({"loras": ["tiny:lcm_lora:9"]}, r"^loras\[0\] scale: must be a number in \[-2, 2\]"),
        ({"loras": ["tiny:lcm_lora", "tiny:lcm_lora:0.5"]}, r"^loras\[1\]: 'tiny:lcm_lora' is"),
        ({"loras": ["store://loras/Bad Name"]}, r"^loras\[0\] \(LoRA name\): must be"),
        ({"loras": ["ftp://x/y"]}, r"^loras\[0\]: unsupported scheme"),
        ({"base_model": "{m}/model.ckpt"}, r"^base_model: .*pickle checkpoint"),
        ({"base_model": "../../etc"}, r"^base_model: path .* outside ANIM_MODEL_ROOTS"),
        ({"controlnet": "tiny:nothing"}, r"^controlnet: tiny component must be one of"),
        ({"preset": "turbo"}, r"^preset: must be empty \(quality\) or fast"),
        ({"preset": "fast", "guidance": 7.5}, r"^guidance \(fast preset, LCM\): must be"),
        ({"init_upload_id": "../x"}, r"^init_upload_id: must be 32 lowercase hex"),
    ],
)
def test_override_errors_name_the_field(models, tiny_cache_dir, fields, message) -> None:
    fields = {k: v.format(m=models) if isinstance(v, str) else v for k, v in fields.items()}
    req = animation_pb2.CreateAnimationRequest(idea="a fox", frames=2, profile="tiny", **fields)
    settings = _settings(models, tiny_cache_dir)
    with pytest.raises(ValueError, match=message):
        validate_create(req, profile_names=["tiny"], default_profile="tiny", settings=settings)


def test_lora_override_syntax_and_single_file_base(models, tiny_cache_dir) -> None:
    settings = _settings(models, tiny_cache_dir, ANIM_TINY_VAE="true")
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


def test_fast_preset_stacks_lcm_on_the_style_lora(models, tiny_cache_dir) -> None:
    settings = _settings(models, tiny_cache_dir)
    req = animation_pb2.CreateAnimationRequest(
        idea="a fox",
        frames=2,
        profile="tiny",
        preset="fast",
        loras=[f"{models}/lcm/pytorch_lora_weights.safetensors:0.6"],
        strength=0.15,
    )
    profile = resolve_profile(req, settings)
    board = parse_storyboard(
        {"title": "t", "frames": [{"prompt": "a fox in a field"}, {"prompt": "a fox by a river"}]}
    )
    specs = resolve_frames("0" * 32, req, 5, board, profile)
    assert (specs[1].preset, specs[1].scheduler, specs[1].steps) == ("fast", "LCM", 4)
    assert round(specs[1].guidance, 6) == 1.5
    cache = PipelineCache(settings)
    frame0 = render_frame(specs[0], cache=cache, settings=settings)
    source = Image.open(io.BytesIO(frame0.png))
    result = render_frame(specs[1], source=source, cache=cache, settings=settings)
    record = result.record
    assert record["scheduler_class"] == "LCMScheduler" and record["preset"] == "fast"
    assert (record["steps_requested"], record["steps"]) == (4, img2img_steps(4, 0.15)) == (4, 7)
    assert record["steps_effective"] >= 1
    assert [(lo["scale"], lo["active"]) for lo in record["loras"]] == [(0.6, True), (1.0, True)]
    assert all(lo["modules"] > 0 for lo in record["loras"])
    assert record["lora_fused"] is True


def test_prompts_over_77_tokens_are_refused_or_cut_and_recorded(tiny_settings) -> None:
    long_prompt = ", ".join(["a small red fox under a tall old tree"] * 12)
    profile = load_profile("tiny", tiny_settings)
    cache = PipelineCache(tiny_settings)
    with pytest.raises(ValueError, match=r"^prompt: \d+ CLIP tokens, the limit is 77"):
        render_frame(_spec(profile, prompt=long_prompt), cache=cache, settings=tiny_settings)
    cut = render_frame(
        _spec(profile, prompt=long_prompt, truncate_prompt=True),
        cache=cache,
        settings=tiny_settings,
    )
    assert cut.record["prompt_tokens"] > limits.CLIP_MAX_TOKENS
    dropped = cut.record["prompt_dropped"].replace(" ,", ",")  # CLIP decodes "tree ,"
    assert dropped and long_prompt.endswith(dropped)


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


def test_init_images_are_checked_and_reencoded() -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(jpeg, format="JPEG")
    png = uploads.validate_image(jpeg.getvalue())
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (40, 30))
    good = _png((64, 64))
    cases = [
        (b"GIF89a not what we take", r"not a PNG, JPEG or WebP image \(by its signature\)"),
        (good[: len(good) // 2], r"not a readable PNG image"),
        (_png((4097, 4096), "1"), r"4097x4096 = 16781312 pixels, the limit is 16777216"),
        (good + b"\0" * 64, None),  # trailing bytes after IEND are harmless
    ]
    for data, message in cases:
        if message is None:
            assert uploads.validate_image(data) == uploads.validate_image(good)
            continue
        with pytest.raises(ValueError, match=rf"^init_upload_id: .*{message}"):
            uploads.validate_image(data)
    with pytest.raises(ValueError, match=r"^content_type: must be one of image/png"):
        uploads.check_request("image/gif", 10)
    with pytest.raises(
        ValueError, match=rf"^size_bytes: must be an integer in 1\.\.{limits.UPLOAD_BYTES}"
    ):
        uploads.check_request("image/png", limits.UPLOAD_BYTES + 1)


def test_gpu_benchmark_smoke_run_on_cpu() -> None:
    """bench/gpu_frame.py --tiny: every line prints with a floor and a ratio."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_frame.py"),
            "--tiny",
            "--no-compile",
            "--steps",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("(")]
    assert [line[:3] for line in lines[:5]] == ["(a)", "(b)", "(c)", "(d)", "(e)"]
    for line in lines[:5]:
        assert " ms   floor " in line and " TFLOP" in line and "x" in line
    assert "1 denoising steps" in lines[4]  # the fast preset: 4 steps raised to 7, one runs
    assert "10 denoising steps" in lines[0] and "1 denoising steps" in lines[1]  # 10 x 0.15
