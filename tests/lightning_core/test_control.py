"""Weight-free control preprocessors: known answers on synthetic frames, batch handling, bad input."""

import numpy as np
import pytest
import torch

from lightning_core import control

H, W = 32, 40


def square_frame(top=8, left=10, size=12, value=1.0):
    """Black frame with one bright square."""
    frame = np.zeros((H, W, 3), np.float32)
    frame[top:top + size, left:left + size] = value
    return frame


def ramp_frame(slope):
    """Horizontal luminance ramp: intensity grows by `slope` per pixel."""
    row = (0.2 + slope * np.arange(W, dtype=np.float32))[None, :, None]
    return np.broadcast_to(row, (H, W, 3)).copy()


def test_canny_outlines_a_square_and_nothing_else():
    out = control.canny(square_frame(), 100, 200)
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 1.0} and (out[..., 0] == out[..., 2]).all()
    edges = out[..., 0] > 0
    rows, cols = np.nonzero(edges)
    # every edge pixel lies within one pixel of the square's border; interior and far background are black
    assert rows.min() >= 7 and rows.max() <= 20 and cols.min() >= 9 and cols.max() <= 22
    assert not edges[11:17, 13:19].any() and not edges[:5].any()
    assert edges.sum() >= 4 * 10  # the whole outline, not a few dots


def test_canny_thresholds_select_by_contrast():
    faint = square_frame(value=0.1)  # a step of 26 (8-bit): its Sobel gradient is 4 x 26 = 104 along the sides
    assert control.canny(faint, 50, 100)[..., 0].any()
    assert not control.canny(faint, 150, 200)[..., 0].any()
    with pytest.raises(ValueError, match="low_threshold <= high_threshold"):
        control.canny(faint, 200, 100)


@pytest.mark.parametrize("blur_sigma", [0.0, 1.0, 3.0])
def test_soft_edges_measure_the_slope(blur_sigma):
    # A linear ramp stays linear under the blur, so its interior reads slope x gain exactly.
    out = control.soft_edges(ramp_frame(0.01), blur_sigma=blur_sigma, gain=4.0)
    m = int(4 * blur_sigma) + 2  # beyond the blur kernel's reach of the frame border
    interior = out[m:-m, m:-m]
    np.testing.assert_allclose(interior, 0.04, atol=1e-5)
    flat = control.soft_edges(np.full((H, W, 3), 0.5, np.float32), blur_sigma=blur_sigma)
    assert np.abs(flat).max() < 1e-6
    step = control.soft_edges(square_frame(), blur_sigma=blur_sigma, gain=4.0)
    # a blurred unit step peaks at slope 1 / (sqrt(2 pi) sigma): it saturates unless blurred wide
    peak = 1.0 if blur_sigma <= 1 else 4.0 / (np.sqrt(2 * np.pi) * blur_sigma)
    assert step.max() == pytest.approx(peak, rel=0.1) and step[0, 0].max() < 1e-3


def test_grayscale_is_bt601_luma_and_threshold_binarises():
    frame = np.random.default_rng(0).random((H, W, 3), dtype=np.float32)
    gray = control.grayscale(frame)
    luma = 0.299 * frame[..., 0] + 0.587 * frame[..., 1] + 0.114 * frame[..., 2]
    np.testing.assert_allclose(gray[..., 1], luma, atol=1e-5)
    binary = control.grayscale(frame, threshold=0.5)
    np.testing.assert_array_equal(binary[..., 0], (gray[..., 0] >= 0.5).astype(np.float32))


def test_tile_blurs_detail_and_keeps_flat_areas():
    checker = (np.indices((H, W)).sum(0) % 2).astype(np.float32)
    checker = np.repeat(checker[..., None], 3, -1)
    np.testing.assert_allclose(control.tile(checker, downscale=2), 0.5, atol=1e-6)  # 2x2 areas average to grey
    np.testing.assert_array_equal(control.tile(checker, downscale=1), checker)
    flat = np.full((H, W, 3), 0.3, np.float32)
    np.testing.assert_allclose(control.tile(flat, downscale=4, blur_sigma=2.0), 0.3, atol=1e-6)
    assert control.tile(square_frame(), downscale=4).shape == (H, W, 3)


def test_map_frames_processes_each_frame_alone():
    frames = torch.from_numpy(np.stack([square_frame(top=t) for t in (2, 8, 14)]))
    seen = []
    out = control.map_frames(control.canny, frames, on_frame=seen.append, low_threshold=50, high_threshold=150)
    assert out.shape == (3, H, W, 3) and out.dtype == torch.float32 and seen == [0, 1, 2]
    for i in range(3):
        alone = control.canny(frames[i].numpy(), 50, 150)
        np.testing.assert_array_equal(out[i].numpy(), alone)
    # frames differ, so their control frames do too (no frame is reused)
    assert not torch.equal(out[0], out[1])


def test_map_frames_takes_gray_and_rgba_batches():
    gray = torch.rand(2, H, W, 1)
    np.testing.assert_allclose(control.map_frames(control.grayscale, gray)[..., 0].numpy(), gray[..., 0].numpy(), atol=1e-5)
    rgba = torch.rand(2, H, W, 4)
    assert control.map_frames(control.tile, rgba).shape == (2, H, W, 3)


def test_map_frames_refuses_non_batches():
    with pytest.raises(ValueError, match=r"\[frames, height, width, channels\]"):
        control.map_frames(control.grayscale, torch.rand(H, W, 3))
