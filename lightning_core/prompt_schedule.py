"""Prompt travel: a text schedule of keyframe prompts, interpolated per frame in text-embedding space.

A schedule holds keyframes `KEY: prompt`, `"KEY": "prompt",` (JSON, as AnimateDiff-Evolved and FizzNodes write
them, several per line allowed) or `KEY = "prompt",` (AnimateDiff-Evolved's pythonic form). KEY is a frame
(`8`), counted from the end when negative (`-1` is the last frame), a fraction of the length with a decimal
point (`0.5` is frame int(0.5 * frames), `1.0` the last), or a range `START:END` giving every frame from START
up to END (excluded) the prompt; a trailing colon (`8:`) holds the keyframe's prompt up to the next keyframe
instead of blending. These are AnimateDiff-Evolved's index rules; docs/prompt_schedule.md has the table.
Blank lines, `#` comments and lone braces are skipped; keyframes past the last frame are dropped with a
warning, so a schedule written for 96 frames runs on 64.

Frame f between keyframes f0 < f1 gets (1 - w) * e0 + w * e1 with w = (f - f0) / (f1 - f0) (w = 0 after a held
keyframe); frames before the first keyframe hold its embedding, frames after the last hold the last one.
Weights are computed in float64 and each factor is rounded to the embedding's dtype on its own, which is
exactly what ComfyUI's ConditioningAverage computes for the same weight.
"""

import logging
import math
import re
from typing import NamedTuple

import torch

log = logging.getLogger("animatediff_lightning")

_KEY = r"[\d.:\-]+"  # frame, fraction or range, with an optional trailing hold colon; checked by frame_indexes
_QUOTED_ENTRY = re.compile(rf'\s*(?:"\s*({_KEY})\s*"\s*:|({_KEY})\s*=)\s*"([^"]*)"\s*(?:,|$)')
_PLAIN_LINE = re.compile(rf'^"?\s*({_KEY})\s*"?\s*:\s*(.*?)\s*,?$')
_SKIPPED = {"{", "}", ""}
FORMS = "`FRAME: prompt`, `\"FRAME\": \"prompt\",` or `FRAME = \"prompt\",`"


class Keyframe(NamedTuple):
    frame: int
    prompt: str
    hold: bool = False  # keep this prompt until the next keyframe instead of blending towards it


def _unquote(text):
    """The prompt inside one pair of double quotes (as in `0: "a cat"`), the text itself unquoted, or None when
    quotes do not pair up (`"a dog" "8"`: most likely two JSON entries with a typo)."""
    if not text.startswith('"'):
        return text
    return text[1:-1] if len(text) >= 2 and text.endswith('"') and '"' not in text[1:-1] else None


def frame_position(token, frames):
    """One index of a key: N, -N counted from the end, or a fraction 0.0-1.0 of `frames` (1.0: the last frame)."""
    if "." in token:
        try:
            fraction = float(token)
        except ValueError:
            raise ValueError(f"'{token}' is not a number") from None
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"a decimal index is a fraction of the video from 0.0 to 1.0, got {token}")
        return frames - 1 if math.isclose(fraction, 1.0) else int(fraction * frames)
    try:
        index = int(token)
    except ValueError:
        raise ValueError(f"'{token}' is not a frame number") from None
    return frames + index if index < 0 else index


def frame_indexes(key, frames):
    """(frames the key names, hold): `8`, `-1`, `0.5`, `0:12` (END excluded, reversed ends swapped), `8:` holds."""
    hold = key.endswith(":")
    key = key[:-1] if hold else key
    if not key or key.startswith(":") or key.count(":") > 1:
        raise ValueError(f"'{key}{':' if hold else ''}' is not a frame, a fraction or a range START:END")
    if ":" in key:
        start, end = (max(0, frame_position(part, frames)) for part in key.split(":"))
        if start == end:
            return [start], hold
        return list(range(min(start, end), max(start, end))), hold
    index = frame_position(key, frames)
    if index < 0:
        raise ValueError(f"frame {key} counts back past the first frame of a {frames}-frame video")
    return [index], hold


