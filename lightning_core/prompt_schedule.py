"""Prompt travel: a text schedule of keyframe prompts, interpolated per frame in text-embedding space.

A schedule is one keyframe per line, `FRAME: prompt` (also `"FRAME": "prompt",` as in a JSON object, so
schedules written for other prompt-travel nodes paste in). Blank lines, `#` comments and lone braces are
skipped. Frame f between keyframes f0 < f1 gets (1 - w) * e0 + w * e1 with w = (f - f0) / (f1 - f0); frames
before the first keyframe hold its embedding, frames after the last hold the last one. Weights are
computed in float64 and each factor is rounded to the embedding's dtype on its own, which is exactly what
ComfyUI's ConditioningAverage computes for the same weight.
"""

import math
import re

import torch

_KEYFRAME = re.compile(r'^"?([+-]?\d+)"?\s*:\s*(.*?)\s*,?$')
_SKIPPED = {"{", "}"}


def _unquote(text):
    """Strips one pair of surrounding double quotes, as in `"0": "a cat"`."""
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def parse_schedule(text, frames):
    """Returns [(frame, prompt), ...] sorted by frame; a ValueError names the offending line."""
    keyframes, seen = [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line in _SKIPPED:
            continue
        match = _KEYFRAME.match(line)
        if match is None:
            raise ValueError(f"prompt schedule line {number} ({line!r}) is not `FRAME: prompt`, "
                             f"e.g. `0: a cat walking`")
        frame, prompt = int(match.group(1)), _unquote(match.group(2)).strip()
        if not prompt:
            raise ValueError(f"prompt schedule line {number} ({line!r}) has no prompt after the colon")
        if not 0 <= frame < frames:
            raise ValueError(f"prompt schedule line {number} ({line!r}): frame {frame} is out of range; "
                             f"frames are 0 to {frames - 1} for a {frames}-frame video")
        if frame in seen:
            raise ValueError(f"prompt schedule line {number} ({line!r}): frame {frame} is already set "
                             f"on line {seen[frame]}")
        seen[frame] = number
        keyframes.append((frame, prompt))
    if not keyframes:
        raise ValueError("the prompt schedule is empty: write one keyframe per line, e.g. `0: a cat walking`")
    return sorted(keyframes)


def frame_weights(keyframes, frames):
    """Per frame: (left keyframe index, right keyframe index, weight of the right one, float64)."""
    positions = torch.tensor(keyframes, dtype=torch.float64)
    frame = torch.arange(frames, dtype=torch.float64)
    right = torch.searchsorted(positions, frame, right=True).clamp(max=len(keyframes) - 1)
    left = (right - 1).clamp(min=0)
    span = positions[right] - positions[left]
    weight = ((frame - positions[left]) / torch.where(span > 0, span, 1.0)).clamp(0.0, 1.0)
    return left, right, weight


def interpolate(embeddings, keyframes, frames):
    """Per-frame embeddings [frames, ...] from one embedding per keyframe [len(keyframes), ...]."""
    left, right, weight = frame_weights(keyframes, frames)
    shape = (frames,) + (1,) * (embeddings.dim() - 1)
    w_right = weight.to(embeddings.dtype).view(shape)
    w_left = (1.0 - weight).to(embeddings.dtype).view(shape)
    return embeddings[right] * w_right + embeddings[left] * w_left


def match_token_length(embeddings):
    """Repeats each [1, tokens, dim] embedding along tokens to a common length (the lcm), as ComfyUI pads conds."""
    length = math.lcm(*(e.shape[1] for e in embeddings))
    return [e.repeat(1, length // e.shape[1], 1) for e in embeddings]
