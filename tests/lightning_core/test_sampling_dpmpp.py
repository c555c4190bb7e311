import pytest
import torch

from lightning_core import sampling, schedule


def toy_eps_model(seed=0, channels=4):
    """A random, timestep-dependent epsilon predictor near the exact one for data N(0.3, 1), so samples stay O(1)."""
    weight = torch.randn(channels, channels, generator=torch.Generator().manual_seed(seed)) * 0.1
    alphas_cumprod = schedule.get_alphas_cumprod().float()

    def eps(x, t):
        alpha_bar = alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        exact = (1 - alpha_bar) ** 0.5 * (x - alpha_bar**0.5 * 0.3)
        return exact + torch.einsum("oc,bchw->bohw", weight, x) + 0.1 * torch.sin(t.float() / 100).view(-1, 1, 1, 1)
    return eps


def test_dpmpp_2m_matches_diffusers_dpm_solver_multistep_step_by_step():
    diffusers = pytest.importorskip("diffusers")
    steps = 32  # the teacher-data recipe: DPM-Solver++(2M), 32 trailing steps on the AnimateDiff schedule
    eps = toy_eps_model()
    sigmas = schedule.get_sigmas_trailing(steps)
    denoiser = sampling.EpsDenoiser(eps, lambda s: schedule.sigma_to_timestep(s).round())
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ours_trace = []
    ours = sampling.sample_dpmpp_2m(denoiser, noise * sigmas[0], sigmas, callback=ours_trace.append, disable=True)

    ref = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear", beta_start=0.00085, beta_end=0.012, algorithm_type="dpmsolver++", solver_order=2,
        timestep_spacing="trailing", use_karras_sigmas=False, final_sigmas_type="zero")
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == schedule.get_trailing_timesteps(steps).tolist()
    # diffusers integrates the variance-preserving x = alpha * x_ve; both solve the same ODE in log-SNR.
    alphas = 1 / (1 + sigmas**2) ** 0.5
    x = noise * sigmas[0] * alphas[0]
    for i, t in enumerate(ref.timesteps):
        torch.testing.assert_close(ours_trace[i]["x"] * alphas[i], x, rtol=1e-5, atol=1e-5)
        x = ref.step(eps(x, t.expand(2)), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_dpmpp_2m_is_second_order_unlike_euler():
    # On a linear ODE with a known solution, halving the steps shrinks DPM++(2M)'s error about 4x, Euler's about 2x.
    target = torch.full((1, 4, 2, 2), 0.25)
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def denoiser(x, sigma):  # exact denoiser of a Gaussian data distribution N(target, 1)
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return (target + x / s2) / (1 + 1 / s2)

    def error(sampler, n):
        sigmas = torch.exp(torch.linspace(2.0, -1.0, n + 1, dtype=torch.float64))
        x = noise * sigmas[0]
        exact = target + (x - target) * ((1 + sigmas[-1] ** 2) / (1 + sigmas[0] ** 2)) ** 0.5
        return (sampler(denoiser, x, sigmas, disable=True) - exact).abs().max().item()

    dpm_ratio = error(sampling.sample_dpmpp_2m, 8) / error(sampling.sample_dpmpp_2m, 16)
    euler_ratio = error(sampling.sample_euler, 8) / error(sampling.sample_euler, 16)
    assert dpm_ratio > 3.2 and euler_ratio < 2.5, (dpm_ratio, euler_ratio)


def test_dpmpp_2m_lands_on_a_constant_denoiser_and_reports_each_step():
    target = torch.full((1, 4, 2, 2), 0.5)
    seen = []
    out = sampling.sample_dpmpp_2m(lambda x, s: target.expand_as(x), torch.randn(1, 4, 2, 2) * 25,
                                   schedule.get_sigmas_trailing(4), callback=seen.append, disable=True)
    torch.testing.assert_close(out, target)
    assert [c["i"] for c in seen] == [0, 1, 2, 3]
