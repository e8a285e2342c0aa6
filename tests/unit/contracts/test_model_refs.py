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


# -- which files of a hub repository a load reads --
#
# The listings below are SYNTHETIC: file names laid out the way diffusers and transformers
# repositories lay them out, with made-up sizes (each file's size is unique, so a sum tells
# which files were taken). They are not any real repository's listing.

HubFile = model_refs.HubFile

SD_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": [None, None],
    "requires_safety_checker": True,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

SD_NAMES = [
    ".gitattributes",
    "README.md",
    "model_index.json",
    "v1-inference.yaml",
    "v1-5-pruned-emaonly.ckpt",
    "v1-5-pruned-emaonly.safetensors",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json",
    "safety_checker/model.fp16.safetensors",
    "safety_checker/model.safetensors",
    "safety_checker/pytorch_model.bin",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.safetensors",  # no fp16 variant: the plain one is taken
]
SD_LISTING = [HubFile(name, 10**i) for i, name in enumerate(SD_NAMES)]

CONFIGS = [
    "feature_extractor/preprocessor_config.json",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "vae/config.json",
]


def _paths(files: list[model_refs.HubFile]) -> list[str]:
    return [f.path for f in files]


def test_a_pipeline_takes_its_components_plain_safetensors_without_the_safety_checker() -> None:
    files = model_refs.pipeline_files(SD_LISTING, SD_INDEX)
    weights = [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert _paths(files) == sorted(CONFIGS + weights)
    sizes = {f.path: f.size for f in SD_LISTING}
    assert model_refs.total_size(files) == sum(sizes[p] for p in CONFIGS + weights)


def test_the_fp16_variant_is_taken_where_a_component_has_it() -> None:
    files = model_refs.pipeline_files(SD_LISTING, SD_INDEX, variant="fp16")
    weights = [
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert _paths(files) == sorted(CONFIGS + weights)


def test_the_configs_of_a_single_file_checkpoint() -> None:
    """diffusers' patterns for ``from_single_file(config=REPO)``: every .json and .txt."""
    listing = [*SD_LISTING, HubFile("spiece.model", 1), HubFile("text_encoder/spiece.model", 2)]
    assert _paths(model_refs.single_file_config_files(listing)) == sorted(
        [*CONFIGS, "safety_checker/config.json", "text_encoder/spiece.model"]
    )


def test_the_components_come_from_model_index() -> None:
    assert model_refs.pipeline_components(SD_INDEX) == [
        "feature_extractor",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "unet",
        "vae",
    ]
    # Only the components the index names are taken, whatever else the repository holds.
    index = {k: v for k, v in SD_INDEX.items() if k != "unet"}
    assert not any(f.path.startswith("unet/") for f in model_refs.pipeline_files(SD_LISTING, index))


def test_pipeline_errors_name_the_field_and_the_component() -> None:
    with pytest.raises(ValueError) as info:
        model_refs.pipeline_files(SD_LISTING[3:], SD_INDEX, where="base_model (a/b)")
    assert str(info.value) == "base_model (a/b): model_index.json is not in the repository"
    pickles = [f for f in SD_LISTING if not f.path.startswith("vae/diffusion_pytorch_model.s")]
    with pytest.raises(ValueError) as info:
        model_refs.pipeline_files(pickles, SD_INDEX, where="base_model (a/b)")
    assert str(info.value) == (
        "base_model (a/b) (vae): folder 'vae' has neither diffusion_pytorch_model.safetensors "
        "nor model.safetensors; it has diffusion_pytorch_model.bin"
    )
    no_vae = [f for f in SD_LISTING if not f.path.startswith("vae/")]
    with pytest.raises(ValueError) as info:
        model_refs.pipeline_files(no_vae, SD_INDEX, where="base_model (a/b)")
    assert str(info.value) == "base_model (a/b) (vae): folder 'vae' holds no files"


def test_a_variant_alone_is_not_the_plain_weights() -> None:
    listing = [HubFile("config.json", 1), HubFile("diffusion_pytorch_model.fp16.safetensors", 2)]
    assert _paths(model_refs.folder_files(listing, variant="fp16")) == [
        "config.json",
        "diffusion_pytorch_model.fp16.safetensors",
    ]
    with pytest.raises(ValueError) as info:
        model_refs.folder_files(listing, where="controlnet (a/b)")
    assert str(info.value) == (
        "controlnet (a/b): has neither diffusion_pytorch_model.safetensors nor "
        "model.safetensors; it has diffusion_pytorch_model.fp16.safetensors"
    )
    with pytest.raises(ValueError, match=r"model\.safetensors \(or their bf16 variant\); it has"):
        model_refs.folder_files([listing[0], HubFile("model.bin", 3)], variant="bf16")


def test_a_model_at_the_top_of_its_repository() -> None:
    """A transformers model (depth estimator, captioner) or a ControlNet: configs,
    tokenizer files and safetensors weights, nothing from its folders or other formats."""
    listing = [
        HubFile(name, 1)
        for name in (
            "README.md",
            "config.json",
            "model.safetensors",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.fp16-00001-of-00001.safetensors",
            "model.safetensors.index.fp16.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
            "tf_model.h5",
            "preprocessor_config.json",
            "vocab.txt",
            "spiece.model",
            "images/sample.png",
            "onnx/model.onnx",
        )
    ]
    assert _paths(model_refs.folder_files(listing)) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "spiece.model",
        "vocab.txt",
    ]
    assert _paths(model_refs.folder_files(listing, variant="fp16")) == [
        "config.json",
        "model.fp16-00001-of-00001.safetensors",
        "model.safetensors.index.fp16.json",
        "preprocessor_config.json",
        "spiece.model",
        "vocab.txt",
    ]
    assert _paths(model_refs.folder_files(listing, weights=False)) == [
        "config.json",
        "preprocessor_config.json",
        "spiece.model",
        "vocab.txt",
    ]


def test_a_folder_without_weights_is_taken_whole() -> None:
    """As diffusers takes a scheduler or tokenizer folder: every file in it."""
    listing = [
        HubFile("tokenizer/vocab.json", 1),
        HubFile("tokenizer/README.md", 2),
        HubFile("tokenizer/extra/notes.md", 3),
        HubFile("tokenizer2/vocab.json", 4),
        HubFile("unet/config.json", 5),
    ]
    assert _paths(model_refs.folder_files(listing, "tokenizer")) == [
        "tokenizer/README.md",
        "tokenizer/extra/notes.md",
        "tokenizer/vocab.json",
    ]
    with pytest.raises(ValueError) as info:
        model_refs.folder_files(listing, "text_encoder", where="x")
    assert str(info.value) == "x: folder 'text_encoder' holds no files"


def test_a_folder_inside_a_repository_is_read_whole() -> None:
    """``owner/name/folder`` is what ``locate`` downloads: everything under the folder."""
    listing = [
        HubFile("tokenizer/vocab.json", 1),
        HubFile("tokenizer/sub/x.bin", 2),
        HubFile("tokenizer2/vocab.json", 3),
    ]
    assert _paths(model_refs.subfolder_files(listing, "tokenizer/")) == [
        "tokenizer/sub/x.bin",
        "tokenizer/vocab.json",
    ]
    for folder in ("missing", "", "/"):
        with pytest.raises(ValueError) as info:
            model_refs.subfolder_files(listing, folder, where="tokenizer (a/b/missing)")
        assert (
            str(info.value) == f"tokenizer (a/b/missing): the repository has no folder {folder!r}"
        )


def test_the_lora_file_is_the_one_the_renderer_picks() -> None:
    both = [
        HubFile("README.md", 1),
        HubFile("pytorch_lora_weights.bin", 2),
        HubFile("pytorch_lora_weights.safetensors", 3),
        HubFile("v2_pytorch_lora_weights.safetensors", 4),
    ]
    assert model_refs.lora_file(both).path == "pytorch_lora_weights.safetensors"
    assert model_refs.lora_file(both[:2] + both[3:]).path == "pytorch_lora_weights.bin"
    named = model_refs.lora_file(both, "v2_pytorch_lora_weights.safetensors")
    assert named == HubFile("v2_pytorch_lora_weights.safetensors", 4)
    assert model_refs.lora_file([both[0], both[3]]).path == "v2_pytorch_lora_weights.safetensors"
    with pytest.raises(ValueError) as info:
        model_refs.lora_file(both, "v3.safetensors", where="loras[0] (a/b)")
    assert str(info.value) == "loras[0] (a/b): the repository has no file 'v3.safetensors'"
    with pytest.raises(ValueError) as info:
        model_refs.lora_file(
            [both[0], both[3], HubFile("x.safetensors", 5)], where="lcm_lora (a/b)"
        )
    assert str(info.value) == (
        "lcm_lora (a/b): the repository holds 2 .safetensors files and none named "
        "pytorch_lora_weights.safetensors; name one with weight_name"
    )
