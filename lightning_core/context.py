"""Context windows: denoise a video longer than the motion module's window as overlapping windows of frames.

Window schedules and fuse weights follow ComfyUI's `comfy/context_windows.py` (after animatediff-cli)
number for number, so the host's handler and the plain loop in `denoise_windowed` can be checked against
each other. A window is a list of frame indices; a schedule returns the windows of one sampling step.
"""

import math

import torch

SCHEDULES = ("standard_uniform", "looped_uniform", "standard_static", "batched")
FUSE_METHODS = ("pyramid", "flat", "overlap-linear", "relative")


def check_frames(name, frames, limit, advice=""):
    """ValueError naming `name` when `frames` exceed the `limit` frames a motion module's position encoding covers."""
    if limit and frames > limit:
        raise ValueError(f"{name} is {frames} frames but this motion module's position encoding covers {limit} "
                         f"frames; {advice or f'use a {name} of at most {limit}'}")


def ordered_halving(step):
    """Bit-reversed fraction of `step` in [0, 1): 0, 1/2, 1/4, 3/4, ... shifts uniform windows per step."""
    return int(f"{step:064b}"[::-1], 2) / (1 << 64)


def looped_uniform_windows(num_frames, length, overlap, step=0, stride=1, closed_loop=False):
    """Windows of `length` frames every `length - overlap`, offset per step, wrapping past the last frame."""
    if num_frames < length:
        return [list(range(num_frames))]
    strides = min(stride, math.ceil(math.log2(num_frames / length)) + 1)
    offset = ordered_halving(step)
    pad = int(round(num_frames * offset))
    end = num_frames + pad + (0 if closed_loop else -overlap)
    windows = []
    for spacing in (1 << s for s in range(strides)):
        for start in range(int(offset * spacing) + pad, end, length * spacing - overlap):
            windows.append([i % num_frames for i in range(start, start + length * spacing, spacing)])
    return windows


def _wraps_at(window, num_frames):
    """Position where a window wraps around to the first frames, or None."""
    values = [i % num_frames for i in window]
    return next((p for p in range(1, len(values)) if values[p] < values[p - 1]), None)


def _shifted_to_end(window, num_frames):
    """The window's frame pattern moved so that it ends on the last frame."""
    relative = [(i - window[0] + num_frames) % num_frames for i in window]
    return [i + num_frames - relative[-1] - 1 for i in relative]


def standard_uniform_windows(num_frames, length, overlap, step=0, stride=1):
    """Uniform windows that never wrap: a wrapping window moves to the end, the frames it left get their own."""
    if num_frames <= length:
        return [list(range(num_frames))]
    windows = looped_uniform_windows(num_frames, length, overlap, step, stride)
    i = 0
    while i < len(windows):
        wrap = _wraps_at(windows[i], num_frames)
        if wrap is not None:
            first_wrapped = windows[i][wrap]
            windows[i] = _shifted_to_end(windows[i], num_frames)
            if first_wrapped not in windows[(i + 1) % len(windows)]:
                windows.insert(i + 1, list(range(first_wrapped, first_wrapped + length)))
        i += 1
    return [w for i, w in enumerate(windows) if w not in windows[:i]]


def static_windows(num_frames, length, overlap):
    """The same windows at every step, `length - overlap` apart; the last one ends on the last frame."""
    if num_frames <= length:
        return [list(range(num_frames))]
    windows = []
    for start in range(0, num_frames, length - overlap):
        if start + length >= num_frames:
            windows.append(list(range(num_frames - length, num_frames)))
            break
        windows.append(list(range(start, start + length)))
    return windows


def batched_windows(num_frames, length):
    """Consecutive windows without overlap; the last one may be shorter."""
    return [list(range(start, min(start + length, num_frames))) for start in range(0, max(num_frames, 1), length)]


