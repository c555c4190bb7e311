"""Control images without model weights: canny, soft edges, grayscale/threshold and tile, on opencv.

Every preprocessor maps one RGB frame (H, W, 3, float32 in 0..1, numpy) to a control frame of the same
size; `map_frames` runs one over an image batch [n, H, W, 3] (ComfyUI's IMAGE layout) and returns
[n, H, W, 3] float32 in 0..1. Each frame is processed on its own, with fixed scales (no per-frame or
per-batch normalisation), so a video's control frames do not flicker with its content and chunks of a
long video give what the whole video gives.
"""

import numpy as np
import torch

from .requirements import opencv

SOBEL_GAIN = 8.0  # a 3x3 Sobel of a ramp of slope a is 8a: dividing by it gives the slope in intensity per pixel


def to_uint8(frame):
    """0..1 float frame -> uint8, rounding to the nearest 8-bit value."""
    return np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)


def to_rgb(channel):
    """(H, W) float32 -> (H, W, 3) float32, the 3-channel image ControlNets take."""
    return np.repeat(channel[..., None], 3, axis=-1)


def luminance(frame):
    """ITU-R BT.601 luma of an RGB frame (what cv2.COLOR_RGB2GRAY computes), float32 0..1."""
    cv2 = opencv("the control preprocessors")
    return cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.float32), cv2.COLOR_RGB2GRAY)


def canny(frame, low_threshold=100, high_threshold=200):
    """Canny edges (white on black) of the 8-bit RGB frame, as the lllyasviel canny annotator computes them."""
    cv2 = opencv("the control preprocessors")
    if not 0 <= low_threshold <= high_threshold:
        raise ValueError(f"canny needs 0 <= low_threshold <= high_threshold, got {low_threshold} and {high_threshold}")
    edges = cv2.Canny(to_uint8(frame), low_threshold, high_threshold)
    return to_rgb(edges.astype(np.float32) / 255.0)


def soft_edges(frame, blur_sigma=1.0, gain=4.0):
    """Soft edge map: slope (intensity change per pixel, Sobel) of the blurred luma times `gain`, clipped to 1."""
    cv2 = opencv("the control preprocessors")
    gray = luminance(frame)
    if blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), blur_sigma)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.sqrt(gx * gx + gy * gy) / SOBEL_GAIN
    return to_rgb(np.clip(magnitude * gain, 0.0, 1.0))


def grayscale(frame, threshold=0.0):
    """Luma as a gray image; with threshold > 0, white where luma >= threshold and black elsewhere."""
    gray = luminance(frame)
    if threshold > 0:
        gray = (gray >= threshold).astype(np.float32)
    return to_rgb(np.clip(gray, 0.0, 1.0))


def tile(frame, downscale=4, blur_sigma=0.0):
    """The blurry low-resolution copy the tile ControlNet expects: area-downsample by `downscale`, cubic back up."""
    cv2 = opencv("the control preprocessors")
    h, w = frame.shape[:2]
    out = np.ascontiguousarray(frame, dtype=np.float32)
    if downscale > 1:
        small = cv2.resize(out, (max(1, round(w / downscale)), max(1, round(h / downscale))),
                           interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    if blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur_sigma)
    return np.clip(out, 0.0, 1.0)


def map_frames(preprocess, images, on_frame=None, **kwargs):
    """Applies `preprocess(frame, **kwargs)` to each frame of [n, H, W, 3]; calls on_frame(i) after frame i."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image batch [frames, height, width, channels], got shape {tuple(images.shape)}")
    out = torch.empty(images.shape[:3] + (3,), dtype=torch.float32)
    for i, frame in enumerate(images):
        rgb = frame.detach().cpu().float().numpy()
        rgb = np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb[..., :3]
        out[i] = torch.from_numpy(preprocess(rgb, **kwargs))
        if on_frame is not None:
            on_frame(i)
    return out
