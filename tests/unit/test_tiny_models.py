"""The tiny models: same bytes every run, atomic writes, loadable like real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import tiny_dir
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.contracts.tokens import load_tokenizer
from ghibli_anim.devtools import tiny_models, tiny_tokenizer

PROMPT = (
    "a small dragon glides slowly over a quiet medieval town at dusk with warm light "
    "and soft clouds, ghibli style"
)


TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0")


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _run(code: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_same_bytes_in_another_process(tiny_settings: Settings, tmp_path: Path) -> None:
    again = tmp_path / "again"
    _run(
        "from pathlib import Path\n"
        "from ghibli_anim.devtools import tiny_models\n"
        f"tiny_models.write_tiny_models(Path({str(again)!r}))\n"
    )
    first, second = _tree(tiny_dir(tiny_settings)), _tree(again)
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


def test_realistic_prompt_fits_77_tokens(tiny_settings: Settings) -> None:
    assert len(PROMPT.split()) == 20
    tokenizer = load_tokenizer(load_profile("tiny", tiny_settings), tiny_settings)
    ids = tokenizer(PROMPT)["input_ids"]
    assert len(ids) <= limits.CLIP_MAX_TOKENS
    assert len(ids) == 23  # start + 20 words + ',' + end: whole-word merges work
    assert tokenizer.model_max_length == limits.CLIP_MAX_TOKENS
    # Any text still tokenizes (byte-level fallback).
    assert tokenizer("Über café 東京 4k")["input_ids"][-1] == tokenizer.eos_token_id


def test_every_listed_word_is_one_token() -> None:
    vocab, _ = tiny_tokenizer.clip_vocab_and_merges()
    assert all(word + "</w>" in vocab for word in tiny_tokenizer.WORDS if len(word) > 1)


def test_tokenizer_without_torch(tmp_path: Path) -> None:
    """The planner has no torch: locating and loading the tokenizer must not import it."""
    code = (
        "import sys\n"
        "from ghibli_anim.contracts import config, model_refs, profiles, tokens\n"
        "from ghibli_anim.devtools import tiny_models\n"
        "model_refs.use_tiny_builder(tiny_models.write_tiny_models)  # as the CLI does\n"
        "s = config.load('client')\n"
        "p = profiles.load_profile('tiny', s)\n"
        "path = tokens.locate_tokenizer(p, s)\n"
        "assert 'torch' not in sys.modules, 'locate_tokenizer imported torch'\n"
        "tok = tokens.load_tokenizer(p, s)\n"
        "assert 'torch' not in sys.modules, 'load_tokenizer imported torch'\n"
        "print(path)\n"
    )
    out = _run(code, {"ANIM_CACHE_DIR": str(tmp_path)}).strip().splitlines()[-1]
    assert Path(out) == tmp_path / f"tiny-v{tiny_models.TINY_VERSION}" / "tokenizer"
    assert _tree(Path(out)) == tiny_tokenizer.tokenizer_files()


def test_tokenizer_config_is_stable_json() -> None:
    files = tiny_tokenizer.tokenizer_files()
    config = json.loads(files["tokenizer_config.json"])
    assert config["model_max_length"] == 77
    assert files == tiny_tokenizer.tokenizer_files()


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
    assert _tree(out / "tokenizer") == tiny_tokenizer.tokenizer_files()


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
    assert _tree(out / "tokenizer") == tiny_tokenizer.tokenizer_files()


def test_unknown_component_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^components: must be among pipeline, .*'unet'"):
        tiny_models.write_tiny_models(tmp_path, ["tokenizer", "unet"])
