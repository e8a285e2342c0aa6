"""Frame-to-frame continuity: camera moves, colour matching, colour distances, sharpening.

Plain numpy/OpenCV/scikit-image functions (no torch) on pixel arrays, used by the renderer
between diffusion calls (a frame is decoded once when it comes from the store and encoded
once when it goes there, by :mod:`ghibli_anim.services.renderer.encoding`):

* :func:`warp_camera` moves the previous frame (and its depth map) by a storyboard camera move
  before it seeds the next frame;
* :func:`unsharp_mask` counters the softening that img2img chains accumulate;
* :func:`match_colors` pulls a new frame's colours back to the job's colour reference, so a
  long chain does not drift;
* :func:`color_distance` measures what is left: CIEDE2000 (Sharma, Wu and Dalal 2005, as
  scikit-image's ``deltaE_ciede2000`` computes it) between the mean CIELAB colours of a frame
  and its reference, and the mean per-pixel CIEDE2000, both on copies at most
  ``DISTANCE_SIDE`` pixels wide. A :class:`Reference` keeps what a reference costs to
  prepare, once.

Images are ``H x W x 3`` ``uint8`` RGB arrays (PIL's layout) unless a docstring says otherwise.

Camera units (``contracts.storyboard.Camera``). A move is the transform applied to the picture:
``zoom`` scales it about the centre (> 1 moves in: the content grows), ``pan_x`` / ``pan_y``
shift it by that fraction of the width / height (+x right, +y down: ``pan_x=0.1`` moves the
content right by a tenth of the width), ``rotate`` turns it counter-clockwise as displayed, in
degrees. Zoom and rotation happen about the image centre, then the pan. Pixels that come from
outside the frame are filled by reflecting the picture at its border (``BORDER_REFLECT_101``),
which img2img repaints far more convincingly than a black or stretched edge.

Colour matching (``mode``):

* ``lab`` (default): per-channel mean and standard deviation transfer in CIELAB (Reinhard et
  al. 2001): lightness and the two colour axes are shifted and scaled to the reference's;
* ``rgb``: the same transfer on the R, G and B channels;
* ``hsv``: hue rotated by the difference of the saturation-weighted circular mean hues,
  saturation and value get the mean and standard deviation transfer;
* ``off``: the frame is left as it is.

A mean/std transfer is an affine map per channel, so edges and texture keep their shape (only
clipping at the gamut's edge bends it). The scale is clamped to
``[1 / MAX_STD_RATIO, MAX_STD_RATIO]`` so a nearly flat channel is never blown up into noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage.color import deltaE_ciede2000

from ghibli_anim.contracts import limits
from ghibli_anim.services.renderer.encoding import as_rgb

COLOR_MODES = limits.COLOR_COHERENCE
MAX_STD_RATIO = 2.5
SHARPEN_SIGMA = 1.0  # px; the blur img2img chains add is about a pixel wide
DISTANCE_SIDE = 64
"""The colour distances of a frame are measured on copies of it and its reference shrunk (by
area averaging) to at most this many pixels on their longer side: CIEDE2000 per pixel costs
~45 ms at 512 x 512, ~1.5 ms at 128 x 128 and ~0.4 ms at 64 x 64, converting a frame to
CIELAB once more ~2 ms at 512 x 512, and a distance that says how far a frame has drifted
needs neither every pixel nor the exact full-size mean. On painted 512 x 512 frames with a
colour cast and a camera move, the mean colour distance at 64 pixels is within a few
hundredths of a unit of the full-size one and the per-pixel mean within a few per cent (it
sees less of the motion); the tests hold both to that. The record states the size."""
_EPS = 1e-6


# --- conversions ----------------------------------------------------------------------------


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65; L in 0..100) of sRGB uint8 pixels, as float32."""
    # One pass: the same float32 quotients as astype(float32) / 255, without the copy.
    unit = np.divide(as_rgb(rgb), np.float32(255.0), dtype=np.float32)
    return cv2.cvtColor(unit, cv2.COLOR_RGB2Lab)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """sRGB uint8 pixels of CIELAB values (out-of-gamut colours clipped)."""
    rgb = cv2.cvtColor(np.ascontiguousarray(lab, dtype=np.float32), cv2.COLOR_Lab2RGB)
    # x * 255 rounded half to even and saturated to 0..255, as _to_uint8, in one pass.
    return cv2.addWeighted(rgb, 255.0, rgb, 0.0, 0.0, dtype=cv2.CV_8U)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# --- colour distances -----------------------------------------------------------------------


