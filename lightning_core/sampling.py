"""Samplers with k-diffusion's signature: `sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None)`.

`model(x, sigma, **extra_args)` is a denoiser returning the clean-sample estimate, so the same code runs
under ComfyUI's KSAMPLER, the diffusers-free reference path and the trainer.
"""

import torch
from tqdm.auto import trange


def to_d(x, sigma, denoised):
    """Converts a denoiser output to a Karras ODE derivative."""
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Implements Algorithm 2 (Euler steps) from Karras et al. (2022), without churn, as Lightning is distilled for."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2023, Algorithm 2): multistep second order in log-SNR, first order at both ends."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    lam = lambda sigma: -sigma.log()  # half log-SNR; -log(0) = inf makes the last step land on `denoised`
    old_denoised = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        h = lam(sigmas[i + 1]) - lam(sigmas[i])
        estimate = denoised
        if old_denoised is not None and sigmas[i + 1] > 0:
            r = (lam(sigmas[i]) - lam(sigmas[i - 1])) / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * estimate
        old_denoised = denoised
    return x


class EpsDenoiser(torch.nn.Module):
    """Wraps an epsilon-prediction network `eps(x_in, t, **kw)` as a denoiser on sigmas (k-diffusion's DiscreteEpsDDPMDenoiser)."""

    def __init__(self, eps_model, sigma_to_timestep):
        super().__init__()
        self.eps_model = eps_model
        self.sigma_to_timestep = sigma_to_timestep

    def get_scalings(self, sigma):
        """Returns c_out and c_in for the variance-exploding eps parameterization."""
        return -sigma, 1 / (sigma**2 + 1) ** 0.5

    def forward(self, x, sigma, **kwargs):
        c_out, c_in = (s.view(-1, *[1] * (x.ndim - 1)) for s in self.get_scalings(sigma))
        eps = self.eps_model(x * c_in, self.sigma_to_timestep(sigma), **kwargs)
        return x + eps * c_out
