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

DPT-family models (DPT, Depth Anything) are fed by :class:`DevicePreprocess`: the resize,
rescale and normalisation their image processor describes, done with torch on the model's
device. transformers' PIL processor does it on the host (~7.5 ms a 512 x 512 frame at Depth
Anything's 518 px on a CPU core), which on a GPU would sit on the frame's critical path.
Other models keep their own processor.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
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

# PIL resampling filters (transformers stores their numbers) that torch's antialiased
# interpolation reproduces: PIL's bicubic (a = -0.5) and bilinear kernels, widened on
# downscale as PIL widens them.
_TORCH_MODES = {
    int(Image.Resampling.BICUBIC): "bicubic",
    int(Image.Resampling.BILINEAR): "bilinear",
}


def _multiple_of(value: float, multiple: int) -> int:
    """``value`` rounded to a multiple of ``multiple`` as DPT's processor rounds sizes (but
    never to 0: a side shorter than half the multiple rounds up)."""
    rounded = round(value / multiple) * multiple
    return rounded if rounded > 0 else math.ceil(value / multiple) * multiple


@dataclass(frozen=True)
class DevicePreprocess:
    """A DPT image processor's preprocessing as torch ops on the model's device.

    The same steps in the same order as transformers' ``DPTImageProcessor``: resize to
    ``size`` (with ``keep_aspect_ratio``, scaling as little as possible, and sides rounded
    to a multiple of ``ensure_multiple_of``) to whole 0..255 levels, as PIL's 8-bit resize
    leaves them, then rescale and normalise. On a CUDA device the frame goes over as bytes
    and everything runs there, the resize in float32, rounded: equal to PIL's within a
    level on painted frames. Elsewhere the resize is torch's 8-bit antialiased CPU kernel,
    made to match PIL's (equal on all but a few pixels in a thousand, by one or two levels),
    and the resized levels go to the device (other devices may lack the kernel).
    """

    height: int
    width: int
    keep_aspect_ratio: bool
    multiple: int
    mode: str
    """torch's interpolation mode for the processor's PIL filter."""
    scale: torch.Tensor
    shift: torch.Tensor
    """``pixel_values = level * scale + shift`` per channel: rescale and normalise in one."""
    eight_bit: bool
    """Resize with torch's 8-bit kernel on the CPU, else in float32 on the device, rounded."""

    @classmethod
    def of(cls, processor: Any, device: torch.device | str) -> DevicePreprocess | None:
        """The device version of ``processor``; None for a processor that is not DPT's or
        asks for a step this does not do (padding, label reduction, another filter)."""
        if not type(processor).__name__.startswith("DPTImageProcessor"):
            return None
        height, width = processor.size.height or 0, processor.size.width or 0
        mode = _TORCH_MODES.get(int(processor.resample or -1))
        if (
            not processor.do_resize
            or processor.do_pad
            or processor.do_reduce_labels
            or not (height and width)
            or mode is None
        ):
            return None
        scale = torch.ones(3, dtype=torch.float64)
        shift = torch.zeros(3, dtype=torch.float64)
        if processor.do_rescale:
            scale *= float(processor.rescale_factor)
        if processor.do_normalize:
            mean = torch.tensor(_channels(processor.image_mean), dtype=torch.float64)
            std = torch.tensor(_channels(processor.image_std), dtype=torch.float64)
            scale, shift = scale / std, -mean / std
        return cls(
            height=height,
            width=width,
            keep_aspect_ratio=bool(processor.keep_aspect_ratio),
            multiple=max(1, int(processor.ensure_multiple_of or 1)),
            mode=mode,
            scale=scale.float().view(1, 3, 1, 1).to(device),
            shift=shift.float().view(1, 3, 1, 1).to(device),
            eight_bit=torch.device(device).type != "cuda",
        )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the model sees for an image of ``height`` x ``width``."""
        scale_h, scale_w = self.height / height, self.width / width
        if self.keep_aspect_ratio:  # scale as little as possible
            if abs(1 - scale_w) < abs(1 - scale_h):
                scale_h = scale_w
            else:
                scale_w = scale_h
        return (
            _multiple_of(scale_h * height, self.multiple),
            _multiple_of(scale_w * width, self.multiple),
        )

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """``pixel_values`` (1 x 3 x h x w, float32, on the device) of an RGB uint8 image."""
        size = self.output_size(*rgb.shape[:2])
        # Frames kept for the next frame are read-only, and torch warns about tensors over
        # read-only arrays: those are copied (~0.05 ms at 512 x 512).
        rgb = rgb if rgb.flags.writeable and rgb.flags.c_contiguous else rgb.copy()
        levels = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)  # uint8, 1 x 3 x H x W
        resize = size != tuple(rgb.shape[:2])
        if self.eight_bit:
            if resize:  # PIL's 8-bit kernel, in torch
                levels = self._interpolate(levels, size)
            levels = levels.to(self.scale.device)
        else:
            # The frame goes over as bytes (a quarter of float32's); the rest runs there.
            levels = levels.to(self.scale.device)
            if resize:
                levels = self._interpolate(levels.float(), size).round_().clamp_(0.0, 255.0)
        return torch.addcmul(self.shift, levels.float(), self.scale).contiguous()

    def _interpolate(self, levels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return torch.nn.functional.interpolate(
            levels, size=size, mode=self.mode, antialias=True, align_corners=False
        )


def _channels(values: Any) -> tuple[float, ...]:
    if isinstance(values, int | float):
        return (float(values),) * 3
    return tuple(float(v) for v in values)


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
        # DPT and Depth Anything: the same steps on the device, off the host.
        self.preprocess = DevicePreprocess.of(self.processor, self.device)
        # float32 on every device: depth models are small and fp16 bands the map.
        self.model = AutoModelForDepthEstimation.from_pretrained(path).to(self.device).eval()
        config_ = self.model.config
        self.metric = (
            config_.model_type in _METRIC_MODEL_TYPES
            or getattr(config_, "depth_estimation_type", "relative") == "metric"
        )
        self._lock = threading.Lock()

    def predict(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Raw model output resized to the image (PIL, or RGB uint8 pixels), float32,
        shape (height, width)."""
        height, width, inputs = self._inputs(image)
        with self._lock, torch.inference_mode():
            predicted = self.model(**inputs).predicted_depth  # (1, h', w')
            if predicted.device.type == "cpu":
                # The same bicubic kernel (a = -0.75, pixel centres aligned as torch's
                # align_corners=False) at a tenth of torch's CPU time at 512 x 512.
                small = predicted[0].float().numpy()
                return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(
                    np.float32, copy=False
                )
            resized = torch.nn.functional.interpolate(
                predicted.unsqueeze(1).float(),
                size=(height, width),
                mode="bicubic",
                align_corners=False,
            )
        return resized[0, 0].cpu().numpy().astype(np.float32)

    def _inputs(self, image: Image.Image | np.ndarray) -> tuple[int, int, dict[str, Any]]:
        """The image's height and width, and the model's inputs on its device."""
        if isinstance(image, Image.Image):
            image = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        elif image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: must be H x W x 3 uint8, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        if self.preprocess is not None:
            return height, width, {"pixel_values": self.preprocess(image)}
        inputs = self.processor(images=Image.fromarray(image), return_tensors="pt")
        return height, width, dict(inputs.to(self.device))

    def estimate(self, image: Image.Image | np.ndarray) -> Image.Image:
        """Depth map of ``image``: mode "L", same size, 0..255, near = bright."""
        return Image.fromarray(self.estimate_array(image))  # 2-D uint8: mode "L"

    def estimate_array(self, image: Image.Image | np.ndarray) -> np.ndarray:
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