def mean_lab(image: Image.Image | np.ndarray) -> np.ndarray:
    """The mean CIELAB colour of an image (the mean of its pixels' Lab values), float64."""
    return _mean(rgb_to_lab(as_rgb(image)))


def _mean(lab: np.ndarray) -> np.ndarray:
    # OpenCV sums in double precision in one pass: ~15x faster than numpy here.
    return np.asarray(cv2.mean(lab)[:3], dtype=np.float64)


def shrink(rgb: np.ndarray, side: int = DISTANCE_SIDE) -> np.ndarray:
    """``rgb`` shrunk by area averaging so its longer side is at most ``side`` pixels."""
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class ColorDistance:
    """How far a frame's colours are from its reference's, in CIEDE2000 units."""

    mean_color: float
    """CIEDE2000 between the two images' mean CIELAB colours (global drift)."""
    per_pixel: float
    """Mean over pixels of the CIEDE2000 between co-located pixels (drift plus motion)."""
    size: tuple[int, int] = (0, 0)
    """(width, height) both were measured at (see ``DISTANCE_SIDE``)."""

    def as_record(self) -> dict[str, Any]:
        return {
            "delta_e_mean_color": round(self.mean_color, 4),
            "delta_e_pixels": round(self.per_pixel, 4),
            "delta_e_size": list(self.size),
        }


class Reference:
    """A colour reference, with what matching and measuring against it need, computed once.

    A reference serves every frame until the next cut or palette shift: its CIELAB
    statistics and its shrunk copy are kept here instead of being recomputed per frame.
    """

    def __init__(self, image: Image.Image | np.ndarray) -> None:
        self.rgb = as_rgb(image, "reference")
        self._cache: dict[str, Any] = {}

    def _get(self, name: str, make: Any) -> Any:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def lab(self) -> np.ndarray:
        return self._get("lab", lambda: rgb_to_lab(self.rgb))

    @property
    def lab_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, standard deviation) of the CIELAB pixels."""
        return self._get("lab_stats", lambda: _stats(self.lab))

    @property
    def mean_lab(self) -> np.ndarray:
        return self.lab_stats[0]

    def shrunk_lab(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """CIELAB of the reference resized to the frame (width x height), then shrunk; and
        its mean colour."""

        def make() -> tuple[np.ndarray, np.ndarray]:
            lab = rgb_to_lab(shrink(_same_size(self.rgb, width, height)))
            return lab, _mean(lab)

        return self._get(f"shrunk_lab {width}x{height}", make)


def _stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = cv2.meanStdDev(values)
    return mean.reshape(-1), std.reshape(-1)


def _reference(reference: Reference | Image.Image | np.ndarray) -> Reference:
    return reference if isinstance(reference, Reference) else Reference(reference)


def color_distance(
    image: Image.Image | np.ndarray, reference: Reference | Image.Image | np.ndarray
) -> ColorDistance:
    """CIEDE2000 distances of ``image`` to ``reference`` (resized to the image), measured on
    copies of both shrunk to at most ``DISTANCE_SIDE`` pixels (see there)."""
    small, (small_ref, small_ref_mean) = _shrunk_pair(image, reference)
    # The Lab images stay float32, which the library keeps: per-pixel differences of ~1e-5
    # vanish in the 4-decimal record.
    return ColorDistance(
        mean_color=float(deltaE_ciede2000(_mean(small), small_ref_mean)),
        per_pixel=float(deltaE_ciede2000(small, small_ref).mean(dtype=np.float64)),
        size=(small.shape[1], small.shape[0]),
    )


def mean_color_distance(
    image: Image.Image | np.ndarray, reference: Reference | Image.Image | np.ndarray
) -> float:
    """``color_distance(image, reference).mean_color`` without the per-pixel distance."""
    small, (_, small_ref_mean) = _shrunk_pair(image, reference)
    return float(deltaE_ciede2000(_mean(small), small_ref_mean))


def _shrunk_pair(
    image: Image.Image | np.ndarray, reference: Reference | Image.Image | np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """CIELAB of the shrunk image, and of the reference resized to it and shrunk (its mean)."""
    img = as_rgb(image, "image")
    height, width = img.shape[:2]
    return rgb_to_lab(shrink(img)), _reference(reference).shrunk_lab(width, height)


def _same_size(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(
        Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8
    )


# --- colour matching ------------------------------------------------------------------------


def check_mode(mode: str, field: str = "color_coherence") -> str:
    """A colour mode from ``COLOR_MODES`` (empty means the default, ``lab``)."""
    name = (mode or limits.DEFAULT_COLOR_COHERENCE).strip().lower()
    if name not in COLOR_MODES:
        raise ValueError(f"{field}: must be one of {', '.join(COLOR_MODES)}, got {mode!r:.40}")
    return name


def _scale(std: float, ref_std: float) -> float:
    if std < _EPS:
        return 1.0
    return float(np.clip((ref_std + _EPS) / std, 1.0 / MAX_STD_RATIO, MAX_STD_RATIO))


def _transfer(channel: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Shift and scale ``channel`` to ``ref``'s mean and standard deviation (clamped scale)."""
    mean, std = float(channel.mean()), float(channel.std())
    ref_mean, ref_std = float(ref.mean()), float(ref.std())
    return (channel - mean) * _scale(std, ref_std) + ref_mean


