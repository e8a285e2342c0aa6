"""devtools/tiny_models.py: same bytes every run, atomic writes, loadable like real models."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from support.files import run_python, tree

from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import tiny_dir
from ghibli_anim.devtools import tiny_models, tiny_tokenizer

TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0")


def test_same_bytes_in_another_process(tiny_settings: Settings, tmp_path: Path) -> None:
    again = tmp_path / "again"
    run_python(
        "from pathlib import Path\n"
        "from ghibli_anim.devtools import tiny_models\n"
        f"tiny_models.write_tiny_models(Path({str(again)!r}))\n"
    )
    first, second = tree(tiny_dir(tiny_settings)), tree(again)
    assert sorted({name.split("/")[0] for name in first}) == sorted(tiny_models.COMPONENTS)
    assert first.keys() == second.keys()
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []
    # The pipeline's tokenizer is the standalone one.
    tokenizer = {k: v for k, v in first.items() if k.startswith("tokenizer/")}
    assert tokenizer == {
        k.removeprefix("pipeline/"): v
        for k, v in first.items()
        if k.startswith("pipeline/tokenizer/")
    }


def test_no_temporary_folders_left(tiny_settings: Settings) -> None:
    assert sorted(p.name for p in tiny_dir(tiny_settings).iterdir()) == sorted(
        tiny_models.COMPONENTS
    )


def test_every_component_loads(tiny_settings: Settings) -> None:
    import torch
    from diffusers import AutoencoderTiny, ControlNetModel, StableDiffusionPipeline
    from PIL import Image
    from transformers import (
        AutoModelForDepthEstimation,
        BlipForConditionalGeneration,
        BlipProcessor,
        CLIPTokenizer,
        pipeline,
    )

    root = tiny_dir(tiny_settings)
    pipe = StableDiffusionPipeline.from_pretrained(root / "pipeline", safety_checker=None)
    assert pipe.vae_scale_factor == 2
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert isinstance(CLIPTokenizer.from_pretrained(root / "tokenizer"), CLIPTokenizer)

    controlnet = ControlNetModel.from_pretrained(root / "controlnet")
    assert controlnet.config.conditioning_embedding_out_channels == [16, 32]
    taesd = AutoencoderTiny.from_pretrained(root / "taesd")
    with torch.no_grad():
        latents = taesd.encode(torch.zeros(1, 3, 64, 64)).latents
    assert latents.shape == (1, 4, 32, 32)  # the tiny VAE's scale factor

    pipe.load_lora_weights(root / "lcm_lora", adapter_name="lcm")
    layers = [m for m in pipe.unet.modules() if "lcm" in getattr(m, "lora_A", {})]
    targets = [n for n, _ in pipe.unet.named_modules() if n.endswith(TARGETS)]
    assert len(layers) == len(targets) > 0  # every attention projection got the LoRA

    image = Image.new("RGB", (80, 48), (120, 160, 200))
    depth = pipeline("depth-estimation", model=str(root / "depth"))(image)["depth"]
    assert depth.size == (80, 48)
    assert AutoModelForDepthEstimation.from_pretrained(root / "depth").config.model_type == "dpt"

    blip = BlipForConditionalGeneration.from_pretrained(root / "blip")
    processor = BlipProcessor.from_pretrained(root / "blip")
    inputs = processor(images=image, return_tensors="pt")
    ids = blip.generate(**inputs, max_new_tokens=6, no_repeat_ngram_size=2)
    assert isinstance(processor.batch_decode(ids, skip_special_tokens=True)[0], str)


def test_concurrent_writers_all_succeed(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def write() -> None:
        barrier.wait()
        try:
            tiny_models.write_tiny_models(out, ["tokenizer"])
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in out.iterdir()] == ["tokenizer"]
    assert tree(out / "tokenizer") == tiny_tokenizer.tokenizer_files()


def test_loser_of_a_race_discards_its_copy(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "tiny"
    real = tiny_tokenizer.write_tokenizer

    def racing(folder: Path) -> None:
        real(folder)
        # Another process finishes first and renames its copy into place.
        winner = tmp_path / "winner"
        real(winner)
        (winner / "winner.txt").write_text("first")
        os.rename(winner, out / "tokenizer")

    monkeypatch.setattr(tiny_models, "write_tokenizer", racing)
    tiny_models.write_tiny_models(out, ["tokenizer"])
    assert (out / "tokenizer" / "winner.txt").read_text() == "first"
    assert [p.name for p in out.iterdir()] == ["tokenizer"]  # our temporary copy is gone


def test_existing_component_is_kept_unless_overwrite(tmp_path: Path) -> None:
    out = tiny_models.write_tiny_models(tmp_path / "tiny", ["tokenizer"])
    (out / "tokenizer" / "extra.txt").write_text("x")
    tiny_models.write_tiny_models(out, ["tokenizer"])
    assert (out / "tokenizer" / "extra.txt").exists()
    tiny_models.write_tiny_models(out, ["tokenizer"], overwrite=True)
    assert tree(out / "tokenizer") == tiny_tokenizer.tokenizer_files()


def test_unknown_component_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^components: must be among pipeline, .*'unet'"):
        tiny_models.write_tiny_models(tmp_path, ["tokenizer", "unet"])
