"""bench/chain_host.py: a small run of both arms prints the breakdown and the last line,
and the stand-ins it installs keep the pipeline's contract (steps, shapes, values)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from ghibli_anim.devtools import standin

ROOT = Path(__file__).resolve().parents[3]


def test_small_run_prints_each_arm_and_the_last_line() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chain_host.py"), "--frames", "4", "--size", "64"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for arm in ("embedded", "distributed"):
        assert re.search(rf"^{arm}: 4 frames, ms per frame median [\d.]+, p95 [\d.]+$", out, re.M)
    # The renderer's own stages and the depth map made with each frame are in the breakdown.
    for stage in ("renderer color", "renderer depth", "renderer encode", "renderer store"):
        assert stage in out
    # Where the distributed arm's CPU went, process by process, and its floor on these cores.
    for process in ("renderer-0", "planner-0", "nats-server", "s3", "this benchmark"):
        assert re.search(rf"^ +{process}\S* .* [\d.]+$", out, re.M), process
    assert re.search(r"^ +total; over \d+ cores +[\d.]+ +[\d.]+$", out, re.M)
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"host_ms_per_frame=[\d.]+ p95=[\d.]+", last), last


def test_stand_ins_keep_the_pipeline_contract() -> None:
    picture = standin.painting(96, 64)
    assert picture.shape == (64, 96, 3) and picture.dtype == np.uint8
    assert 20 < picture.std() < 100  # neither flat nor noise-like extremes
    steps: list[int] = []
    pipe = SimpleNamespace()

    def callback(p, step, timestep, tensors):
        steps.append(step)
        return tensors

    generator = SimpleNamespace(initial_seed=lambda: 5)
    out = standin._pipeline_call(
        pipe,
        num_inference_steps=20,
        strength=0.35,
        image=Image.fromarray(picture),
        generator=generator,
        callback_on_step_end=callback,
    )
    assert steps == list(range(7)) and pipe._num_timesteps == 7  # int(20 * 0.35)
    assert out.images.shape == (1, 64, 96, 3) and out.images.dtype == np.float32
    changed = np.rint(out.images[0] * 255).astype(np.uint8)
    assert np.array_equal(changed, standin.next_frame(picture, 5))
    drift = changed.astype(int).mean(axis=(0, 1)) - picture.astype(int).mean(axis=(0, 1))
    assert drift[0] > 0.5 and drift[2] < -0.3  # the warm cast colour coherence removes
    txt = standin._pipeline_call(pipe, num_inference_steps=4, width=96, height=64)
    assert np.array_equal(np.rint(txt.images[0] * 255).astype(np.uint8), picture)


def test_the_depth_stand_in_is_one_fixed_map_and_a_fresh_tensor_each_call() -> None:
    import torch

    pixels = torch.zeros(1, 3, 24, 40)
    first = standin._depth_forward(pixel_values=pixels).predicted_depth
    assert first.shape == (1, 24, 40) and first.dtype == torch.float32
    # Near at the bottom centre: the map rises downwards and falls away from the centre.
    assert first[0, -1, 20] > first[0, 0, 20] and first[0, -1, 20] > first[0, -1, 0]
    first.zero_()  # a caller writing to its answer changes nothing for the next call
    second = standin._depth_forward(pixel_values=pixels).predicted_depth
    assert torch.equal(second, standin._depth_forward(pixel_values=pixels).predicted_depth)
    assert second[0, -1, 20] > second[0, 0, 20]
