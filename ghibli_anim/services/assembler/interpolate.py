"""In-between frames by optical flow: motion is carried, not cross-faded.

``--interpolate K`` inserts K frames (1 or 3) between each pair of rendered frames at times
``t = j / (K + 1)``; the assembler then plays the clip at ``fps x (K + 1)`` so it keeps its
duration. Any :class:`Interpolator` can make the in-betweens; :class:`FlowInterpolator` is the
one built in (OpenCV, CPU only). A learned one (RIFE, FILM) plugs in by implementing the same
one-method protocol.

How :class:`FlowInterpolator` makes the frame at time ``t`` between ``a`` and ``b``
(after Baker et al., "A Database and Evaluation Methodology for Optical Flow", IJCV 2011, §3):

1. **Flow both ways**: ``F01`` (``a`` -> ``b``) and ``F10`` (``b`` -> ``a``) with OpenCV's DIS
   (default) or Farneback, on grey levels.
2. **Occlusion**: a pixel of ``a`` whose forward flow is not undone by the backward flow where
   it lands (Sundaram et al. 2010 consistency test) is occluded in ``b``, and vice versa.
3. **Flow at time t**: every pixel of ``a`` is splatted forward to ``x + t F01``, every pixel
   of ``b`` backward to ``x + (1 - t) F10``; where several land on one pixel, the one whose
   flow explains the other frame best (smallest colour error, occluded pixels last) wins.
   Pixels nobody lands on take the mean flow of their filled neighbours, outside in.
4. **Blend**: each pixel samples ``a`` at ``x - t u`` and ``b`` at ``x + (1 - t) u`` and mixes
   them ``(1 - t) : t``, except that a side where the sample is occluded drops out, so
   uncovered background comes from the frame that shows it and nothing is ghosted.

Limits: OpenCV's flows smooth over motion boundaries, so a band of a few pixels around a
moving object's edge moves partly with it; where the object uncovers background, that band
shows background from a slightly wrong place (no ghost of the object: its pixels lose every
splat there). Whole-frame camera moves (zoom, pan, rotate) interpolate closely.

Across a storyboard ``cut`` there is no motion to follow: :func:`insert_inbetweens` holds the
outgoing frame for the first half of the gap and the incoming one for the second.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from ghibli_anim.contracts import limits

FLOW_METHODS = ("dis", "farneback")

# Forward-backward consistency (Sundaram et al. 2010): occluded when
# |F01 + F10(x + F01)|^2 > ALPHA (|F01|^2 + |F10(x + F01)|^2) + BETA.
_OCC_ALPHA = 0.01
_OCC_BETA = 0.5
_OCCLUDED_PENALTY = 1000.0  # colour-error units (0..255): occluded pixels lose every splat
_DISTANCE_PENALTY = 2.0  # per pixel of splat distance: between equals, the nearest wins


@runtime_checkable
class Interpolator(Protocol):
    """Makes in-between frames of two same-sized ``H x W x 3`` uint8 RGB frames."""

    name: str

    def between(self, a: np.ndarray, b: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        """One frame per time in ``times`` (each strictly between 0 and 1), in order."""
        ...


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _sample(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, nearest: bool = False):
    return cv2.remap(
        image,
        map_x,
        map_y,
        cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )


@dataclass(frozen=True)
class FlowInterpolator:
    """Optical-flow in-betweens (see the module docs); ``method`` is ``dis`` or ``farneback``."""

    method: str = "dis"

    def __post_init__(self) -> None:
        if self.method not in FLOW_METHODS:
            raise ValueError(
                f"method: must be one of {', '.join(FLOW_METHODS)}, got {self.method!r:.40}"
            )

    @property
    def name(self) -> str:
        return f"flow-{self.method}"

    def flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Dense flow ``H x W x 2`` (float32, pixels) from grey image ``a`` to grey image ``b``."""
        if self.method == "dis":
            dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            return dis.calc(a, b, None)
        return cv2.calcOpticalFlowFarneback(
            a, b, None, pyr_scale=0.5, levels=4, winsize=15, iterations=3, poly_n=5,
            poly_sigma=1.2, flags=0,
        )  # fmt: skip

    def between(self, a: np.ndarray, b: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        a, b = _check_pair(a, b)
        for t in times:
            if not 0.0 < t < 1.0:
                raise ValueError(f"times: each must be strictly between 0 and 1, got {t!r:.20}")
        if not times:
            return []
        motion = _Motion.estimate(a, b, self)
        return [motion.frame_at(float(t)) for t in times]


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    for name, arr in (("a", a), ("b", b)):
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(
                f"{name}: must be an H x W x 3 uint8 RGB array, got {arr.dtype} {arr.shape}"
            )
    if a.shape != b.shape:
        raise ValueError(f"b: shape {b.shape} differs from a's {a.shape}")
    return a, b


@dataclass
class _Motion:
    """Both flows of a pair and what follows from them, computed once for all times."""

    a: np.ndarray
    b: np.ndarray
    f01: np.ndarray
    f10: np.ndarray
    occ0: np.ndarray  # float32 1 where a's pixel is hidden in b
    occ1: np.ndarray  # float32 1 where b's pixel is hidden in a
    err0: np.ndarray  # splat priority of a's pixels (lower wins)
    err1: np.ndarray
    grid_x: np.ndarray
    grid_y: np.ndarray

    @classmethod
    def estimate(cls, a: np.ndarray, b: np.ndarray, flows: FlowInterpolator) -> _Motion:
        h, w = a.shape[:2]
        grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float32)
        ga, gb = _grey(a), _grey(b)
        f01, f10 = flows.flow(ga, gb), flows.flow(gb, ga)
        occ0, err0 = cls._consistency(a, b, f01, f10, grid_x, grid_y)
        occ1, err1 = cls._consistency(b, a, f10, f01, grid_x, grid_y)
        return cls(a, b, f01, f10, occ0, occ1, err0, err1, grid_x, grid_y)

    @staticmethod
    def _consistency(src, dst, fwd, bwd, grid_x, grid_y) -> tuple[np.ndarray, np.ndarray]:
        """(occluded mask, splat priority) of ``src``'s pixels given the flows both ways."""
        map_x, map_y = grid_x + fwd[..., 0], grid_y + fwd[..., 1]
        back = _sample(bwd, map_x, map_y)
        round_trip = np.sum((fwd + back) ** 2, axis=-1)
        scale = np.sum(fwd**2, axis=-1) + np.sum(back**2, axis=-1)
        occluded = round_trip > _OCC_ALPHA * scale + _OCC_BETA
        colour = np.abs(
            src.astype(np.float32) - _sample(dst, map_x, map_y).astype(np.float32)
        ).mean(axis=-1)
        priority = colour + _OCCLUDED_PENALTY * occluded
        return occluded.astype(np.float32), priority.astype(np.float32)

    def flow_at(self, t: float) -> np.ndarray:
        """The flow ``u`` (a -> b, pixels) of the scene point at each pixel of time ``t``."""
        h, w = self.a.shape[:2]
        gx, gy = self.grid_x.ravel(), self.grid_y.ravel()
        f01, f10 = self.f01.reshape(-1, 2), self.f10.reshape(-1, 2)
        # Candidates: a's pixels moved forward by t, b's moved backward by (1 - t).
        tx = np.concatenate([gx + t * f01[:, 0], gx + (1 - t) * f10[:, 0]])
        ty = np.concatenate([gy + t * f01[:, 1], gy + (1 - t) * f10[:, 1]])
        value = np.concatenate([f01, -f10])
        err = np.concatenate([self.err0.ravel(), self.err1.ravel()])
        n = len(tx)
        best = np.full(h * w, np.iinfo(np.int64).max, dtype=np.int64)
        x0, y0 = np.floor(tx), np.floor(ty)
        for dx in (0.0, 1.0):
            for dy in (0.0, 1.0):
                ix, iy = x0 + dx, y0 + dy
                inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
                dist = np.hypot(ix - tx, iy - ty)
                key = np.round((err + _DISTANCE_PENALTY * dist) * 64.0).astype(np.int64)
                combined = key * n + np.arange(n, dtype=np.int64)
                target = (iy * w + ix).astype(np.int64)
                np.minimum.at(best, target[inside], combined[inside])
        filled = best != np.iinfo(np.int64).max
        flow = np.zeros((h * w, 2), dtype=np.float32)
        flow[filled] = value[best[filled] % n]
        return _fill_holes(flow.reshape(h, w, 2), filled.reshape(h, w))

    def frame_at(self, t: float) -> np.ndarray:
        u = self.flow_at(t)
        x0, y0 = self.grid_x - t * u[..., 0], self.grid_y - t * u[..., 1]
        x1, y1 = self.grid_x + (1 - t) * u[..., 0], self.grid_y + (1 - t) * u[..., 1]
        from_a = _sample(self.a, x0, y0).astype(np.float32)
        from_b = _sample(self.b, x1, y1).astype(np.float32)
        w0 = (1 - t) * (1.0 - _sample(self.occ0, x0, y0, nearest=True))
        w1 = t * (1.0 - _sample(self.occ1, x1, y1, nearest=True))
        total = w0 + w1
        none = total < 1e-6  # hidden on both sides: plain time weights
        w0 = np.where(none, 1 - t, w0 / np.where(none, 1.0, total))
        w1 = 1.0 - w0
        out = from_a * w0[..., None] + from_b * w1[..., None]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _fill_holes(flow: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill pixels nobody splatted onto with the mean of their valid neighbours, outside in."""
    if valid.all():
        return flow
    if not valid.any():
        return np.zeros_like(flow)
    flow = flow.copy()
    valid = valid.copy()
    for _ in range(max(flow.shape[:2])):
        mask = valid.astype(np.float32)
        count = cv2.boxFilter(mask, -1, (3, 3), normalize=False)
        sums = cv2.boxFilter(flow * mask[..., None], -1, (3, 3), normalize=False)
        grow = (~valid) & (count > 0)
        if not grow.any():
            break
        flow[grow] = sums[grow] / count[grow][:, None]
        valid |= grow
        if valid.all():
            break
    return flow


def check_interpolate(k: int, field: str = "interpolate") -> int:
    """K in ``limits.INTERPOLATE`` (0, 1 or 3)."""
    if isinstance(k, bool) or not isinstance(k, int) or k not in limits.INTERPOLATE:
        allowed = ", ".join(map(str, limits.INTERPOLATE))
        raise ValueError(f"{field}: must be one of {allowed}, got {k!r:.20}")
    return k


def insert_inbetweens(
    frames: Sequence[np.ndarray],
    k: int,
    interpolator: Interpolator | None = None,
    *,
    cuts: Collection[int] = (),
) -> list[np.ndarray]:
    """``frames`` with ``k`` in-betweens inserted between each pair: ``(n - 1) * (k + 1) + 1``.

    ``cuts`` holds indices ``i`` whose frame starts a new shot: between frames ``i - 1`` and
    ``i`` the in-betweens hold ``i - 1`` for the first half and ``i`` for the second.
    """
    check_interpolate(k)
    frames = list(frames)
    if not frames:
        raise ValueError("frames: must hold at least one frame, got none")
    if k == 0 or len(frames) == 1:
        return frames
    engine = interpolator if interpolator is not None else FlowInterpolator()
    times = [j / (k + 1) for j in range(1, k + 1)]
    out = [frames[0]]
    for i in range(1, len(frames)):
        a, b = frames[i - 1], frames[i]
        if i in cuts:
            middle = [a if t <= 0.5 else b for t in times]
        else:
            middle = engine.between(a, b, times)
            if len(middle) != k:
                raise ValueError(f"{engine.name}: returned {len(middle)} in-betweens, wanted {k}")
        out.extend(middle)
        out.append(b)
    return out


__all__ = [
    "FLOW_METHODS",
    "FlowInterpolator",
    "Interpolator",
    "check_interpolate",
    "insert_inbetweens",
]