def line_entries(line):
    """[(key, prompt), ...] of one schedule line, or None when it is no keyframe form."""
    entries, position = [], 0
    while position < len(line) and (match := _QUOTED_ENTRY.match(line, position)):
        entries.append((match.group(1) or match.group(2), match.group(3).strip()))
        position = match.end()
    if entries and not line[position:].strip():
        return entries
    match = _PLAIN_LINE.match(line)
    prompt = _unquote(match.group(2)) if match else None
    return [(match.group(1), prompt.strip())] if prompt is not None else None


def _strip_braces(line):
    """A line without the braces of a JSON object around it, e.g. `{"0": "a cat", "8": "a dog"}`."""
    line = line[1:].strip() if line.startswith("{") else line
    return line[:-1].strip() if line.endswith("}") else line


def parse_schedule(text, frames):
    """Returns [Keyframe, ...] sorted by frame; a ValueError names the offending line."""
    keyframes, seen, past_end = [], {}, []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_braces(raw.strip())
        if line in _SKIPPED or line.startswith("#"):
            continue
        entries = line_entries(line)
        if entries is None:
            raise ValueError(f"prompt schedule line {number} ({line!r}) is not a keyframe: write {FORMS}, "
                             f"e.g. `0: a cat walking` (docs/prompt_schedule.md lists every form)")
        for key, prompt in entries:
            where = f"prompt schedule line {number} ({line!r})"
            if not prompt and '"' not in line:
                raise ValueError(f"{where} has no prompt after the colon")
            try:
                indexes, hold = frame_indexes(key, frames)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            for frame in indexes:
                if frame >= frames:
                    past_end.append(number)
                    continue
                if frame in seen:
                    raise ValueError(f"{where}: frame {frame} is already set on line {seen[frame]}")
                seen[frame] = number
                keyframes.append(Keyframe(frame, prompt, hold))
    if past_end:
        log.warning("prompt schedule: keyframes past the last frame (%d) ignored, on line(s) %s", frames - 1,
                    ", ".join(str(n) for n in dict.fromkeys(past_end)))
    if not keyframes:
        if past_end:
            raise ValueError(f"every keyframe of the prompt schedule is past the last frame ({frames - 1}) of the "
                             f"{frames}-frame video")
        raise ValueError("the prompt schedule is empty: write one keyframe per line, e.g. `0: a cat walking`")
    return sorted(keyframes)


def frame_weights(keyframes, frames, holds=None):
    """Per frame: (left keyframe index, right keyframe index, weight of the right one, float64).

    `keyframes` are sorted frame positions; a keyframe with holds[i] keeps weight 0 up to the next one."""
    positions = torch.tensor(keyframes, dtype=torch.float64)
    frame = torch.arange(frames, dtype=torch.float64)
    right = torch.searchsorted(positions, frame, right=True).clamp(max=len(keyframes) - 1)
    left = (right - 1).clamp(min=0)
    span = positions[right] - positions[left]
    weight = ((frame - positions[left]) / torch.where(span > 0, span, 1.0)).clamp(0.0, 1.0)
    if holds is not None:
        weight = torch.where(torch.tensor(holds, dtype=torch.bool)[left], 0.0, weight)
    return left, right, weight


def interpolate(embeddings, keyframes, frames, holds=None):
    """Per-frame embeddings [frames, ...] from one embedding per keyframe [len(keyframes), ...]."""
    left, right, weight = frame_weights(keyframes, frames, holds)
    shape = (frames,) + (1,) * (embeddings.dim() - 1)
    w_right = weight.to(embeddings.dtype).view(shape)
    w_left = (1.0 - weight).to(embeddings.dtype).view(shape)
    return embeddings[right] * w_right + embeddings[left] * w_left


def match_token_length(embeddings):
    """Repeats each [1, tokens, dim] embedding along tokens to a common length (the lcm), as ComfyUI pads conds."""
    length = math.lcm(*(e.shape[1] for e in embeddings))
    return [e.repeat(1, length // e.shape[1], 1) for e in embeddings]
