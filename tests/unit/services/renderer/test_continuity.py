"""services/renderer/continuity.py: colour coherence, CIEDE2000, camera moves and sharpening
on synthetic images.

Random-weight models cannot show colour drift or camera motion, so these tests build images
whose truth is known: a moving texture with a growing colour cast, blobs at known places."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.color import deltaE_ciede2000
from skimage.metrics import structural_similarity

from ghibli_anim.contracts import config, keys
from ghibli_anim.contracts.pb import animation_pb2
from ghibli_anim.contracts.profiles import load_profile
from ghibli_anim.contracts.storyboard import Storyboard
from ghibli_anim.runtime.png import encode_png
from ghibli_anim.services.planner.frame_specs import resolve_frames
from ghibli_anim.services.renderer.continuity import (
    DISTANCE_SIDE,
    Camera,
    Reference,
    camera_matrix,
    color_distance,
    finish_frame,
    match_colors,
    mean_lab,
    prepare_seed,
    rgb_to_lab,
    unsharp_mask,
    warp_camera,
)

H, W = 96, 128

SHIFT = 3  # px the texture moves per frame


def texture(shift: float) -> np.ndarray:
    """A smooth multi-colour pattern, moved right by ``shift`` px (no channel clips)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    x = xx - shift
    r = 128 + 55 * np.sin(x / 5.0) * np.cos(yy / 7.0)
    g = 120 + 45 * np.sin((x + yy) / 9.0)
    b = 115 + 40 * np.cos(x / 11.0 - yy / 4.0)
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def cast(rgb: np.ndarray, k: int) -> np.ndarray:
    """A warm colour cast that grows with ``k`` (gains and offsets per channel)."""
    gains = np.array([1 + 0.04 * k, 1 + 0.01 * k, 1 - 0.04 * k], dtype=np.float32)
    offsets = np.array([4 * k, 0, -3 * k], dtype=np.float32)
    return np.clip(np.rint(rgb.astype(np.float32) * gains + offsets), 0, 255).astype(np.uint8)


def lightness(rgb: np.ndarray) -> np.ndarray:
    return rgb_to_lab(rgb)[..., 0]


