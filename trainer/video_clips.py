"""Fixed-length clips from video files with opencv: frame arithmetic, streamed decode, resize + centre crop, flip.

A clip is `frames` frames taken every `stride` frames from `start`, so it spans (frames - 1) * stride + 1
source frames; a video with fewer frames than that is too short for the clip.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from lightning_core import video


class VideoReadError(Exception):
    """A video cannot be opened or decoded (corrupt, truncated, not a video)."""


class ClipTooShort(Exception):
    """A video has fewer frames than one clip spans."""


def clip_span(frames: int, stride: int) -> int:
    """Source frames one clip covers, first to last inclusive."""
    return (frames - 1) * stride + 1


def num_clip_starts(video_frames: int, frames: int, stride: int) -> int:
    """How many start positions fit a clip in the video (0 if it is too short)."""
    return max(0, video_frames - clip_span(frames, stride) + 1)


def clip_frame_indices(start: int, frames: int, stride: int) -> list[int]:
    """Source frame indices of the clip starting at `start`."""
    return [start + k * stride for k in range(frames)]


def count_frames(path) -> int:
    """Frame count from the container; decodes the stream to count when the container does not say."""
    capture = _open(path)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:
            count = 0
            while capture.grab():
                count += 1
        return count
    finally:
        capture.release()


def read_frames(path, indices: list[int]) -> np.ndarray:
    """Decodes the frames at ascending `indices` -> uint8 RGB [f, H, W, 3], reading the stream in order.

    Frames are walked with grab() rather than seeked to: seeking is inexact for many codecs.
    """
    capture = _open(path)
    wanted, out, position = list(indices), [], 0
    try:
        for index in wanted:
            while position < index:
                if not capture.grab():
                    raise _ended(path, position, wanted[-1])
                position += 1
            ok, frame = capture.read()
            if not ok or frame is None:
                raise _ended(path, position, wanted[-1])
            position += 1
            out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if len({f.shape for f in out}) > 1:
        raise VideoReadError(f"{path}: frame size changes within the clip")
    return np.stack(out)


def _ended(path, position: int, last: int) -> ClipTooShort:
    return ClipTooShort(f"{path}: the stream ends at frame {position}, the clip needs frame {last}")


def _open(path) -> cv2.VideoCapture:
    if not Path(path).is_file():
        raise VideoReadError(f"{path}: no such file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoReadError(f"{path}: opencv cannot open it as a video")
    return capture


def frames_to_pixels(frames: np.ndarray, size: int, flip: bool) -> torch.Tensor:
    """uint8 RGB [f, H, W, 3] -> float32 [f, 3, size, size] in [-1, 1], resized, centre-cropped, optionally mirrored.
    The resize and crop are the video loader node's (`lightning_core.video.fit`): area filter down, bicubic up."""
    clip = np.stack([video.fit(f, (size, size)) for f in frames])
    if flip:
        clip = clip[:, :, ::-1]
    pixels = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0
