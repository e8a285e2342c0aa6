"""services/trainer/train.py (`train-lora`) on the tiny models: learning, checkpoints and
resume, options, the store, and the renderer loading the result.

Random weights: the tests check that training lowers the loss on held-fixed
(noise, timestep) pairs, that a resumed run equals an uninterrupted one, and
that the renderer loads the result from the store, never how frames look."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from support.datasets import CAPTIONS, write_training_images
from support.frames import ddim_spec

from ghibli_anim.cli import train as trainer_cli
from ghibli_anim.contracts import keys
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import locate
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.runtime.store.local import LocalStore
from ghibli_anim.runtime.store.s3 import S3Store
from ghibli_anim.services.renderer.diffusion import render_frame
from ghibli_anim.services.renderer.pipelines import PipelineCache
from ghibli_anim.services.renderer.service import store_lora_resolver
from ghibli_anim.services.trainer import checkpoints, publish
from ghibli_anim.services.trainer.dataset import build_dataset
from ghibli_anim.services.trainer.options import LR_SCHEDULERS, MIXED_PRECISION, TrainOptions
from ghibli_anim.services.trainer.train import train_lora

LORA_NAME = "tiny-style"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory, tiny_settings: Settings) -> Path:
    """8 synthetic 64x64 images with captions, built by `dataset build --caption keep`."""
    images = tmp_path_factory.mktemp("train-images")
    write_training_images(images)
    out = tmp_path_factory.mktemp("train-data") / "dataset"
    report = build_dataset(images, out, settings=tiny_settings, profile="tiny", caption="keep")
    assert len(report.kept) == 8 and not report.skipped
    return out


@pytest.fixture(scope="module")
def s3(seaweed: SeaweedS3) -> Iterator[S3Store]:
    """A bucket of this module's own on the session's SeaweedFS."""
    store = S3Store(
        seaweed.endpoint,
        seaweed.access_key,
        seaweed.secret_key,
        f"t-lora-{uuid.uuid4().hex[:12]}",
        region=seaweed.region,
        retry_budget_s=10.0,
    )
    store.ensure_bucket()
    yield store
    store.delete_prefix("loras/")
    with contextlib.suppress(Exception):
        store._client.remove_bucket(store.bucket)


def _options(dataset_dir: Path, **changes: Any) -> TrainOptions:
    base = TrainOptions(
        dataset=str(dataset_dir),
        output="unset",
        profile="tiny",
        rank=4,
        lr=1e-2,
        steps=30,
        checkpoint_every=15,
        validation_images=1,
        seed=7,
        snr_gamma=5.0,
        noise_offset=0.05,
        random_flip=True,
        gradient_checkpointing=True,
    )
    return TrainOptions(**{**base.__dict__, **changes})


@pytest.fixture(scope="module")
def runs(
    dataset_dir: Path,
    s3: S3Store,
    tiny_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """One uninterrupted 30-step run to the store; one run of 15 steps resumed to 30."""
    root = tmp_path_factory.mktemp("runs")
    lines: list[str] = []
    full = train_lora(
        _options(dataset_dir, output=f"store://loras/{LORA_NAME}", work_dir=str(root / "full")),
        settings=tiny_settings,
        store=s3,
        echo=lines.append,
    )
    first = train_lora(
        _options(dataset_dir, output=str(root / "split"), steps=15),
        settings=tiny_settings,
        echo=lines.append,
    )
    resumed = train_lora(
        _options(dataset_dir, output=str(root / "split"), resume="latest"),
        settings=tiny_settings,
        echo=lines.append,
    )
    return {"full": full, "first": first, "resumed": resumed, "root": root, "lines": lines}


def _lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _probe_loss(pipe: Any, dataset_dir: Path) -> float:
    """Denoising MSE over fixed (image, noise, timestep) triples: 8 images x 2 timesteps."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(1234)
    total = 0.0
    with torch.no_grad():
        for i, caption in enumerate(CAPTIONS):
            with Image.open(dataset_dir / f"img{i}.png") as im:
                array = np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
            pixels = torch.from_numpy(array).permute(2, 0, 1)[None]
            latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
            ids = pipe.tokenizer(
                f"ghibli style, {caption}",
                padding="max_length",
                max_length=77,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            hidden = pipe.text_encoder(ids)[0]
            for t in (200, 700):
                noise = torch.randn(latents.shape, generator=gen)
                noisy = scheduler.add_noise(latents, noise, torch.tensor([t]))
                pred = pipe.unet(noisy, torch.tensor([t]), hidden).sample
                total += torch.nn.functional.mse_loss(pred, noise).item()
    return total / (2 * len(CAPTIONS))


def test_training_changes_the_lora_and_lowers_the_loss(runs, dataset_dir, tiny_settings) -> None:
    from diffusers import StableDiffusionPipeline

    full = runs["full"]
    assert (full.start_step, full.steps, len(full.losses)) == (0, 30, 30)
    final = _lora_tensors(full.weights)
    halfway = _lora_tensors(full.checkpoints[0] / publish.WEIGHT_NAME)
    assert set(final) == set(halfway)
    for target in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_k"):
        assert any(f".{target}.lora" in k for k in final), target
    ups = [k for k in final if "lora.up" in k or "lora_B" in k]
    assert ups, sorted(final)[:4]
    # peft starts every up-projection at zero: trained ones are not, and move on after 15.
    assert all(final[k].abs().max() > 0 for k in ups)
    assert any(not torch.equal(final[k], halfway[k]) for k in final)

    pipe = StableDiffusionPipeline.from_pretrained(
        locate("tiny:pipeline", tiny_settings), safety_checker=None, requires_safety_checker=False
    )
    before = _probe_loss(pipe, dataset_dir)
    pipe.load_lora_weights(str(full.weights.parent), weight_name=publish.WEIGHT_NAME)
    after = _probe_loss(pipe, dataset_dir)
    # 30 steps of a rank-4 LoRA take about 4% off here; random weights leave no more to say.
    assert after < before * 0.98, (before, after)


def test_resume_ends_where_an_uninterrupted_run_ends(runs) -> None:
    full, first, resumed = runs["full"], runs["first"], runs["resumed"]
    assert first.losses == full.losses[:15]  # same seed, same first half, bit for bit
    assert (resumed.start_step, len(resumed.losses)) == (15, 15)
    # Bit for bit: every draw of a step comes from (seed, step), and the checkpoint
    # restores the LoRA, AdamW's moments and the learning-rate schedule exactly.
    assert resumed.losses == full.losses[15:]
    a, b = _lora_tensors(full.weights), _lora_tensors(resumed.weights)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(
        f"resuming from {runs['root'] / 'split' / 'checkpoint-15'}" in line
        for line in runs["lines"]
    )


def test_checkpoints_hold_the_lora_optimizer_and_validation_images(runs) -> None:
    full = runs["full"]
    assert [p.name for p in full.checkpoints] == ["checkpoint-15", "checkpoint-30"]
    for checkpoint in full.checkpoints:
        names = {p.name for p in checkpoint.iterdir()}
        assert {
            publish.WEIGHT_NAME,
            "optimizer.bin",
            "scheduler.bin",
            checkpoints.STATE_FILE,
        } <= names
        assert "validation-0.png" in names
        with Image.open(checkpoint / "validation-0.png") as im:
            assert im.size == (64, 64)
        # The frozen UNet is never written: a checkpoint is the LoRA and its optimizer.
        assert sum(p.stat().st_size for p in checkpoint.iterdir()) < 2_000_000
        state = json.loads((checkpoint / checkpoints.STATE_FILE).read_text())
        assert state["step"] == int(checkpoint.name.split("-")[1])
        assert state["options"]["seed"] == 7 and state["options"]["rank"] == 4
    assert full.validation_images == [c / "validation-0.png" for c in full.checkpoints]


def test_output_in_the_store_with_a_model_card(runs, s3: S3Store) -> None:
    full = runs["full"]
    assert full.target == f"store://loras/{LORA_NAME}"
    assert s3.get(keys.lora_key(LORA_NAME)) == full.weights.read_bytes()
    card = s3.get(publish.lora_readme_key(LORA_NAME)).decode()
    assert card == full.model_card.read_text()
    for fact in (
        "| base model | tiny:pipeline |",
        "| trigger phrase | ghibli style |",
        "(8 images)",
        f'source = "store://loras/{LORA_NAME}"',
        "| steps | 30 (batch size 1) |",
        "| rank | 4 (alpha 4) on to_q, to_k, to_v, to_out.0 |",
        'instance_prompt: "ghibli style"',
    ):
        assert fact in card, fact
    assert "base_model:" not in card  # tiny:pipeline is no hub id


def test_renderer_loads_the_trained_lora_from_the_store(
    runs, s3: S3Store, tiny_settings: Settings, tmp_path: Path
) -> None:
    profile = load_profile("tiny", tiny_settings)
    spec = ddim_spec(profile, prompt="ghibli style, a red house on a hill", seed=11, steps=4)
    resolver = store_lora_resolver(s3, tmp_path / "lora-cache")
    cache = PipelineCache(tiny_settings, lora_resolver=resolver, max_entries=2)
    plain = render_frame(spec, cache=cache, settings=tiny_settings)
    spec.profile.loras.add(source=f"store://loras/{LORA_NAME}", scale=1.0)
    styled = render_frame(spec, cache=cache, settings=tiny_settings)
    assert styled.png != plain.png
    (used,) = styled.record["loras"]
    assert (used["source"], used["scale"]) == (f"store://loras/{LORA_NAME}", 1.0)
    assert plain.record["loras"] == []
    # The same spec again: the same bytes (the LoRA stays loaded, seeded noise).
    assert render_frame(spec, cache=cache, settings=tiny_settings).png == styled.png
    # Without a resolver, store:// sources are refused.
    with pytest.raises(ValueError, match=rf"store://loras/{LORA_NAME}"):
        render_frame(spec, cache=PipelineCache(tiny_settings), settings=tiny_settings)


def test_store_resolver_caches_by_content(runs, s3: S3Store, tmp_path: Path) -> None:
    resolve = store_lora_resolver(s3, tmp_path / "cache")
    first = resolve(f"store://loras/{LORA_NAME}")
    assert Path(first).read_bytes() == runs["full"].weights.read_bytes()
    assert resolve(f"store://loras/{LORA_NAME}") == first
    local = LocalStore(tmp_path / "runs")
    local.put(keys.lora_key("other"), b"version one")
    resolve_local = store_lora_resolver(local, tmp_path / "cache")
    one = resolve_local("store://loras/other")
    local.put(keys.lora_key("other"), b"version two")
    two = resolve_local("store://loras/other")
    assert one != two and Path(two).read_bytes() == b"version two"
    with pytest.raises(ValueError, match=r"store://loras/missing is not in the store"):
        resolve_local("store://loras/missing")
    with pytest.raises(ValueError, match=r"must be store://loras/NAME"):
        resolve_local("store://jobs/x")


def test_resume_refuses_other_options_and_fresh_runs_refuse_old_checkpoints(
    runs, dataset_dir: Path, tiny_settings: Settings
) -> None:
    split = runs["root"] / "split"
    with pytest.raises(ValueError, match=r"^--rank: the checkpoint checkpoint-30 was trained"):
        train_lora(
            _options(dataset_dir, output=str(split), rank=8, steps=40, resume="latest"),
            settings=tiny_settings,
        )
    with pytest.raises(ValueError, match=r"^--work-dir: .* holds checkpoints of an earlier run"):
        train_lora(_options(dataset_dir, output=str(split)), settings=tiny_settings)
    with pytest.raises(ValueError, match=r"^--steps: 20 is below the checkpoint's step 30"):
        train_lora(
            _options(dataset_dir, output=str(split), steps=20, resume="latest"),
            settings=tiny_settings,
        )


def test_dataset_without_image_or_caption_column(
    tmp_path: Path, dataset_dir: Path, tiny_settings: Settings
) -> None:
    no_captions = tmp_path / "no-captions"
    no_captions.mkdir()
    for name in ("img0.png", "img1.png"):
        shutil.copy(dataset_dir / name, no_captions / name)
    with pytest.raises(ValueError, match=r"^--dataset: no caption column \(looked for caption"):
        train_lora(_options(no_captions, output=str(tmp_path / "o")), settings=tiny_settings)
    with pytest.raises(ValueError, match=r"^--image-column: no column 'picture'"):
        train_lora(
            _options(dataset_dir, output=str(tmp_path / "o"), image_column="picture"),
            settings=tiny_settings,
        )
    with pytest.raises(ValueError, match=r"^--caption-column: 'image' does not hold text"):
        train_lora(
            _options(dataset_dir, output=str(tmp_path / "o"), caption_column="image"),
            settings=tiny_settings,
        )


def test_bad_options_name_the_flag(dataset_dir: Path, tiny_settings: Settings) -> None:
    cases = {
        "rank": (0, r"^--rank: must be an integer in 1\.\.256"),
        "lr": (0.0, r"^--lr: must be a number in \(0, 1\]"),
        "mixed_precision": ("fp8", r"^--mixed-precision: must be one of no, fp16, bf16"),
        "resolution": (65, r"^--resolution: .*multiple of 8"),
        "output": ("s3://x/y", r"^--output: must be a folder or store://loras/NAME"),
        "push_to_hub": ("bad id", r"^--push-to-hub: must be a hub repository id"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            options = _options(dataset_dir, **{"output": "out", name: value})
            train_lora(options, settings=tiny_settings)
    with pytest.raises(ValueError, match=r"^--output: must be store://loras/NAME"):
        train_lora(_options(dataset_dir, output="store://jobs/x"), settings=tiny_settings)
    with pytest.raises(ValueError, match=r"^--mixed-precision: fp16 needs a CUDA device"):
        train_lora(
            _options(dataset_dir, output="out", mixed_precision="fp16"), settings=tiny_settings
        )
    assert trainer_cli.LR_SCHEDULERS == LR_SCHEDULERS
    assert trainer_cli.MIXED_PRECISION == MIXED_PRECISION


def test_bf16_mixed_precision_keeps_the_lora_in_float32(
    dataset_dir: Path, tmp_path: Path, tiny_settings: Settings
) -> None:
    """bf16 autocast runs on CPUs too: frozen weights in bf16, the trained LoRA in float32."""
    result = train_lora(
        _options(
            dataset_dir,
            output=str(tmp_path / "bf16"),
            mixed_precision="bf16",
            steps=2,
            checkpoint_every=2,
            gradient_checkpointing=False,
        ),
        settings=tiny_settings,
    )
    assert {t.dtype for t in _lora_tensors(result.weights).values()} == {torch.float32}
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    with Image.open(result.checkpoints[0] / "validation-0.png") as im:
        assert im.size == (64, 64)
