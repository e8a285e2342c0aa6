"""One LoRA training run: the models, the batches, the loss, the step loop, checkpoints.

The recipe is the one of diffusers' ``train_text_to_image_lora.py`` example, which
the seed paper ran, written for this project:

* base model, tokenizer and defaults come from a profile; the VAE and the text
  encoder are frozen, the UNet's own weights too: only a LoRA (peft) on its
  attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` trains;
* accelerate drives device placement and mixed precision; under mixed precision
  the frozen weights are cast to half precision and the LoRA parameters stay
  float32;
* loss: MSE between the UNet's prediction and the noise (or the velocity, for a
  v-prediction base), optionally Min-SNR weighted (``snr_gamma``), with optional
  noise offset; AdamW, gradient clipping, gradient checkpointing on request.

Determinism: every random draw of step ``s`` (which images, flips, caption
choice, latent sample, noise, timesteps) comes from a CPU generator seeded with
``sha256(seed, s)``, and the LoRA's initial values from the seed, so a run
resumed from a checkpoint continues exactly where the uninterrupted run would be.
Checkpoints and the final weights hold the LoRA only (saved the official way:
``get_peft_model_state_dict`` -> ``convert_state_dict_to_diffusers`` ->
``StableDiffusionPipeline.save_lora_weights``), never the frozen UNet.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ghibli_anim.contracts import model_refs, tokens
from ghibli_anim.contracts.config import Settings
from ghibli_anim.runtime import image_processors
from ghibli_anim.services.trainer import publish
from ghibli_anim.services.trainer.checkpoints import write_state
from ghibli_anim.services.trainer.images import square_crop, to_rgb
from ghibli_anim.services.trainer.options import TARGET_MODULES, Target, TrainOptions
from ghibli_anim.services.trainer.publish import MODEL_CARD, WEIGHT_NAME


@dataclass
class TrainResult:
    """What a run did and where its files are."""

    target: str
    weights: Path
    """The local weights file (in the output folder, or the work folder's ``final/``)."""
    model_card: Path
    seed: int
    start_step: int
    """0, or the step of the checkpoint it resumed from."""
    steps: int
    losses: list[float] = field(default_factory=list)
    """Training loss of each step this run took."""
    checkpoints: list[Path] = field(default_factory=list)
    validation_images: list[Path] = field(default_factory=list)
    store_keys: list[str] = field(default_factory=list)
    pushed_to: str = ""
    elapsed_s: float = 0.0

    @property
    def final_loss(self) -> float | None:
        """Mean loss of the last 10 steps; None when the run took no step."""
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else None


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one purpose (e.g. step 17) of a run seeded with ``seed``."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


class TrainingRun:
    """The models, optimizer and data of one run, and the steps, checkpoints and output of it."""

    def __init__(
        self,
        opts: TrainOptions,
        prof: Any,
        settings: Settings,
        accelerator: Any,
        ds: Any,
        seed: int,
        work_dir: Path,
        echo: Callable[[str], None],
    ) -> None:
        image_processors.use_pil_classes()  # before diffusers' pipelines import them
        import diffusers
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig
        from transformers import CLIPTextModel

        self.opts, self.prof, self.settings = opts, prof, settings
        self.accelerator, self.ds, self.seed = accelerator, ds, seed
        self.work_dir, self.echo = work_dir, echo
        self.device = accelerator.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            opts.mixed_precision, torch.float32
        )
        self.checkpoints: list[Path] = []
        self.validation_images: list[Path] = []
        self._perms: dict[int, list[int]] = {}

        base = model_refs.locate(prof.base_model, settings, field="profile.base_model")
        self.base = base
        try:
            scheduler_config = DDPMScheduler.load_config(base, subfolder="scheduler")
            self.noise_scheduler = DDPMScheduler.from_config(scheduler_config)
            inference_class = getattr(
                diffusers, scheduler_config.get("_class_name", ""), diffusers.PNDMScheduler
            )
            self.inference_scheduler = (inference_class, scheduler_config)
            self.tokenizer = tokens.load_tokenizer(prof, settings)
            self.text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
            self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
            unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        except OSError as exc:
            raise OSError(f"profile.base_model: cannot load {prof.base_model!r} ({exc})") from exc
        if self.noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"profile.base_model: prediction type "
                f"{self.noise_scheduler.config.prediction_type!r} is not supported"
            )
        for frozen in (self.vae, self.text_encoder, unet):
            frozen.requires_grad_(False)
        # The LoRA's initial values come from the seed (made on the CPU, in float32).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "lora-init"))
            unet.add_adapter(
                LoraConfig(
                    r=opts.rank,
                    lora_alpha=opts.rank,
                    init_lora_weights="gaussian",
                    target_modules=list(TARGET_MODULES),
                )
            )
        self.vae.to(self.device, dtype=self.weight_dtype)
        self.text_encoder.to(self.device, dtype=self.weight_dtype)
        unet.to(self.device, dtype=self.weight_dtype)
        if self.weight_dtype != torch.float32:
            cast_training_params(unet, dtype=torch.float32)  # the LoRA trains in float32
        if opts.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.lora_params = [p for p in unet.parameters() if p.requires_grad]
        if not self.lora_params:
            raise ValueError("profile.base_model: its UNet has no to_q/to_k/to_v/to_out.0 layer")
        optimizer = torch.optim.AdamW(
            self.lora_params, lr=opts.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
        )
        lr_scheduler = get_scheduler(
            opts.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=opts.lr_warmup_steps,
            num_training_steps=opts.steps,
        )
        self.unet, self.optimizer, self.lr_scheduler = accelerator.prepare(
            unet, optimizer, lr_scheduler
        )
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)
        first = ds.select_columns([opts.caption_column])[0][opts.caption_column]
        if isinstance(first, list):
            first = first[0] if first else ""
        self.validation_prompt = opts.validation_prompt or str(first) or "ghibli style"

    # -- checkpoint hooks: the LoRA only, never the whole UNet ----------------

    def _lora_state(self) -> dict[str, Any]:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet = self.accelerator.unwrap_model(self.unet)
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))

    def _save_hook(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        from diffusers import StableDiffusionPipeline

        if not self.accelerator.is_main_process:
            return
        for _ in models:
            weights.pop()  # accelerate must not write the frozen UNet
        StableDiffusionPipeline.save_lora_weights(
            output_dir,
            unet_lora_layers=self._lora_state(),
            weight_name=WEIGHT_NAME,
            safe_serialization=True,
        )

    def _load_hook(self, models: list[Any], input_dir: str) -> None:
        import torch
        from diffusers import StableDiffusionPipeline
        from diffusers.training_utils import cast_training_params
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import set_peft_model_state_dict

        while models:
            models.pop()  # loaded below, LoRA only
        state = StableDiffusionPipeline.lora_state_dict(input_dir, weight_name=WEIGHT_NAME)[0]
        unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        unet = self.accelerator.unwrap_model(self.unet)
        result = set_peft_model_state_dict(
            unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default"
        )
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"--resume: checkpoint has keys this LoRA lacks: {unexpected[:3]}")
        if self.weight_dtype != torch.float32:
            cast_training_params(unet, dtype=torch.float32)

    # -- data ---------------------------------------------------------------

    def _index(self, position: int) -> int:
        """The dataset row at ``position`` of the run's endless, epoch-shuffled stream."""
        import torch

        n = self.ds.num_rows
        epoch, offset = divmod(position, n)
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._perms = {epoch: torch.randperm(n, generator=gen).tolist()}
        return self._perms[epoch][offset]

    def batch(self, step: int, gen: Any) -> tuple[Any, Any]:
        """Pixel values in [-1, 1] and token ids of step ``step``'s batch."""
        import numpy as np
        import torch

        size = self.opts.batch_size
        rows = self.ds[[self._index(step * size + j) for j in range(size)]]
        pixels, texts = [], []
        for image, caption in zip(
            rows[self.opts.image_column], rows[self.opts.caption_column], strict=True
        ):
            square = square_crop(to_rgb(image), self.opts.resolution)
            array = torch.from_numpy(np.asarray(square, dtype=np.float32) / 127.5 - 1.0)
            array = array.permute(2, 0, 1)
            if self.opts.random_flip and torch.rand(1, generator=gen).item() < 0.5:
                array = array.flip(-1)
            pixels.append(array)
            if isinstance(caption, list):
                caption = (
                    caption[torch.randint(len(caption), (1,), generator=gen).item()]
                    if caption
                    else ""
                )
            texts.append(caption or "")
        ids = self.tokenizer(
            texts,
            max_length=self.tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return torch.stack(pixels), ids

    # -- the loop -------------------------------------------------------------

    def loss(self, pixels: Any, ids: Any, gen: Any) -> Any:
        """The (optionally Min-SNR weighted) denoising loss of one batch."""
        import torch
        import torch.nn.functional as F
        from diffusers.training_utils import compute_snr
        from diffusers.utils.torch_utils import randn_tensor

        device, dtype = self.device, self.weight_dtype
        with torch.no_grad():
            posterior = self.vae.encode(pixels.to(device, dtype)).latent_dist
            latents = posterior.sample(generator=gen)
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            latents = (latents - shift) * self.vae.config.scaling_factor
            hidden = self.text_encoder(ids.to(device), return_dict=False)[0]
        noise = randn_tensor(latents.shape, generator=gen, device=device, dtype=latents.dtype)
        if self.opts.noise_offset:
            offset = randn_tensor(
                (latents.shape[0], latents.shape[1], 1, 1),
                generator=gen,
                device=device,
                dtype=latents.dtype,
            )
            noise = noise + self.opts.noise_offset * offset
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=gen).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        pred = self.unet(noisy, timesteps, hidden, return_dict=False)[0]
        if self.opts.snr_gamma is None:
            return F.mse_loss(pred.float(), target.float(), reduction="mean")
        # Min-SNR weighting (Hang et al., 2023), as diffusers' example computes it.
        snr = compute_snr(self.noise_scheduler, timesteps)
        clipped = torch.minimum(snr, torch.full_like(snr, self.opts.snr_gamma))
        if self.noise_scheduler.config.prediction_type == "epsilon":
            weights = clipped / snr
        else:
            weights = clipped / (snr + 1)
        per_item = F.mse_loss(pred.float(), target.float(), reduction="none")
        per_item = per_item.mean(dim=list(range(1, per_item.ndim))) * weights
        return per_item.mean()

    def loop(self, start_step: int, on_step: Callable[[int, float, float], None]) -> TrainResult:
        """Train from ``start_step`` to the last step; ``on_step(done, loss, lr)`` after each."""
        import torch

        opts = self.opts
        result = TrainResult(
            target="",
            weights=Path(),
            model_card=Path(),
            seed=self.seed,
            start_step=start_step,
            steps=opts.steps,
        )
        self.unet.train()
        for step in range(start_step, opts.steps):
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "step", step))
            pixels, ids = self.batch(step, gen)
            loss = self.loss(pixels, ids, gen)
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(self.lora_params, opts.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach().item())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"training loss is {value} at step {step + 1}: lower --lr, or use "
                    "--mixed-precision bf16/no"
                )
            result.losses.append(value)
            done = step + 1
            on_step(done, value, self.lr_scheduler.get_last_lr()[0])
            if opts.checkpoint_every and (done % opts.checkpoint_every == 0 or done == opts.steps):
                self.checkpoint(done)
        result.checkpoints = list(self.checkpoints)
        result.validation_images = list(self.validation_images)
        return result

    def checkpoint(self, step: int) -> Path:
        """checkpoint-STEP/: accelerate's state (LoRA, optimizer, scheduler) + validation."""
        final = self.work_dir / f"checkpoint-{step}"
        partial = self.work_dir / f".checkpoint-{step}.tmp"
        shutil.rmtree(partial, ignore_errors=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.save_state(str(partial))
        write_state(partial, step, self.opts)
        images = self.validate(partial)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(partial, final)  # "latest" never sees half a checkpoint
        self.checkpoints.append(final)
        self.validation_images += [final / p.name for p in images]
        self.echo(f"checkpoint {final}" + (f" ({len(images)} validation images)" if images else ""))
        return final

    def validate(self, folder: Path) -> list[Path]:
        """Validation images of the LoRA as it is now, written into ``folder``."""
        import torch
        from diffusers import StableDiffusionPipeline

        count = self.opts.validation_images
        if not count:
            return []
        unet = self.accelerator.unwrap_model(self.unet)
        was_training = unet.training
        unet.eval()
        scheduler_class, config = self.inference_scheduler
        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=unet,
            scheduler=scheduler_class.from_config(config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        autocast = (
            torch.autocast(self.device.type, dtype=self.weight_dtype)
            if self.weight_dtype != torch.float32
            else contextlib.nullcontext()
        )
        paths = []
        try:
            for i in range(count):
                gen = torch.Generator().manual_seed(derive_seed(self.seed, "validation", i))
                with torch.inference_mode(), autocast:
                    image = pipe(
                        self.validation_prompt,
                        num_inference_steps=self.prof.steps,
                        guidance_scale=self.prof.guidance,
                        height=self.opts.resolution,
                        width=self.opts.resolution,
                        generator=gen,
                    ).images[0]
                path = folder / f"validation-{i}.png"
                image.save(path)
                paths.append(path)
        finally:
            unet.train(was_training)
        return paths

    def save_final(
        self, folder: Path, trigger: str, losses: list[float], target: Target
    ) -> tuple[Path, Path]:
        """The trained LoRA and its model card in ``folder``; return both paths."""
        from diffusers import StableDiffusionPipeline

        folder.mkdir(parents=True, exist_ok=True)
        StableDiffusionPipeline.save_lora_weights(
            str(folder),
            unet_lora_layers=self._lora_state(),
            weight_name=WEIGHT_NAME,
            safe_serialization=True,
        )
        card = folder / MODEL_CARD
        text = publish.model_card(
            self.opts,
            self.prof,
            self.settings,
            rows=self.ds.num_rows,
            seed=self.seed,
            trigger=trigger,
            losses=losses,
            target=target,
        )
        card.write_text(text, encoding="utf-8")
        return folder / WEIGHT_NAME, card

    def release(self) -> None:
        """Free the models (a long-lived process may train again)."""
        import torch

        self.accelerator.free_memory()
        for name in ("unet", "vae", "text_encoder", "optimizer", "lr_scheduler"):
            if hasattr(self, name):
                delattr(self, name)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
