"""LoRA files in every layout load to the same weights; failures name the file; fusing is exact.

The tiny LCM-LoRA stand-in's matrices are written in the three layouts SD-1.5 LoRAs come
in (diffusers/PEFT, kohya/A1111, the old attention-processor one) and loaded through the
renderer's own code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import locate
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.services.renderer import lora_files
from ghibli_anim.services.renderer.diffusion import render_frame
from ghibli_anim.services.renderer.pipelines import PipelineCache

PROMPT = "a small dragon glides over a quiet medieval town at dusk, ghibli style"


def to_kohya(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers keys (``unet.a.b.to_q.lora.down.weight``) -> kohya (``lora_unet_a_b_to_q...``)."""
    out = {}
    for key, tensor in state.items():
        module, half = re.fullmatch(r"unet\.(.+)\.lora\.(down|up)\.weight", key).groups()
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_{half}.weight"] = tensor
        if half == "down":  # alpha = rank: a scale of 1, as in the diffusers file
            out[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0]))
    return out


def to_attn_procs(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers keys -> the old ``...attn1.processor.to_q_lora.down.weight`` layout."""
    return {
        re.sub(
            r"\.(to_[qkv]|to_out)(?:\.0)?\.lora\.(down|up)\.",
            r".processor.\1_lora.\2.",
            key.removeprefix("unet."),
        ): tensor
        for key, tensor in state.items()
    }


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on a shared 2-core machine: one torch thread is faster than two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory, tiny_settings: Settings) -> Path:
    """ANIM_MODEL_ROOTS with the same LoRA in three layouts, and two that fit nothing."""
    root = tmp_path_factory.mktemp("models")
    state = load_file(
        Path(locate("tiny:lcm_lora", tiny_settings)) / lora_files.DEFAULT_WEIGHT_NAMES[0]
    )
    save_file(state, root / "diffusers.safetensors")
    save_file(to_kohya(state), root / "kohya.safetensors")
    save_file(to_attn_procs(state), root / "attn_procs.safetensors")
    some = next(iter(state.values()))
    save_file(
        {
            "lora_unet_no_such_block_to_q.lora_down.weight": some,
            "lora_unet_no_such_block_to_q.lora_up.weight": some.T.contiguous(),
        },
        root / "elsewhere.safetensors",
    )
    save_file({"model.weight": some}, root / "not_a_lora.safetensors")
    return root


@pytest.fixture(scope="module")
def settings(lora_root: Path, tiny_settings: Settings) -> Settings:
    env = {
        "ANIM_CACHE_DIR": str(tiny_settings["ANIM_CACHE_DIR"]),
        "ANIM_MODEL_ROOTS": str(lora_root),
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        "ANIM_STORE": "local",
    }
    return config.load("client", env)


@pytest.fixture(scope="module")
def pipe(tiny_settings: Settings):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        locate("tiny:pipeline", tiny_settings), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe) -> np.ndarray:
    return pipe(
        PROMPT,
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    ).images[0]


def test_formats_are_told_apart_by_their_keys(lora_root: Path) -> None:
    found = {
        name: lora_files.detect_format(load_file(lora_root / f"{name}.safetensors").keys())
        for name in ("diffusers", "kohya", "attn_procs")
    }
    assert found == {"diffusers": "diffusers", "kohya": "kohya", "attn_procs": "attn_procs"}
    with pytest.raises(ValueError, match=r"cannot tell the LoRA format .*model\.weight"):
        lora_files.detect_format(["model.weight"])


def test_same_matrices_in_every_format_give_the_same_frame(pipe, lora_root, settings) -> None:
    baseline = _run(pipe)
    outputs = {}
    for name in ("diffusers", "kohya", "attn_procs"):
        path = str(lora_root / f"{name}.safetensors")
        found = lora_files.find_file(path, "", settings, f"loras[{name}]")
        loaded = lora_files.load_lora(pipe, found, name, f"loras[{name}]")
        assert (loaded.format, loaded.modules, loaded.pairs) == (name, 32, 32)
        assert loaded.file.sha256 == found.sha256 and len(found.sha256) == 64
        pipe.set_adapters([name])
        outputs[name] = _run(pipe)
    assert np.abs(outputs["diffusers"] - baseline).max() > 1e-3  # the LoRA does something
    assert np.abs(outputs["kohya"] - outputs["diffusers"]).max() <= 1e-5
    assert np.abs(outputs["attn_procs"] - outputs["diffusers"]).max() <= 1e-5
    pipe.delete_adapters(list(outputs))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # peft refuses targets it cannot find; a file that loads silently is counted.
        ("elsewhere", r"elsewhere\.safetensors.*(matched no layer|not found in the base model)"),
        ("not_a_lora", r"not_a_lora\.safetensors\): cannot tell the LoRA format"),
    ],
)
def test_a_lora_that_fits_nothing_is_an_error_naming_the_file(
    pipe, lora_root, settings, name: str, message: str
) -> None:
    found = lora_files.find_file(str(lora_root / f"{name}.safetensors"), "", settings, "loras[0]")
    with pytest.raises(ValueError, match=rf"^loras\[0\].*{message}"):
        lora_files.load_lora(pipe, found, "bad", "loras[0]")
    assert "bad" not in {a for names in pipe.get_list_adapters().values() for a in names}


def _spec(profile: types_pb2.Profile, *sources: tuple[str, float]) -> types_pb2.FrameSpec:
    spec = types_pb2.FrameSpec(
        index=0,
        prompt=PROMPT,
        seed=7,
        guidance=7.5,
        steps=3,
        scheduler="DDIM",
        width=64,
        height=64,
        continuity=types_pb2.CONTINUITY_CUT,
        profile=profile,
    )
    del spec.profile.loras[:]
    for source, scale in sources:
        spec.profile.loras.add(source=source, scale=scale)
    return spec


def _pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def test_fused_and_unfused_agree_and_unfusing_restores_the_weights(lora_root, settings) -> None:
    profile = load_profile("tiny", settings)
    kohya = (str(lora_root / "kohya.safetensors"), 0.7)
    unfused = PipelineCache(config.load("client", {**_env(settings), "ANIM_FUSE_LORA": "false"}))
    fused = PipelineCache(settings)
    plain = render_frame(_spec(profile), cache=unfused, settings=unfused.settings)
    slow = render_frame(_spec(profile, kohya), cache=unfused, settings=unfused.settings)
    fast = render_frame(_spec(profile, kohya), cache=fused, settings=settings)
    assert (slow.record["lora_fused"], fast.record["lora_fused"]) == (False, True)
    assert slow.png != plain.png
    assert np.abs(_pixels(fast.png) - _pixels(slow.png)).max() <= 1  # rounding of the merge
    # Another scale, then none: the fused cache restores the saved weights exactly, so
    # a frame never depends on the jobs this process rendered before.
    render_frame(_spec(profile, (kohya[0], 0.3)), cache=fused, settings=settings)
    assert render_frame(_spec(profile), cache=fused, settings=settings).png == plain.png
    again = render_frame(_spec(profile, kohya), cache=fused, settings=settings)
    assert again.png == fast.png and len(fused) == 1


def _env(settings: Settings) -> dict[str, str]:
    return {
        "ANIM_CACHE_DIR": str(settings["ANIM_CACHE_DIR"]),
        "ANIM_MODEL_ROOTS": os.pathsep.join(str(r) for r in settings["ANIM_MODEL_ROOTS"]),
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        "ANIM_STORE": "local",
    }
