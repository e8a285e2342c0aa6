"""What a camera move costs the renderer: OpenCV's warp of an RGB frame, 3 channels or as RGBA.

Before every frame that moves the camera, the renderer warps the previous frame and its depth
map (``continuity.prepare_seed``): on the critical path of the chain. OpenCV's vectorised
``warpAffine`` serves 1- and 4-channel images; a 3-channel one takes a slower path. This
script times, on :func:`ghibli_anim.devtools.standin.painting` with one OpenCV thread (as the
chain benchmark's services run), the 3-channel warp, the same frame converted to RGBA, warped
and converted back (what ``continuity.warp_camera`` does), and the grayscale depth map, and
checks that both routes give the same bytes.

    python bench/warp_options.py [--size 512] [--repeat 50]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from ghibli_anim.devtools import standin
from ghibli_anim.services.renderer.continuity import Camera, camera_matrix, warp_camera

CAMERA = Camera(zoom=1.02, pan_x=0.01, rotate=0.5)
"""A small push-in with a drift and a turn, as storyboards move the camera frame to frame."""


def _ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="frame width and height")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per row")
    args = parser.parse_args()
    if args.size < 8:
        parser.error(f"--size: must be at least 8, got {args.size}")
    if args.repeat < 1:
        parser.error(f"--repeat: must be at least 1, got {args.repeat}")
    cv2.setNumThreads(1)
    rgb = standin.painting(args.size, args.size)
    gray = np.ascontiguousarray(rgb[..., 1])
    matrix = camera_matrix(args.size, args.size, CAMERA)

    def three_channels() -> np.ndarray:
        return cv2.warpAffine(
            rgb,
            matrix,
            (args.size, args.size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )

    same = np.array_equal(three_channels(), warp_camera(rgb, CAMERA))
    rows = [
        ("RGB frame, 3 channels", _ms(three_channels, args.repeat)),
        ("RGB frame as RGBA (warp_camera)", _ms(lambda: warp_camera(rgb, CAMERA), args.repeat)),
        ("depth map, 1 channel (warp_camera)", _ms(lambda: warp_camera(gray, CAMERA), args.repeat)),
    ]
    print(f"camera warp at {args.size} x {args.size}, one OpenCV thread (median ms)")
    for name, ms in rows:
        print(f"  {name:<40} {ms:7.2f}")
    print(f"  same bytes: {'yes' if same else 'NO'}")
    print(f"rgba_speedup={rows[0][1] / rows[1][1]:.2f}")
    if not same:
        raise SystemExit("the RGBA route changed the frame's bytes")


if __name__ == "__main__":
    main()