def _match_lab(img: np.ndarray, ref: Reference) -> np.ndarray:
    lab = rgb_to_lab(img)
    (mean, std), (ref_mean, ref_std) = _stats(lab), ref.lab_stats
    scale = np.array([_scale(float(std[c]), float(ref_std[c])) for c in range(3)])
    # One affine map per channel, applied by OpenCV in a single pass (float32 throughout).
    matrix = np.zeros((3, 4), dtype=np.float64)
    matrix[:, :3] = np.diag(scale)
    matrix[:, 3] = ref_mean - mean * scale
    out = cv2.transform(lab, matrix)
    np.clip(out[..., 0], 0.0, 100.0, out=out[..., 0])
    return lab_to_rgb(out)


def _match_rgb(img: np.ndarray, reference: Reference) -> np.ndarray:
    f, r = img.astype(np.float32), reference.rgb.astype(np.float32)
    return _to_uint8(np.stack([_transfer(f[..., c], r[..., c]) for c in range(3)], axis=-1))


def _circular_mean_deg(hue: np.ndarray, weight: np.ndarray) -> float | None:
    rad = np.radians(hue)
    x, y = float((np.cos(rad) * weight).sum()), float((np.sin(rad) * weight).sum())
    if np.hypot(x, y) < _EPS * max(1.0, float(weight.sum())):
        return None  # no dominant hue (grey, or hues cancelling out)
    return float(np.degrees(np.arctan2(y, x)))


