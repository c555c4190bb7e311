"""Context windows in pure PyTorch: schedules, fuse weights, FreeNoise noise and the windowed denoiser.

The same schedules and weights against the host's own functions: tests/nodes/test_context_nodes.py.
"""

import pytest
import torch

from lightning_core import context


def covered(windows, num_frames):
    return sorted({i for w in windows for i in w}) == list(range(num_frames))


@pytest.mark.parametrize("schedule", context.SCHEDULES)
@pytest.mark.parametrize("num_frames", [16, 17, 48, 64, 100])
def test_every_schedule_covers_every_frame_with_windows_in_range(schedule, num_frames):
    for step in range(4):
        windows = context.context_windows(schedule, num_frames, 16, 4, step=step)
        assert covered(windows, num_frames), (schedule, step, windows)
        assert all(0 <= i < num_frames for w in windows for i in w)
        assert all(len(w) == 16 for w in windows[:-1])


def test_static_windows_advance_by_length_minus_overlap_and_the_last_ends_on_the_last_frame():
    windows = context.static_windows(64, 16, 4)
    assert [w[0] for w in windows] == [0, 12, 24, 36, 48]
    assert windows[-1] == list(range(48, 64)) and all(w == list(range(w[0], w[0] + 16)) for w in windows)
    assert context.static_windows(50, 16, 4)[-1] == list(range(34, 50))


def test_batched_windows_do_not_overlap_and_the_last_may_be_shorter():
    assert context.batched_windows(40, 16) == [list(range(0, 16)), list(range(16, 32)), list(range(32, 40))]


def test_uniform_windows_shift_at_each_step_and_standard_ones_never_wrap():
    offsets = [context.ordered_halving(step) for step in range(4)]
    assert offsets == [0.0, 0.5, 0.25, 0.75]
    first = [context.standard_uniform_windows(64, 16, 4, step=s)[0][0] for s in range(4)]
    assert len(set(first)) > 1, "uniform windows should move between steps"
    for step in range(8):
        for w in context.standard_uniform_windows(64, 16, 4, step=step):
            assert w == list(range(w[0], w[0] + 16)), f"step {step}: {w} wraps"


def test_looped_windows_wrap_around_the_end_and_closed_loop_adds_the_closing_window():
    assert context.looped_uniform_windows(48, 16, 4)[-1] == list(range(36, 48)) + [0, 1, 2, 3]
    open_loop = context.looped_uniform_windows(50, 16, 4)
    closed = context.looped_uniform_windows(50, 16, 4, closed_loop=True)
    assert closed[:len(open_loop)] == open_loop
    assert closed[len(open_loop):] == [[48, 49] + list(range(14))]


def test_short_videos_are_one_window():
    for schedule in context.SCHEDULES:
        assert context.context_windows(schedule, 12, 16, 4) == [list(range(12))]


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="standard_uniform"):
        context.context_windows("spiral", 64, 16, 4)
    with pytest.raises(ValueError, match="pyramid"):
        context.fuse_weights("gauss", list(range(16)), 64, 4)


def test_fuse_weights():
    assert context.pyramid_weights(6).tolist() == [1, 2, 3, 3, 2, 1]
    assert context.pyramid_weights(5).tolist() == [1, 2, 3, 2, 1]
    assert context.fuse_weights("flat", list(range(4, 8)), 16, 2).tolist() == [1, 1, 1, 1]
    middle = context.fuse_weights("overlap-linear", list(range(4, 12)), 16, 3)
    torch.testing.assert_close(middle, torch.tensor([1e-37, 0.5, 1, 1, 1, 1, 0.5, 1e-37]))
    assert context.fuse_weights("overlap-linear", list(range(0, 8)), 16, 3)[:3].tolist() == [1, 1, 1]
    assert context.fuse_weights("overlap-linear", list(range(8, 16)), 16, 3)[-3:].tolist() == [1, 1, 1]
    relative = context.relative_weights(list(range(10, 17)))
    assert relative.argmax() == 3 and relative.min() >= 1e-2 and torch.equal(relative, relative.flip(0))


def test_nearest_step_uses_one_sigma_for_a_per_frame_timestep():
    sigmas = torch.tensor([25.1461, 6.5572, 2.2760, 0.8670, 0.0])
    assert context.nearest_step(sigmas, torch.full((48,), 6.5572)) == 1
    assert context.nearest_step(sigmas, torch.full((48,), 2.3)) == 2  # not exactly on the schedule


def test_stack_windows_groups_consecutive_windows_of_equal_length():
    windows = context.batched_windows(40, 16)
    assert context.stack_windows(windows, 2) == [[windows[0], windows[1]], [windows[2]]]
    windows = context.static_windows(64, 16, 4)
    assert [len(g) for g in context.stack_windows(windows, 3)] == [3, 2]
    assert [len(g) for g in context.stack_windows(windows, 1)] == [1] * 5


def freenoise_of(num_frames, seed, length=16, overlap=4):
    noise = torch.randn(num_frames, 4, 2, 2, generator=torch.Generator().manual_seed(100))
    return noise, context.freenoise(noise, length, overlap, torch.Generator().manual_seed(seed))


def test_freenoise_repeats_the_first_window_shuffled_block_by_block():
    noise, free = freenoise_of(64, seed=1)
    assert torch.equal(free[:16], noise[:16])
    first = [f for f in free[:16]]
    for i in range(16, 64):  # every later frame is one of the first window's frames
        assert any(torch.equal(free[i], f) for f in first), i
    for start in range(16, 64, 12):  # each block of 12 is a permutation of the block one window earlier
        block, source = free[start:start + 12], free[start - 16:start - 4]
        matches = [[torch.equal(a, b) for b in source] for a in block]
        assert all(sum(row) == 1 for row in matches) and len({row.index(True) for row in matches}) == len(block)
    assert not torch.equal(free[16:28], free[0:12]), "the repeats should be shuffled"


def test_freenoise_is_deterministic_per_seed_and_leaves_short_videos_alone():
    _, a = freenoise_of(40, seed=3)
    _, b = freenoise_of(40, seed=3)
    _, c = freenoise_of(40, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise, short = freenoise_of(16, seed=3)
    assert torch.equal(short, noise)
    with pytest.raises(ValueError, match="overlap"):
        context.freenoise(noise, 16, 16, torch.Generator())


def test_denoise_windowed_is_a_weighted_average_of_the_windows():
    x = torch.randn(10, 2, 1, 1)
    windows = [list(range(0, 6)), list(range(4, 10))]
    weights = [torch.ones(6), torch.full((6,), 3.0)]
    calls = []

    def denoiser(window_x, sigma):  # frame value + window number, so the fused mix is visible
        calls.append(window_x.shape[0])
        return window_x + len(calls) - 1

    out = context.denoise_windowed(denoiser, x, torch.tensor(1.0), windows, weights)
    assert calls == [6, 6]
    torch.testing.assert_close(out[:4], x[:4])
    torch.testing.assert_close(out[4:6], x[4:6] + 0.75)  # (0 * 1 + 1 * 3) / 4
    torch.testing.assert_close(out[6:], x[6:] + 1)


def test_a_single_window_covering_all_frames_is_the_plain_denoiser():
    x = torch.randn(8, 4, 3, 3)
    denoiser = lambda window_x, sigma: window_x * sigma + window_x.mean(0)  # noqa: E731  (couples frames)
    out = context.denoise_windowed(denoiser, x, 0.5, [list(range(8))], [context.pyramid_weights(8)])
    torch.testing.assert_close(out, denoiser(x, 0.5))
