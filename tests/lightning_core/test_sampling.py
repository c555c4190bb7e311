import pytest
import torch

from lightning_core import sampling, schedule


def linear_eps_model(seed=0, channels=4):
    """A random, timestep-dependent epsilon predictor: eps = W x + t / 1000."""
    weight = torch.randn(channels, channels, generator=torch.Generator().manual_seed(seed)) * 0.3

    def eps(x, t):
        return torch.einsum("oc,bchw->bohw", weight, x) + t.view(-1, 1, 1, 1) / 1000
    return eps


def test_euler_matches_diffusers_step_by_step():
    diffusers = pytest.importorskip("diffusers")
    eps = linear_eps_model()
    sigmas = schedule.get_sigmas_trailing(4)
    denoiser = sampling.EpsDenoiser(eps, lambda s: schedule.sigma_to_timestep(s).round().float())
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    ours = sampling.sample_euler(denoiser, x0 * sigmas[0], sigmas, disable=True)

    ref = diffusers.EulerDiscreteScheduler(beta_schedule="linear", timestep_spacing="trailing",
                                           beta_start=0.00085, beta_end=0.012)
    ref.set_timesteps(4)
    x = x0 * ref.init_noise_sigma
    for t in ref.timesteps:
        x = ref.step(eps(ref.scale_model_input(x, t), t.expand(2)), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_euler_lands_on_a_constant_denoiser_and_reports_each_step():
    target = torch.full((1, 4, 2, 2), 0.5)
    seen = []
    out = sampling.sample_euler(lambda x, s: target.expand_as(x), torch.randn(1, 4, 2, 2) * 25,
                                schedule.get_sigmas_trailing(4), callback=seen.append, disable=True)
    torch.testing.assert_close(out, target)
    assert [c["i"] for c in seen] == [0, 1, 2, 3]
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}


def test_eps_denoiser_scalings():
    denoiser = sampling.EpsDenoiser(lambda x, t: torch.ones_like(x), lambda s: s)
    x, sigma = torch.full((1, 1, 1, 1), 3.0), torch.tensor([2.0])
    assert denoiser(x, sigma).item() == pytest.approx(3.0 - 2.0)  # x0 = x - sigma * eps