def _match_hsv(img: np.ndarray, reference: Reference) -> np.ndarray:
    ref = reference.rgb
    hsv = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    hsv_ref = cv2.cvtColor(ref.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    # Hue is an angle: rotate by the difference of circular means, weighted by chroma so
    # that near-grey pixels, whose hue is noise, do not steer it.
    mine = _circular_mean_deg(hsv[..., 0], hsv[..., 1] * hsv[..., 2])
    theirs = _circular_mean_deg(hsv_ref[..., 0], hsv_ref[..., 1] * hsv_ref[..., 2])
    out = hsv.copy()
    if mine is not None and theirs is not None:
        out[..., 0] = (hsv[..., 0] + (theirs - mine)) % 360.0
    out[..., 1] = np.clip(_transfer(hsv[..., 1], hsv_ref[..., 1]), 0.0, 1.0)
    out[..., 2] = np.clip(_transfer(hsv[..., 2], hsv_ref[..., 2]), 0.0, 1.0)
    return _to_uint8(cv2.cvtColor(out, cv2.COLOR_HSV2RGB) * 255.0)


_MATCHERS = {"lab": _match_lab, "rgb": _match_rgb, "hsv": _match_hsv}


def match_colors(
    image: Image.Image | np.ndarray,
    reference: Reference | Image.Image | np.ndarray,
    mode: str = "lab",
) -> np.ndarray:
    """``image`` with its colour statistics moved to ``reference``'s (see the module docs).

    The reference may have another size (only its statistics are used). ``off`` returns an
    unchanged copy.
    """
    name = check_mode(mode)
    img = as_rgb(image, "image")
    if name == "off":
        return img.copy()
    return _MATCHERS[name](img, _reference(reference))


# --- camera ---------------------------------------------------------------------------------


def _f32(value: float) -> float:
    # Proto floats are float32: 1.02 arrives as 1.0199999809...; six decimals recover it.
    return round(float(value), 6)


@dataclass(frozen=True)
class Camera:
    """A camera move in the storyboard's units (see the module docs); the defaults are still."""

    zoom: float = 1.0
    pan_x: float = 0.0
    pan_y: float = 0.0
    rotate: float = 0.0

    @classmethod
    def of(cls, move: Any) -> Camera:
        """From a proto ``CameraMove`` (zoom 0 means 1), a mapping, or None (still).

        Values outside the storyboard's ranges raise ValueError naming the move.
        """
        if move is None:
            return cls()
        get = move.get if isinstance(move, Mapping) else lambda k, d: getattr(move, k, d)
        zoom = _f32(get("zoom", 1.0) or 1.0)
        cam = cls(
            zoom=limits.ZOOM.check("camera.zoom", zoom),
            pan_x=limits.PAN.check("camera.pan_x", _f32(get("pan_x", 0.0))),
            pan_y=limits.PAN.check("camera.pan_y", _f32(get("pan_y", 0.0))),
            rotate=limits.ROTATE.check("camera.rotate", _f32(get("rotate", 0.0))),
        )
        return cam

    @property
    def is_still(self) -> bool:
        return self.zoom == 1.0 and self.pan_x == 0.0 and self.pan_y == 0.0 and self.rotate == 0.0

    def as_record(self) -> dict[str, float]:
        return {"zoom": self.zoom, "pan_x": self.pan_x, "pan_y": self.pan_y, "rotate": self.rotate}


def camera_matrix(width: int, height: int, camera: Camera) -> np.ndarray:
    """The 2x3 affine map from source to destination pixel coordinates of ``camera``."""
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)  # pixel centres: the true middle
    matrix = cv2.getRotationMatrix2D(centre, camera.rotate, camera.zoom)
    matrix[0, 2] += camera.pan_x * width
    matrix[1, 2] += camera.pan_y * height
    return matrix