def context_windows(schedule, num_frames, length, overlap, step=0, stride=1, closed_loop=False):
    """The windows of sampling step `step` under the named schedule."""
    if schedule == "standard_uniform":
        return standard_uniform_windows(num_frames, length, overlap, step, stride)
    if schedule == "looped_uniform":
        return looped_uniform_windows(num_frames, length, overlap, step, stride, closed_loop)
    if schedule == "standard_static":
        return static_windows(num_frames, length, overlap)
    if schedule == "batched":
        return batched_windows(num_frames, length)
    raise ValueError(f"unknown context schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


def pyramid_weights(length):
    """1, 2, ..., peak, ..., 2, 1: frames near a window's middle count most (FreeNoise's weighted average)."""
    half = list(range(1, (length + 1) // 2 + 1))
    return torch.tensor(half + half[::-1][length % 2:], dtype=torch.float32)


def overlap_linear_weights(window, num_frames, overlap):
    """1 inside, a linear ramp over the overlap at each edge that borders another window."""
    weights = torch.ones(len(window))
    if overlap == 0:
        return weights
    if min(window) > 0:
        weights[:overlap] = torch.linspace(1e-37, 1, overlap)
    if max(window) < num_frames - 1:
        weights[-overlap:] = torch.linspace(1, 1e-37, overlap)
    return weights


def relative_weights(window):
    """Closeness of each frame to the window's centre, from its first and last index (at least 0.01)."""
    centre, half = (window[0] + window[-1]) / 2, (window[-1] - window[0] + 1e-2) / 2
    return torch.tensor([max(1e-2, 1 - abs(i - centre) / half) for i in window], dtype=torch.float32)


def fuse_weights(method, window, num_frames, overlap):
    """Per-frame weights of one window's result in the fused average."""
    if method == "flat":
        return torch.ones(len(window))
    if method == "pyramid":
        return pyramid_weights(len(window))
    if method == "overlap-linear":
        return overlap_linear_weights(window, num_frames, overlap)
    if method == "relative":
        return relative_weights(window)
    raise ValueError(f"unknown fuse method {method!r}; expected one of {', '.join(FUSE_METHODS)}")


def nearest_step(sigmas, sigma):
    """Index of the schedule sigma closest to `sigma` (one noise level for all frames of the batch)."""
    return int((sigmas - sigma.flatten()[0].to(sigmas)).abs().argmin())


def stack_windows(windows, per_call):
    """Groups consecutive windows of equal length, at most `per_call` a group, to run in one model call."""
    groups = []
    for window in windows:
        if groups and len(groups[-1]) < per_call and len(groups[-1][0]) == len(window):
            groups[-1].append(window)
        else:
            groups.append([window])
    return groups


def freenoise(noise, length, overlap, generator):
    """FreeNoise initial noise (Qiu et al. 2023): each further block of `length - overlap` frames repeats,
    shuffled, the noise of the block one window earlier, so every frame reuses a frame of the first window."""
    stride = length - overlap
    if stride <= 0:
        raise ValueError(f"context overlap {overlap} must be smaller than the context length {length}")
    noise = noise.clone()
    for start in range(length, noise.shape[0], stride):
        count = min(stride, noise.shape[0] - start)
        source = torch.randperm(stride, generator=generator)[:count] + start - length
        noise[start:start + count] = noise[source.to(noise.device)]
    return noise


def denoise_windowed(denoiser, x, sigma, windows, weights):
    """Runs `denoiser(x[window], sigma)` window by window and averages the results per frame with `weights`."""
    return fuse_windows(lambda window_x: denoiser(window_x, sigma), x, [[w] for w in windows], weights)


def fuse_windows(function, x, groups, weights, dim=0):
    """Runs `function` on each group of equal-length windows of `x` along `dim` and averages per frame.

    A group of n windows of L frames is one call: `function` gets their frames stacked on dim 0 as n batches of
    [..., L, ...] (n * x.shape[0] rows when dim is 1) and returns the same shape. `weights` holds one tensor per
    window, in the groups' order. Frames in no window come out as 0 / 0.
    """
    shape = [1] * x.ndim
    shape[dim] = -1
    fused, total = torch.zeros_like(x), x.new_zeros(x.shape[dim])
    weights = iter(weights)
    for group in groups:
        index = torch.tensor([i for window in group for i in window], device=x.device)
        weight = torch.cat([next(weights) for _ in group]).to(x)
        frames = x.index_select(dim, index)
        if dim > 0:  # [a, n * L, ...] -> [n * a, L, ...]: each window its own batch entry
            frames = frames.unflatten(dim, (len(group), -1)).movedim(dim, 0).flatten(0, 1)
        out = function(frames)
        if dim > 0:
            out = out.unflatten(0, (len(group), -1)).movedim(0, dim).flatten(dim, dim + 1)
        fused.index_add_(dim, index, out * weight.view(shape))
        total.index_add_(0, index, weight)
    return fused / total.view(shape)


def view_windows(schedule, fuse_method, num_frames, length, overlap, step=0, closed_loop=False):
    """(groups of equal-length windows, their fuse weights) for the motion module's views of `num_frames` frames.

    None when one view covers every frame in order: then nothing is windowed, so the result is the plain one.
    """
    windows = context_windows(schedule, num_frames, length, overlap, step, closed_loop=closed_loop)
    if len(windows) == 1 and windows[0] == list(range(num_frames)):
        return None
    return stack_windows(windows, len(windows)), [fuse_weights(fuse_method, w, num_frames, overlap) for w in windows]
