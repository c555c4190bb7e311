"""The flow arithmetic of trainer.distill against lightning_core.schedule and the paper's equations."""
import torch

from lightning_core import schedule
from trainer import distill

AB = distill.alpha_bar_table("cpu")


def test_student_grid_is_a_subset_of_the_teacher_grid():
    """128 -> 32: every student step starts and ends on the 128-step trailing grid, 4 teacher steps apart."""
    teacher = schedule.get_trailing_timesteps(128).tolist() + [-1]
    u0 = distill.sample_start(1, 32, [], torch.Generator()).new_tensor([1000 - k * 31.25 for k in range(32)])
    plan = distill.plan_timesteps(u0, 128, 32)
    assert plan.shape == (32, 5)
    assert plan[:, 0].tolist() == schedule.get_trailing_timesteps(32).tolist()
    for row in plan.tolist():
        i = teacher.index(row[0])
        assert row == teacher[i:i + 5]


def test_multi_timestep_plans_end_clean_for_one_step():
    plan = distill.plan_timesteps(torch.tensor([250.0, 500.0, 750.0, 1000.0], dtype=torch.float64), 2, 1)
    assert plan[:, 0].tolist() == [249, 499, 749, 999] and (plan[:, -1] == -1).all()
    plan = distill.plan_timesteps(torch.tensor([1000.0, 750.0], dtype=torch.float64), 4, 2)
    assert plan.tolist() == [[999, 749, 499], [749, 499, 249]]


def test_noise_move_and_zero_terminal_snr_swap():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, 4, generator=g), torch.randn(3, 2, 4, 4, 4, generator=g)
    t = torch.tensor([999, 500, -1])
    x_t = distill.add_noise(x0, eps, t, AB)
    assert torch.equal(x_t[0], eps[0])  # pure noise at t = T in training (SDXL-Lightning Eq. 24)
    assert torch.equal(x_t[2], x0[2])  # t = -1 is the clean sample
    ab = schedule.get_alphas_cumprod()[500].float()
    assert torch.allclose(x_t[1], ab.sqrt() * x0[1] + (1 - ab).sqrt() * eps[1])
    # with the true eps, one move lands exactly where forward() would put x0 (the flow is followed exactly)
    t1, t2 = torch.tensor([500]), torch.tensor([100])
    moved = distill.move(x_t[1:2], eps[1:2], t1, t2, AB)
    assert torch.allclose(moved, distill.add_noise(x0[1:2], eps[1:2], t2, AB), atol=1e-5)
    assert torch.allclose(distill.move(x_t[1:2], eps[1:2], t1, torch.tensor([-1]), AB), x0[1:2], atol=1e-5)


def test_renoise_only_touches_clean_targets():
    g = torch.Generator().manual_seed(1)
    t_next = torch.tensor([-1, 249])
    t_d, noise = distill.sample_d_noise(t_next, (2, 2, 4, 4, 4), [10, 250, 500, 750], [5, 1, 1, 1], g)
    assert t_d[1] == 249 and t_d[0] in (10, 250, 500, 750) and noise is not None
    x = torch.randn(2, 2, 4, 4, 4, generator=g)
    out = distill.renoise(x, t_next, t_d, noise, AB)
    assert torch.equal(out[1], x[1]) and not torch.equal(out[0], x[0])
    assert distill.sample_d_noise(torch.tensor([249]), (1,), [10], [], g) == (torch.tensor([249]), None)


class _RecordingUNet:
    """Stands in for the UNet: eps = 0.1 x + t / 1000, recording how many videos each call carries."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, context, num_frames=1, motion=None, time_emb_extra=None):
        self.batches.append(x.shape[0] // num_frames)
        return 0.1 * x + t.view(-1, 1, 1, 1).float() / 1000


def test_teacher_solve_skips_samples_already_clean():
    """A 4-step teacher from t = 250 is clean after one step: its later steps cost no pass, results unchanged."""
    plan = distill.plan_timesteps(torch.tensor([1000.0, 250.0], dtype=torch.float64), 4, 1)
    assert plan.tolist() == [[999, 749, 499, 249, -1], [249, -1, -1, -1, -1]]
    g = torch.Generator().manual_seed(2)
    x_t, context = torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(2, 5, 8, generator=g)
    unet = _RecordingUNet()
    out = distill.teacher_solve(unet, None, x_t, plan, context, None, 1.0, AB)
    assert unet.batches == [2, 1, 1, 1]
    expected = []
    for row in range(2):  # each sample alone, every step (a move from t = -1 to -1 is the identity)
        x = x_t[row:row + 1]
        for j in range(4):
            t, t_next = plan[row:row + 1, j], plan[row:row + 1, j + 1]
            x = distill.move(x, distill.video_eps(_RecordingUNet(), None, x, t, context[row:row + 1]), t, t_next, AB)
        expected.append(x)
    assert torch.allclose(out, torch.cat(expected), atol=1e-6)
