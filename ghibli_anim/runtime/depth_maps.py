"""Depth maps for ControlNet: a transformers depth model, loaded once.

Two services use it: the renderer, which makes the depth map of a frame the next frame is
guided by right after rendering it (the frame is still in its memory), and the depth
service (gRPC ``EstimateDepth``, and ``anim.work.depth`` for a frame whose renderer made
none).

``DepthEstimator(profile_or_ref).estimate(image)`` returns a grayscale ("L")
image of the input's size, normalised to 0..255 with near = bright: the
convention of SD-1.5's depth ControlNet, whose training maps came from MiDaS
(relative inverse depth). Depth Anything and DPT predict the same kind of
relative inverse depth; metric models (far = larger) are flipped.

The model runs in float32 without sampling, so the same image gives the same
map on the same device.
"""

from __future__ import annotations

import threading
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import locate
from ghibli_anim.contracts.pb import types_pb2
from ghibli_anim.runtime import devices, image_processors, logs

# Model types whose output grows with distance (metric depth), not with nearness.
_METRIC_MODEL_TYPES = frozenset({"zoedepth", "glpn", "depth_pro"})


class DepthEstimator:
    """One depth model, loaded at construction; ``estimate`` is thread-safe.

    ``source`` is a profile (its ``depth_model`` is used) or a model reference
    (hub id, path under ANIM_MODEL_ROOTS, or ``tiny:depth``).
    """

    def __init__(self, source: types_pb2.Profile | str, settings: Settings | None = None) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        logs.quiet_ml_libraries()
        settings = settings if settings is not None else config.load("client")
        ref = source.depth_model if isinstance(source, types_pb2.Profile) else source
        if not ref:
            raise ValueError("depth_model: the profile names no depth model")
        self.model_ref = ref
        path = locate(ref, settings, field="depth_model")
        self.device = devices.pick_device(settings)
        # The same preprocessing with or without torchvision installed.
        self.processor = AutoImageProcessor.from_pretrained(path, backend=image_processors.BACKEND)
        # float32 on every device: depth models are small and fp16 bands the map.
        self.model = AutoModelForDepthEstimation.from_pretrained(path).to(self.device).eval()
        config_ = self.model.config
        self.metric = (
            config_.model_type in _METRIC_MODEL_TYPES
            or getattr(config_, "depth_estimation_type", "relative") == "metric"
        )
        self._lock = threading.Lock()

    def predict(self, image: Image.Image) -> np.ndarray:
        """Raw model output resized to the image, float32, shape (height, width)."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        inputs: Any = self.processor(images=image, return_tensors="pt").to(self.device)
        with self._lock, torch.inference_mode():
            predicted = self.model(**inputs).predicted_depth  # (1, h', w')
            if predicted.device.type == "cpu":
                # The same bicubic kernel (a = -0.75, pixel centres aligned as torch's
                # align_corners=False) at a tenth of torch's CPU time at 512 x 512.
                small = predicted[0].float().numpy()
                return cv2.resize(
                    small, (image.width, image.height), interpolation=cv2.INTER_CUBIC
                ).astype(np.float32, copy=False)
            resized = torch.nn.functional.interpolate(
                predicted.unsqueeze(1).float(),
                size=(image.height, image.width),
                mode="bicubic",
                align_corners=False,
            )
        return resized[0, 0].cpu().numpy().astype(np.float32)

    def estimate(self, image: Image.Image) -> Image.Image:
        """Depth map of ``image``: mode "L", same size, 0..255, near = bright."""
        return Image.fromarray(self.estimate_array(image))  # 2-D uint8: mode "L"

    def estimate_array(self, image: Image.Image) -> np.ndarray:
        """:meth:`estimate` as a 2-D uint8 array (what the renderer keeps and encodes)."""
        depth = self.predict(image)
        low, high = float(depth.min()), float(depth.max())  # NaN anywhere makes them NaN
        if not np.isfinite([low, high]).all():
            raise ValueError(f"depth_model: {self.model_ref!r} returned non-finite depth")
        if high - low < 1e-12:  # a flat map: nothing is nearer than anything else
            return np.zeros(depth.shape, np.uint8)
        # (depth - low) / (high - low) * 255, or (high - depth) / ... for metric depth (far is
        # large), rounded half to even and saturated, in one OpenCV pass.
        scale = 255.0 / (high - low)
        alpha, beta = (-scale, high * scale) if self.metric else (scale, -low * scale)
        return cv2.addWeighted(depth, alpha, depth, 0.0, beta, dtype=cv2.CV_8U)
