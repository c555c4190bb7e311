"""Synthetic training videos: moving shapes whose frames carry their own index, with .txt captions.

Frame layout, inside the centred m x m square (m = min(H, W), so it survives a resize + centre crop): the
top m/8 rows hold the frame index as 8 black/white cells (bit k in cell k, least significant bit on the
left, index mod 256); the bottom m/8 rows are red on the left half and blue on the right (so a mirrored
frame is recognisable). A coloured shape moves across the whole frame in between.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lightning_core.files import atomic_path, write_text_atomic

INDEX_BITS = 8
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40),
           "white": (240, 240, 240), "purple": (150, 60, 200)}
BACKGROUNDS = {"grey": (110, 110, 110), "dark": (30, 30, 40), "teal": (30, 110, 110)}
SHAPES = ("circle", "square")


def code_square(h: int, w: int) -> tuple[int, int, int]:
    """(top, left, side) of the centred square that carries the index code and the flip marker."""
    m = min(h, w)
    return (h - m) // 2, (w - m) // 2, m


def draw_frame(index: int, size: tuple[int, int], shape: str, colour, background, position) -> np.ndarray:
    """One RGB uint8 frame: index code on top, flip marker at the bottom, the shape at `position` (x, y)."""
    w, h = size
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = background
    radius = max(2, h // 8)
    x, y = (int(round(v)) for v in position)
    if shape == "circle":
        cv2.circle(frame, (x, y), radius, colour, thickness=-1)
    else:
        cv2.rectangle(frame, (x - radius, y - radius), (x + radius, y + radius), colour, thickness=-1)
    top, left, m = code_square(h, w)
    band, cell = m // 8, m / INDEX_BITS
    for bit in range(INDEX_BITS):
        on = (index >> bit) & 1
        frame[top:top + band, left + round(bit * cell):left + round((bit + 1) * cell)] = 255 if on else 0
    frame[top + m - band:top + m, left:left + m // 2] = (255, 0, 0)
    frame[top + m - band:top + m, left + m // 2:left + m] = (0, 0, 255)
    return frame


def decode_frame_index(frame: np.ndarray) -> int:
    """Reads the index code of a decoded RGB frame (the centre of each cell, thresholded at mid-grey)."""
    top, left, m = code_square(*frame.shape[:2])
    band, cell = m // 8, m / INDEX_BITS
    rows = slice(top + band // 4, top + max(band // 4 + 1, 3 * band // 4))
    index = 0
    for bit in range(INDEX_BITS):
        a, b = left + round(bit * cell), left + round((bit + 1) * cell)
        middle = slice(a + (b - a) // 4, max(a + (b - a) // 4 + 1, b - (b - a) // 4))
        if frame[rows, middle].mean() > 127:
            index |= 1 << bit
    return index


def is_mirrored(frame: np.ndarray) -> bool:
    """True when the bottom flip marker reads blue-left / red-right."""
    top, left, m = code_square(*frame.shape[:2])
    bottom = frame[top + m - m // 16:top + m, left:left + m].astype(np.int32)
    west, east = bottom[:, : m // 4].mean((0, 1)), bottom[:, -(m // 4):].mean((0, 1))
    return bool(west[2] > west[0] and east[0] > east[2])


def write_synthetic_videos(folder, count: int, frames: int, size, seed: int = 0, codec: str = "mp4v") -> Path:
    """Writes `count` videos clip_0000.mp4 ... with matching .txt captions to `folder`; returns the folder.

    `size` is an int (square) or (width, height). Deterministic in `seed`; existing files are kept, and each
    file is written under a temporary name and renamed, so ranks writing the same folder at once are safe.
    `codec` "FFV1" writes lossless .mkv files instead of .mp4 (exact pixels for tests).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = (size, size) if isinstance(size, int) else tuple(size)
    ext = ".mkv" if codec == "FFV1" else ".mp4"
    for i in range(count):
        path = folder / f"clip_{i:04d}{ext}"
        rng = np.random.default_rng([seed, i])
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour_name = list(COLOURS)[rng.integers(len(COLOURS))]
        background_name = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        speed = float(rng.uniform(0.5, 2.0)) * w / max(frames, 1)
        direction = "right" if rng.random() < 0.5 else "left"
        y = float(rng.uniform(h * 0.3, h * 0.7))
        caption = f"a {colour_name} {shape} moving {direction} on a {background_name} background"
        if not path.exists():
            with atomic_path(path, keep_suffix=True) as tmp:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), 8.0, (w, h))
                if not writer.isOpened():
                    raise RuntimeError(f"opencv cannot write {codec} video to {tmp}")
                for k in range(frames):
                    x = (w * 0.1 + speed * k) % w if direction == "right" else (w * 0.9 - speed * k) % w
                    frame = draw_frame(k, (w, h), shape, COLOURS[colour_name], BACKGROUNDS[background_name], (x, y))
                    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                writer.release()
        caption_file = path.with_suffix(".txt")
        if not caption_file.exists() or caption_file.read_text() != caption:
            write_text_atomic(caption_file, caption)
    return folder