def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Mean SSIM with Wang et al. (2004)'s settings: 11 x 11 Gaussian window, sigma 1.5."""
    return float(
        structural_similarity(
            a,
            b,
            data_range=data_range,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


# --- CIEDE2000 ------------------------------------------------------------------------------

# Sharma, Wu and Dalal (2005), supplementary test data: (Lab1, Lab2, dE00).
SHARMA = [
    ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
    ((50, 3.1571, -77.2803), (50, 0, -82.7485), 2.8615),
    ((50, 2.8361, -74.0200), (50, 0, -82.7485), 3.4412),
    ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0000),
    ((50, 0, 0), (50, -1, 2), 2.3669),
    ((50, 2.5, 0), (73, 25, -18), 27.1492),
    ((50, 2.5, 0), (61, -5, 29), 22.8977),
    ((50, 2.5, 0), (56, -27, -3), 31.9030),
    ((50, 2.5, 0), (58, 24, 15), 19.4535),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
]


def test_ciede2000_matches_published_test_data() -> None:
    lab1 = np.array([p[0] for p in SHARMA], dtype=np.float64)
    lab2 = np.array([p[1] for p in SHARMA], dtype=np.float64)
    expected = np.array([p[2] for p in SHARMA])
    np.testing.assert_allclose(deltaE_ciede2000(lab1, lab2), expected, atol=1e-4)
    np.testing.assert_allclose(deltaE_ciede2000(lab2, lab1), expected, atol=1e-4)  # symmetric
    # color_distance's two calls: single float64 mean colours, float32 H x W x 3 images.
    for a, b, want in SHARMA:
        assert float(deltaE_ciede2000(np.array(a, float), np.array(b, float))) == pytest.approx(
            want, abs=1e-4
        )
    image1, image2 = lab1.astype(np.float32)[None], lab2.astype(np.float32)[None]
    per_pixel = deltaE_ciede2000(image1, image2)
    assert per_pixel.dtype == np.float32 and per_pixel.shape == (1, len(SHARMA))
    np.testing.assert_allclose(per_pixel[0], expected, atol=1e-4)
    same = np.array([40.0, 10, -5])
    assert deltaE_ciede2000(same, same) == 0.0


def test_lab_of_srgb_red_and_distances() -> None:
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(mean_lab(red), [53.24, 80.09, 67.20], atol=0.02)
    img = texture(0)
    same = color_distance(img, img)
    assert same.mean_color == 0.0 and same.per_pixel == 0.0
    far = color_distance(cast(img, 6), img)
    assert far.mean_color > 5 and far.per_pixel >= far.mean_color * 0.9


# --- colour matching ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lab", "rgb"])
def test_matching_removes_a_growing_cast_and_keeps_structure(mode: str) -> None:
    reference = texture(0)
    for k in range(2, 9):
        clean = texture(SHIFT * k)  # the pattern moves...
        drifted = cast(clean, k)  # ...and its colours drift more every frame
        before = color_distance(drifted, reference).mean_color
        matched = match_colors(drifted, reference, mode)
        after = color_distance(matched, reference).mean_color
        assert before > 3.0
        assert after <= 0.2 * before, (k, before, after)  # at least 80% of the drift gone
        structure = ssim(lightness(matched), lightness(clean), data_range=100.0)
        assert structure >= 0.95, (k, structure)
        # Negative control: handing back the reference would pass the colour check but not
        # this one: the pattern has moved.
        assert ssim(lightness(reference), lightness(clean), data_range=100.0) < 0.95


def _lab_transfer_by_definition(img: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Reinhard's transfer written out per channel in numpy, float64 statistics: what the
    one-pass OpenCV version must reproduce."""
    lab = rgb_to_lab(img).astype(np.float64)
    lab_ref = rgb_to_lab(ref).astype(np.float64)
    out = np.empty_like(lab)
    for c in range(3):
        mean, std = lab[..., c].mean(), lab[..., c].std()
        scale = np.clip((lab_ref[..., c].std() + 1e-6) / std, 1 / 2.5, 2.5)
        out[..., c] = (lab[..., c] - mean) * scale + lab_ref[..., c].mean()
    out[..., 0] = np.clip(out[..., 0], 0.0, 100.0)
    rgb = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2RGB) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("k", [1, 4, 8])
def test_lab_matching_is_the_transfer_by_definition(k: int) -> None:
    """The same pixels as the definition (at most one level apart where float32 rounding
    differs), so it removes the same share of a cast."""
    reference = texture(0)
    drifted = cast(texture(SHIFT * k), k)
    fast = match_colors(drifted, reference, "lab").astype(int)
    slow = _lab_transfer_by_definition(drifted, reference).astype(int)
    assert np.abs(fast - slow).max() <= 1
    assert (fast != slow).mean() < 0.01
    assert color_distance(fast.astype(np.uint8), reference).mean_color == pytest.approx(
        color_distance(slow.astype(np.uint8), reference).mean_color, abs=0.02
    )


def test_hsv_matching_reduces_the_cast_and_off_changes_nothing() -> None:
    reference = texture(0)
    drifted = cast(texture(SHIFT * 5), 5)
    before = color_distance(drifted, reference).mean_color
    hsv = match_colors(drifted, reference, "hsv")
    assert color_distance(hsv, reference).mean_color < 0.8 * before
    off = match_colors(drifted, reference, "off")
    assert np.array_equal(off, drifted) and off is not drifted
    with pytest.raises(ValueError, match=r"color_coherence: must be one of lab, hsv, rgb, off"):
        match_colors(drifted, reference, "xyz")


def test_flat_frames_are_not_blown_up() -> None:
    flat = np.full((8, 8, 3), 90, np.uint8)
    out = match_colors(flat, texture(0)[:8, :8], "lab")
    # A flat channel cannot gain texture: it is only shifted.
    assert out.std(axis=(0, 1)).max() < 1.0


def _png(rgb: np.ndarray) -> bytes:
    return encode_png(rgb)


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def test_finish_frame_records_distances() -> None:
    reference = Image.fromarray(texture(0))
    drifted = cast(texture(SHIFT * 4), 4)
    matched, record = finish_frame(drifted, reference=reference, mode="lab", sharpen=0.0)
    color = record["color"]
    assert color["mode"] == "lab" and record["sharpen"] == 0.0
    assert color["delta_e_mean_color_before"] > 5 * color["delta_e_mean_color"]
    got = color_distance(matched, reference)
    assert color["delta_e_mean_color"] == pytest.approx(got.mean_color, abs=1e-3)
    assert color["delta_e_pixels"] == pytest.approx(got.per_pixel, abs=1e-3)
    # Measured on copies shrunk to DISTANCE_SIDE on their longer side, as the record says,
    # the distance before matching too.
    assert color["delta_e_size"] == [DISTANCE_SIDE, DISTANCE_SIDE * H // W]
    assert color["delta_e_mean_color_before"] == pytest.approx(
        color_distance(drifted, reference).mean_color, abs=1e-3
    )
    # off: the pixels stay, the distance is still measured.
    same, off = finish_frame(drifted, reference=reference, mode="off", sharpen=0.0)
    assert np.array_equal(same, drifted)
    assert off["color"]["delta_e_mean_color"] == off["color"]["delta_e_mean_color_before"] > 5
    # Its own reference (frame 0, a cut, a palette shift): nothing to match.
    own, rec = finish_frame(drifted, reference=None, mode="lab", sharpen=0.0)
    assert np.array_equal(own, drifted) and rec["color"]["delta_e_mean_color"] == 0.0
    assert rec["color"]["delta_e_size"] is None


def test_distance_on_the_shrunk_copy_tracks_the_full_size_one() -> None:
    """The CIEDE2000 distances on the shrunk copies stay close to the full-size measures,
    for a global cast (where both are the same) and for motion plus a cast."""
    big = cv2.resize(texture(0), (4 * W, 4 * H), interpolation=cv2.INTER_CUBIC)
    moved = cv2.resize(cast(texture(SHIFT), 3), (4 * W, 4 * H), interpolation=cv2.INTER_CUBIC)
    for image in (cast(big, 3), moved):
        shrunk = color_distance(image, big)
        full = deltaE_ciede2000(rgb_to_lab(image), rgb_to_lab(big)).mean()
        assert shrunk.size == (DISTANCE_SIDE, DISTANCE_SIDE * H // W)
        assert shrunk.per_pixel == pytest.approx(full, rel=0.25)
        full_mean = float(deltaE_ciede2000(mean_lab(image), mean_lab(big)))
        assert shrunk.mean_color == pytest.approx(full_mean, abs=0.05)
    # An image already within the side is measured as it is.
    within = np.ascontiguousarray(texture(0)[: DISTANCE_SIDE * H // W, :DISTANCE_SIDE])
    small = color_distance(cast(within, 3), within)
    assert small.size == (DISTANCE_SIDE, DISTANCE_SIDE * H // W)
    full_mean = deltaE_ciede2000(mean_lab(cast(within, 3)), mean_lab(within))
    assert small.mean_color == pytest.approx(float(full_mean), abs=1e-6)
    full_pixels = deltaE_ciede2000(rgb_to_lab(cast(within, 3)), rgb_to_lab(within)).mean()
    assert small.per_pixel == pytest.approx(float(full_pixels), abs=1e-4)


def test_a_prepared_reference_matches_like_the_raw_one() -> None:
    reference = texture(0)
    prepared = Reference(reference)
    drifted = cast(texture(SHIFT * 2), 2)
    for mode in ("lab", "rgb", "hsv"):
        assert np.array_equal(
            match_colors(drifted, prepared, mode), match_colors(drifted, reference, mode)
        )
    assert color_distance(drifted, prepared) == color_distance(drifted, reference)


def test_palette_shift_moves_the_reference_through_a_chain(tmp_path) -> None:
    """Specs from the planner, frames through finish_frame as the renderer runs them."""
    settings = config.load("client", {"ANIM_CACHE_DIR": str(tmp_path), "ANIM_STORE": "local"})
    n, shift_at = 7, 4
    board = Storyboard.model_validate(
        {
            "title": "t",
            "frames": [
                {"prompt": f"shot {i}", "palette": "shift" if i == shift_at else "keep"}
                for i in range(n)
            ],
        }
    )
    req = animation_pb2.CreateAnimationRequest(idea="x", frames=n, color_coherence="lab")
    job = "ef" * 16
    specs = resolve_frames(job, req, 1, board, load_profile("tiny", settings))
    stored: dict[str, np.ndarray] = {}
    raw: dict[int, np.ndarray] = {}
    for i, spec in enumerate(specs):
        raw[i] = cast(texture(SHIFT * i), i)
        own = spec.color_reference_key == keys.frame_key(job, i)
        reference = None if own else Image.fromarray(stored[spec.color_reference_key])
        pixels, _ = finish_frame(raw[i], reference=reference, mode="lab", sharpen=0.0)
        stored[keys.frame_key(job, i)] = _decode(encode_png(pixels))
    frame = [stored[keys.frame_key(job, i)] for i in range(n)]
    assert np.array_equal(frame[shift_at], raw[shift_at])  # its own reference: untouched
    for i in range(1, shift_at):
        assert color_distance(frame[i], frame[0]).mean_color < 0.5
    for i in range(shift_at + 1, n):
        assert color_distance(frame[i], frame[shift_at]).mean_color < 0.5
        assert color_distance(frame[i], frame[0]).mean_color > 5


# --- camera ---------------------------------------------------------------------------------


def noise_texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((H, W)).astype(np.float32)
    return cv2.GaussianBlur(base, (0, 0), 2.0)


def phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, peak) with ``b`` ~ ``a`` moved by (dx, dy): phase correlation (numpy FFT,
    Hann window, parabolic sub-pixel peak)."""
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa, fb = np.fft.fft2(a * window), np.fft.fft2(b * window)
    cross = fb * np.conj(fa)
    surface = np.real(np.fft.ifft2(cross / (np.abs(cross) + 1e-12)))
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)

    def refine(left: float, mid: float, right: float) -> float:
        den = left - 2 * mid + right
        return 0.0 if den == 0 else 0.5 * (left - right) / den

    h, w = surface.shape
    dy = iy + refine(surface[iy - 1, ix], surface[iy, ix], surface[(iy + 1) % h, ix])
    dx = ix + refine(surface[iy, ix - 1], surface[iy, ix], surface[iy, (ix + 1) % w])
    dy = dy - h if dy > h / 2 else dy
    dx = dx - w if dx > w / 2 else dx
    return float(dx), float(dy), float(surface[iy, ix])


@pytest.mark.parametrize(
    ("pan_x", "pan_y"), [(0.0625, 0.0), (0.0, -0.0625), (-0.125, 0.125), (0.05, 0.03)]
)
def test_pan_moves_the_picture_by_a_fraction_of_its_size(pan_x: float, pan_y: float) -> None:
    img = noise_texture()
    moved = warp_camera(img, Camera(pan_x=pan_x, pan_y=pan_y))
    dx, dy, peak = phase_shift(img, moved)
    assert peak > 0.2  # one clear peak
    assert dx == pytest.approx(pan_x * W, abs=0.3)  # +x right
    assert dy == pytest.approx(pan_y * H, abs=0.3)  # +y down
    # The estimator itself finds a plain integer roll.
    assert phase_shift(img, np.roll(img, (5, -7), axis=(0, 1)))[:2] == pytest.approx(
        (-7, 5), abs=0.1
    )


BLOBS = [(-30.0, -20.0), (35.0, -25.0), (-25.0, 30.0), (40.0, 28.0), (0.0, 0.0)]


def blobs() -> np.ndarray:
    """Gaussian spots at known offsets from the image centre."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    img = np.zeros((H, W), np.float32)
    for ox, oy in BLOBS:
        img += np.exp(-((xx - cx - ox) ** 2 + (yy - cy - oy) ** 2) / (2 * 2.0**2))
    return img


def spot_centres(img: np.ndarray, near: list[tuple[float, float]]) -> np.ndarray:
    """Intensity-weighted centroid of the spot closest to each expected position."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = []
    for x, y in near:
        window = (np.abs(xx - x) < 7) & (np.abs(yy - y) < 7)
        weight = np.where(window, img, 0.0)
        out.append(((xx * weight).sum() / weight.sum(), (yy * weight).sum() / weight.sum()))
    return np.array(out)


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, float, float, float]:
    """Least-squares (scale, ccw degrees, tx, ty) with dst = s R(ccw) src + t (y down)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        # Screen coordinates (y down): a counter-clockwise turn as displayed is
        # u = a x + b y + tx, v = -b x + a y + ty with a = s cos, b = s sin.
        rows += [[x, y, 1, 0], [y, -x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return float(np.hypot(a, b)), float(np.degrees(np.arctan2(b, a))), float(tx), float(ty)


@pytest.mark.parametrize(
    "camera",
    [
        Camera(zoom=1.2),
        Camera(zoom=0.85),
        Camera(rotate=10.0),
        Camera(rotate=-7.5),
        Camera(zoom=1.1, rotate=5.0, pan_x=0.05, pan_y=-0.05),
    ],
    ids=lambda c: f"z{c.zoom}-r{c.rotate}-p{c.pan_x},{c.pan_y}",
)
def test_zoom_and_rotate_move_known_points(camera: Camera) -> None:
    img = blobs()
    moved = warp_camera(img, camera)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    src = np.array([(cx + ox, cy + oy) for ox, oy in BLOBS])
    # Where each spot should land, from the storyboard's units (independent of the code's matrix).
    theta = np.radians(camera.rotate)
    expected = []
    for ox, oy in BLOBS:
        ex = camera.zoom * (np.cos(theta) * ox + np.sin(theta) * oy)
        ey = camera.zoom * (-np.sin(theta) * ox + np.cos(theta) * oy)
        expected.append((cx + ex + camera.pan_x * W, cy + ey + camera.pan_y * H))
    found = spot_centres(moved, expected)
    np.testing.assert_allclose(found, np.array(expected), atol=0.35)
    scale, angle, tx, ty = similarity(src - (cx, cy), found - (cx, cy))
    assert scale == pytest.approx(camera.zoom, abs=0.01)
    assert angle == pytest.approx(camera.rotate, abs=0.3)  # counter-clockwise positive
    assert (tx, ty) == pytest.approx((camera.pan_x * W, camera.pan_y * H), abs=0.3)


@pytest.mark.parametrize("interpolation", [cv2.INTER_LINEAR, cv2.INTER_NEAREST, cv2.INTER_CUBIC])
@pytest.mark.parametrize(
    "camera",
    [
        Camera(zoom=1.02, pan_x=0.01),
        Camera(zoom=0.85, rotate=12.0, pan_x=0.1),
        Camera(zoom=1.3, rotate=-33.0, pan_x=-0.2, pan_y=0.15),
    ],
    ids=lambda c: f"z{c.zoom}-r{c.rotate}",
)
@pytest.mark.parametrize("size", [(96, 128), (61, 83)])
def test_an_rgb_frame_moves_to_the_bytes_of_a_three_channel_warp(
    camera: Camera, interpolation: int, size: tuple[int, int]
) -> None:
    # warp_camera moves RGB as RGBA (OpenCV's fast path); the bytes must not change.
    height, width = size
    rgb = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = cv2.warpAffine(
        rgb,
        camera_matrix(width, height, camera),
        (width, height),
        flags=interpolation,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    moved = warp_camera(rgb, camera, interpolation=interpolation)
    assert moved.shape == rgb.shape and moved.dtype == np.uint8
    assert np.array_equal(moved, expected)


def test_borders_reflect_and_depth_moves_with_the_frame() -> None:
    rgb = texture(0)
    depth = lightness(rgb).astype(np.uint8)  # a grey map
    cam = Camera(zoom=0.85, rotate=12.0, pan_x=0.1)
    seed, moved_depth = prepare_seed(rgb, depth, cam)
    arr = np.asarray(seed)
    assert seed.shape == rgb.shape and moved_depth is not None and moved_depth.shape == depth.shape
    # A zoom out and a turn uncover the corners: they are filled with picture, not black.
    assert arr[:4, :4].mean() > 40 and arr[-4:, -4:].mean() > 40
    # The depth map followed exactly the same move.
    expected = warp_camera(np.asarray(depth), cam)
    assert np.array_equal(np.asarray(moved_depth), expected)
    still_seed, still_depth = prepare_seed(rgb, depth, Camera())
    assert np.array_equal(np.asarray(still_seed), rgb) and still_depth is depth


def test_camera_of_proto_and_ranges() -> None:
    from ghibli_anim.contracts.pb import types_pb2

    assert Camera.of(types_pb2.CameraMove()).is_still  # zoom 0 on the wire means 1
    cam = Camera.of(types_pb2.CameraMove(zoom=1.02, pan_x=0.01, rotate=-3))
    assert (cam.zoom, cam.pan_x, cam.rotate) == (1.02, 0.01, -3.0)  # float32 noise removed
    with pytest.raises(ValueError, match=r"camera\.zoom: must be a number in \[0\.8, 1\.25\]"):
        Camera.of({"zoom": 2.0})
    with pytest.raises(ValueError, match=r"camera\.rotate: must be a number in \[-15, 15\]"):
        Camera.of({"rotate": 20})


# --- sharpening -----------------------------------------------------------------------------


def test_unsharp_mask_restores_edges_and_keeps_colours() -> None:
    sharp = texture(0)
    soft = cv2.GaussianBlur(sharp, (0, 0), 1.0)

    def edge_energy(img: np.ndarray) -> float:
        return float(np.abs(cv2.Laplacian(lightness(img), cv2.CV_32F)).mean())

    restored = unsharp_mask(soft, 1.0)
    assert edge_energy(restored) > 1.3 * edge_energy(soft)
    assert np.abs(restored.astype(int) - sharp).mean() < np.abs(soft.astype(int) - sharp).mean()
    assert color_distance(restored, soft).mean_color < 0.5  # sharpening moves no colours
    assert np.array_equal(unsharp_mask(soft, 0.0), soft)
    with pytest.raises(ValueError, match=r"sharpen: must be a number in \[0, 3\]"):
        unsharp_mask(soft, 5.0)