def warp_camera(
    image: np.ndarray, camera: Camera, *, interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """``image`` (``H x W`` or ``H x W x C``, any OpenCV dtype) moved by ``camera``.

    Borders reflect (``BORDER_REFLECT_101``). A still camera returns an unchanged copy.
    """
    arr = np.ascontiguousarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image: must be H x W or H x W x C, got shape {arr.shape}")
    if camera.is_still:
        return arr.copy()
    height, width = arr.shape[:2]
    # OpenCV's vectorised warp serves 1 and 4 channels, not 3: an RGB frame warped as RGBA
    # takes ~0.9 ms at 512 x 512 instead of ~2.3 (bench/warp_options.py). Each channel is
    # interpolated alone with the same weights, so dropping alpha afterwards gives exactly
    # the bytes of the 3-channel warp (the tests compare them).
    rgb_u8 = arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    if rgb_u8:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2RGBA)
    moved = cv2.warpAffine(
        arr,
        camera_matrix(width, height, camera),
        (width, height),
        flags=interpolation,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return cv2.cvtColor(moved, cv2.COLOR_RGBA2RGB) if rgb_u8 else moved


# --- sharpening -----------------------------------------------------------------------------


def unsharp_mask(
    image: Image.Image | np.ndarray, amount: float, sigma: float = SHARPEN_SIGMA
) -> np.ndarray:
    """``image + amount * (image - gaussian_blur(image, sigma))``, clipped; 0 = unchanged."""
    amount = limits.SHARPEN.check("sharpen", _f32(amount))
    img = as_rgb(image)
    if amount == 0.0:
        return img.copy()
    f = img.astype(np.float32)
    blurred = cv2.GaussianBlur(f, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)
    return _to_uint8(f + amount * (f - blurred))


# --- the renderer's two steps ---------------------------------------------------------------


def prepare_seed(
    source: np.ndarray, depth: np.ndarray | None, camera: Camera
) -> tuple[np.ndarray, np.ndarray | None]:
    """The previous frame and its depth map (arrays), both moved by the same camera move."""
    if camera.is_still:
        return source, depth
    return warp_camera(source, camera), (warp_camera(depth, camera) if depth is not None else None)


@dataclass(frozen=True)
class Finished:
    """A rendered frame sharpened and colour-matched (:func:`match_frame`): the pixels to
    store now, and what its record needs to measure the distances later (:meth:`record`),
    off the path to the next frame: nothing the next frame needs depends on them."""

    pixels: np.ndarray
    """The frame to store and to start the next frame from."""
    unmatched: np.ndarray
    """The frame before colour matching (after sharpening)."""
    reference: Reference | None
    mode: str
    sharpen: float

    def record(self) -> dict[str, Any]:
        """``sharpen`` and ``color``: ``mode``, ``delta_e_mean_color``, ``delta_e_pixels`` and
        ``delta_e_size`` after matching (see :func:`color_distance`), and
        ``delta_e_mean_color_before`` before it (at the same size). A frame that is its own
        reference has distance 0 and no size."""
        color: dict[str, Any] = {"mode": self.mode}
        if self.reference is None:
            color.update(
                delta_e_mean_color=0.0,
                delta_e_pixels=0.0,
                delta_e_size=None,
                delta_e_mean_color_before=0.0,
            )
        else:
            color.update(color_distance(self.pixels, self.reference).as_record())
            before = mean_color_distance(self.unmatched, self.reference)
            color["delta_e_mean_color_before"] = round(before, 4)
        return {"sharpen": self.sharpen, "color": color}


def match_frame(
    image: Image.Image | np.ndarray,
    *,
    reference: Reference | Image.Image | np.ndarray | None,
    mode: str,
    sharpen: float,
) -> Finished:
    """Sharpen, then colour-match a rendered frame to ``reference``.

    ``reference`` None means the frame is its own reference (frame 0, a cut, a palette
    shift): nothing to match. The distances are measured by ``Finished.record()``.
    """
    name = check_mode(mode)
    amount = limits.SHARPEN.check("sharpen", _f32(sharpen))
    rgb = as_rgb(image)
    if amount:
        rgb = unsharp_mask(rgb, amount)
    ref = None if reference is None else _reference(reference)
    matched = rgb if ref is None or name == "off" else _MATCHERS[name](rgb, ref)
    return Finished(matched, rgb, ref, name, amount)


def finish_frame(
    image: Image.Image | np.ndarray,
    *,
    reference: Reference | Image.Image | np.ndarray | None,
    mode: str,
    sharpen: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`match_frame` and its record at once: the pixels to store and the record."""
    finished = match_frame(image, reference=reference, mode=mode, sharpen=sharpen)
    return finished.pixels, finished.record()


__all__ = [
    "COLOR_MODES",
    "DISTANCE_SIDE",
    "Camera",
    "ColorDistance",
    "Finished",
    "Reference",
    "camera_matrix",
    "check_mode",
    "color_distance",
    "finish_frame",
    "lab_to_rgb",
    "match_colors",
    "match_frame",
    "mean_color_distance",
    "mean_lab",
    "prepare_seed",
    "rgb_to_lab",
    "shrink",
    "unsharp_mask",
    "warp_camera",
]
