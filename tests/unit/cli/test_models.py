"""`ghibli-anim models fetch` (cli/models.py): which hub files it downloads, what it prints
first, and that a render then loads from the cache alone.

The Hugging Face Hub cannot be reached from the tests: ``support.hub_server`` serves the
part of its HTTP API that huggingface_hub uses (listings, file metadata, downloads), over
repositories made of the tiny models plus files no render reads (a safety checker, pickle
and fp16 copies, a full checkpoint). huggingface_hub and diffusers run unchanged against
it (``HF_ENDPOINT``); each run is a fresh process, since both read it when imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.hub_server import HubServer

from ghibli_anim.cli import models
from ghibli_anim.contracts import model_refs, profiles
from ghibli_anim.contracts.model_refs import HubFile, tiny_dir
from ghibli_anim.services.renderer import lora_files

PROFILE = """
[profiles.mine]
base_model = "acme/sd"
controlnet = "acme/controlnet"
depth_model = "acme/depth"
captioner = "acme/blip"
lcm_lora = "acme/lcm"
taesd = "acme/taesd"
scheduler = "PNDM"
width = 64
height = 64
steps = 10
guidance = 7
strength = 0.3

[[profiles.mine.loras]]
source = "acme/style"
scale = 0.8
weight_name = "{weight_name}"
"""

# What no render reads, added to the tiny models' own files.
EXTRA = {
    "acme/sd": {
        "README.md": b"# sd\n",
        "v1-5-pruned-emaonly.ckpt": b"c" * 7000,
        "v1-5-pruned-emaonly.safetensors": b"s" * 6000,
        "safety_checker/config.json": b"{}",
        "safety_checker/model.safetensors": b"x" * 5000,
        "unet/diffusion_pytorch_model.bin": b"b" * 3000,
        "unet/diffusion_pytorch_model.non_ema.safetensors": b"n" * 3000,
        "feature_extractor/preprocessor_config.json": b'{"crop_size": 224}',
    },
    "acme/controlnet": {"diffusion_pytorch_model.bin": b"b" * 900},
    "acme/depth": {"tf_model.h5": b"h" * 900, "README.md": b"# depth\n"},
    "acme/blip": {"pytorch_model.bin": b"b" * 900},
    "acme/style": {"v2_pytorch_lora_weights.safetensors": b"v" * 800, "README.md": b"#\n"},
}
TINY = {
    "acme/sd": "pipeline",
    "acme/controlnet": "controlnet",
    "acme/depth": "depth",
    "acme/blip": "blip",
    "acme/lcm": "lcm_lora",
    "acme/taesd": "taesd",
    "acme/style": "lcm_lora",  # any LoRA file of the SD-1.5 shape
}
# The fp16 copies of the pipeline's weights (same bytes, the variant's names).
FP16 = {
    "text_encoder/model.fp16.safetensors": "text_encoder/model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors": "unet/diffusion_pytorch_model.safetensors",
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_settings) -> HubServer:
    root = tmp_path_factory.mktemp("hub")
    for repo, component in TINY.items():
        shutil.copytree(tiny_dir(tiny_settings) / component, root / repo)
        for name, data in EXTRA.get(repo, {}).items():
            (root / repo / name).parent.mkdir(parents=True, exist_ok=True)
            (root / repo / name).write_bytes(data)
    sd = root / "acme/sd"
    for variant, plain in FP16.items():
        shutil.copyfile(sd / plain, sd / variant)
    index = json.loads((sd / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (sd / "model_index.json").write_text(json.dumps(index, indent=2))
    server = HubServer(root)
    yield server
    server.close()


def _repo_files(hub: HubServer, repo: str) -> dict[str, int]:
    return {name: path.stat().st_size for name, path in hub.files(repo).items()}


def _listing(hub: HubServer, repo: str) -> list[HubFile]:
    return [HubFile(name, size) for name, size in _repo_files(hub, repo).items()]


def _run(
    hub: HubServer, tmp_path: Path, args: list[str], **env: str
) -> subprocess.CompletedProcess:
    profile = tmp_path / "profiles.toml"
    if not profile.exists():
        profile.write_text(PROFILE.format(weight_name=""))
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full = {
        **inherited,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "ANIM_PROFILES_FILE": str(profile),
        "ANIM_CACHE_DIR": str(tmp_path / "cache"),
        "ANIM_STORE": "local",
        **env,
    }
    return subprocess.run(
        [sys.executable, *args], env=full, capture_output=True, text=True, timeout=240
    )


def _fetch(hub, tmp_path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    return _run(
        hub, tmp_path, ["-m", "ghibli_anim.cli.main", "models", "fetch", "mine", *flags], **env
    )


def _cached(tmp_path: Path, repo: str) -> set[str]:
    """The files of ``repo`` in the HF cache (its one snapshot)."""
    snapshots = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return set()
    (snapshot,) = snapshots.iterdir()
    return {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}


PIPELINE = {
    "feature_extractor/preprocessor_config.json",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}


def test_fetch_downloads_only_what_a_render_reads_and_says_how_much_first(
    hub: HubServer, tmp_path: Path
) -> None:
    hub.requests.clear()
    done = _fetch(hub, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _cached(tmp_path, "acme/sd") == PIPELINE
    assert _cached(tmp_path, "acme/style") == {"pytorch_lora_weights.safetensors"}
    for repo in ("acme/controlnet", "acme/depth", "acme/blip", "acme/lcm", "acme/taesd"):
        assert _cached(tmp_path, repo) == set(), repo  # not without --depth / --all
    sd, style = _repo_files(hub, "acme/sd"), _repo_files(hub, "acme/style")
    total = sum(sd[p] for p in PIPELINE) + style["pytorch_lora_weights.safetensors"]
    # model_index.json came first: the plan reads it.
    missing = total - sd["model_index.json"]
    lines = done.stderr.splitlines()
    assert lines[0] == (
        f"profile mine: {models.human(total)} in {len(PIPELINE) + 1} files, "
        f"{models.human(missing)} ({missing} bytes) to download (the ControlNet and depth model: "
        "--depth; every model the profile names: --all)"
    )
    assert lines[1:4] == [
        f"  base_model: acme/sd: {len(PIPELINE)} files, "
        f"{models.human(sum(sd[p] for p in PIPELINE))}",
        f"  tokenizer: acme/sd/tokenizer: 4 files, "
        f"{models.human(sum(v for k, v in sd.items() if k.startswith('tokenizer/')))}",
        f"  loras[0]: acme/style: 1 files, "
        f"{models.human(style['pytorch_lora_weights.safetensors'])}",
    ]
    # huggingface_hub's own progress bar follows the plan.
    assert "Fetching" in done.stderr.split(lines[3], 1)[1]
    downloaded = {path for method, path in hub.requests if "/resolve/" in path and method == "GET"}
    assert not any("safety_checker" in p or p.endswith((".bin", ".ckpt")) for p in downloaded)

    # Everything is there: nothing more to download, offline too.
    again = _fetch(hub, tmp_path, HF_HUB_OFFLINE="1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert ", 0 B (0 bytes) to download" in again.stderr


def test_a_render_loads_offline_from_what_fetch_took(hub: HubServer, tmp_path: Path) -> None:
    """The renderer's own loading calls, offline: diffusers checks the pipeline's files
    against the listing fetch cached, so a missing one would fail here."""
    assert _fetch(hub, tmp_path, "--depth").returncode == 0
    code = (
        "import torch\n"
        "from diffusers import ControlNetModel, StableDiffusionPipeline\n"
        "from transformers import AutoImageProcessor, AutoModelForDepthEstimation\n"
        "from ghibli_anim.services.renderer import lora_files\n"
        "pipe = StableDiffusionPipeline.from_pretrained('acme/sd', dtype=torch.float32,\n"
        "    safety_checker=None, requires_safety_checker=False)\n"
        "ControlNetModel.from_pretrained('acme/controlnet', dtype=torch.float32)\n"
        "AutoImageProcessor.from_pretrained('acme/depth')\n"
        "AutoModelForDepthEstimation.from_pretrained('acme/depth')\n"
        "print(lora_files.find_file('acme/style', '', None, 'loras[0]').path.name)\n"
    )
    done = _run(hub, tmp_path, ["-c", code], HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "pytorch_lora_weights.safetensors"
    assert _cached(tmp_path, "acme/sd") == PIPELINE  # the loads took nothing more
    assert _cached(tmp_path, "acme/controlnet") == {
        "config.json",
        "diffusion_pytorch_model.safetensors",
    }
    assert _cached(tmp_path, "acme/depth") == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    }


def test_the_pipeline_filter_takes_what_diffusers_downloads(hub: HubServer, tmp_path: Path) -> None:
    """diffusers' own download for ``from_pretrained(REPO, variant=..., safety_checker=None)``
    takes exactly the files ``pipeline_files`` picks from the repository's listing, for the
    plain weights and for the fp16 variant."""
    code = (
        "import json, pathlib, sys\n"
        "from diffusers import DiffusionPipeline\n"
        "out = {}\n"
        "for variant in (None, 'fp16'):\n"
        "    root = pathlib.Path(DiffusionPipeline.download('acme/sd', variant=variant,\n"
        "        safety_checker=None, cache_dir=sys.argv[1] + '/' + str(variant)))\n"
        "    out[str(variant)] = sorted(p.relative_to(root).as_posix()\n"
        "        for p in root.rglob('*') if p.is_file())\n"
        "print(json.dumps(out))\n"
    )
    done = _run(hub, tmp_path, ["-c", code, str(tmp_path / "caches")])
    assert done.returncode == 0, done.stderr[-3000:]
    downloaded = json.loads(done.stdout)
    index = json.loads((hub.root / "acme/sd/model_index.json").read_text())
    for variant in (None, "fp16"):
        picked = model_refs.pipeline_files(_listing(hub, "acme/sd"), index, variant=variant)
        assert downloaded[str(variant)] == [f.path for f in picked], variant
        weights = {f.path for f in picked if f.path.endswith(".safetensors")}
        if variant:
            assert weights == {*FP16, "vae/diffusion_pytorch_model.safetensors"}
        else:
            assert weights == {p for p in PIPELINE if p.endswith(".safetensors")}


def test_depth_and_all_add_their_models(hub: HubServer, tmp_path: Path) -> None:
    done = _fetch(hub, tmp_path, "--depth")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(every model the profile names: --all)" in done.stderr.splitlines()[0]
    assert _cached(tmp_path, "acme/controlnet") == {
        "config.json",
        "diffusion_pytorch_model.safetensors",
    }
    assert _cached(tmp_path, "acme/depth") == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    }
    assert _cached(tmp_path, "acme/blip") == set()
    done = _fetch(hub, tmp_path, "--all")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.splitlines()[0].endswith(" to download")
    assert _cached(tmp_path, "acme/lcm") == {"pytorch_lora_weights.safetensors"}
    assert _cached(tmp_path, "acme/taesd") == {"config.json", "diffusion_pytorch_model.safetensors"}
    blip = set(_repo_files(hub, "acme/blip")) - {"pytorch_model.bin"}
    assert _cached(tmp_path, "acme/blip") == blip


def test_a_named_lora_file_is_the_one_fetched(hub: HubServer, tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text(
        PROFILE.format(weight_name="v2_pytorch_lora_weights.safetensors")
    )
    done = _fetch(hub, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _cached(tmp_path, "acme/style") == {"v2_pytorch_lora_weights.safetensors"}


def test_errors_are_one_line(hub: HubServer, tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text(PROFILE.format(weight_name="v3.safetensors"))
    done = _fetch(hub, tmp_path)
    assert done.returncode == 1
    assert done.stderr == (
        "error: profile mine: loras[0] (acme/style): the repository has no file 'v3.safetensors'\n"
    )
    (tmp_path / "profiles.toml").write_text(
        PROFILE.format(weight_name="").replace("acme/sd", "acme/nothing")
    )
    done = _fetch(hub, tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(
        "error: base_model (acme/nothing): cannot list its files on the hub ("
    )
    # The CLI's error handler adds what to do about the hub's answer (cli/errors.py).
    assert done.stderr.endswith("); check the model id; a private repository needs HF_TOKEN\n")
    # Offline with nothing cached: the same one line.
    done = _fetch(hub, tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr


def test_a_failed_download_is_one_line(hub: HubServer, tmp_path: Path) -> None:
    hub.broken.add("acme/style/pytorch_lora_weights.safetensors")
    try:
        done = _fetch(hub, tmp_path)
    finally:
        hub.broken.clear()
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("error: cannot download 'acme/style' (")
    assert done.stderr.endswith(
        "); the Hugging Face Hub did not answer as expected; try again later\n"
    )


def test_a_single_file_checkpoint_takes_its_configs_from_the_hub(
    hub: HubServer, tmp_path: Path, models: Path
) -> None:
    """base_model is a local .safetensors file; its configs and tokenizer come from the
    hub (``config``), as ``from_single_file`` reads them."""
    checkpoint = models / "tiny" / "pipeline.safetensors"
    (tmp_path / "profiles.toml").write_text(
        PROFILE.format(weight_name="").replace(
            '"acme/sd"', f'"{checkpoint}"\nconfig = "acme/sd"', 1
        )
    )
    done = _fetch(hub, tmp_path, ANIM_MODEL_ROOTS=str(models))
    assert done.returncode == 0, done.stderr[-3000:]
    texts = {p for p in hub.files("acme/sd") if p.endswith((".json", ".txt"))}
    assert _cached(tmp_path, "acme/sd") == texts
    code = (
        "import torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        f"StableDiffusionPipeline.from_single_file({str(checkpoint)!r}, config='acme/sd',\n"
        "    dtype=torch.float32, safety_checker=None, requires_safety_checker=False)\n"
    )
    done = _run(hub, tmp_path, ["-c", code], HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr[-3000:]


def test_what_each_flag_adds_for_the_shipped_profile() -> None:
    """No network: which fields of sd15-ghibli a fetch reads from the hub."""
    profile = profiles.load_profile("sd15-ghibli")

    def fields(**flags: bool) -> list[str]:
        return [field for field, _ in models._hub_refs(profile, **flags)]

    assert fields() == ["base_model", "tokenizer", "loras[0]"]
    assert fields(depth=True) == [
        "base_model",
        "tokenizer",
        "loras[0]",
        "controlnet",
        "depth_model",
    ]
    assert fields(everything=True) == [
        *fields(depth=True),
        "lcm_lora",
        "taesd",
        "captioner",
    ]


def test_the_lora_names_match_the_renderer() -> None:
    assert model_refs.LORA_WEIGHT_NAMES == lora_files.DEFAULT_WEIGHT_NAMES


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.00 kB"),
        (1_234_567, "1.23 MB"),
        (4_270_000_000, "4.27 GB"),
        (12_345_000_000_000_000, "12345.00 TB"),
    ],
)
def test_human_sizes(size: int, text: str) -> None:
    assert models.human(size) == text
