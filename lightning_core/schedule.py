"""The AnimateDiff noise schedule: one place for betas, sigmas, timesteps and Lightning's trailing steps.

AnimateDiff (and every Lightning checkpoint distilled from it) trains on betas linear in beta from
0.00085 to 0.012 over 1000 steps. diffusers calls this schedule "linear"; ComfyUI calls it
"sqrt_linear" (ComfyUI's "linear" is SD's squared schedule). Values are computed in float64, as
ComfyUI does, and handed out in float32.
"""

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def get_betas(n=NUM_TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END):
    """Returns the AnimateDiff betas, linear in beta (float64)."""
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)


def get_alphas_cumprod(betas=None):
    """Returns the cumulative product of 1 - beta."""
    betas = get_betas() if betas is None else betas
    return torch.cumprod(1.0 - betas, dim=0)


def alphas_cumprod_to_sigmas(alphas_cumprod):
    """Converts alpha-bar to the noise level sigma = sqrt((1 - alpha-bar) / alpha-bar)."""
    return ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5


def get_training_sigmas(betas=None):
    """Returns the sigma of every training timestep, ascending (float64)."""
    return alphas_cumprod_to_sigmas(get_alphas_cumprod(betas))


def rescale_zero_terminal_snr(betas):
    """Rescales betas so the last timestep has zero SNR (Lin et al. 2024, Algorithm 1)."""
    sqrt_ac = get_alphas_cumprod(betas) ** 0.5
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    alphas_cumprod = sqrt_ac**2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1.0 - alphas


def timestep_to_sigma(t, training_sigmas=None):
    """Maps a (possibly fractional) timestep to sigma by log-linear interpolation."""
    training_sigmas = get_training_sigmas() if training_sigmas is None else training_sigmas
    log_sigmas = training_sigmas.log()
    t = torch.as_tensor(t, dtype=torch.float64).clamp(0, len(log_sigmas) - 1)
    low, high = t.floor().long(), t.ceil().long()
    w = t - low
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def sigma_to_timestep(sigma, training_sigmas=None):
    """Maps sigma back to a fractional timestep by log-linear interpolation (inverse of the above)."""
    training_sigmas = get_training_sigmas() if training_sigmas is None else training_sigmas
    log_sigmas = training_sigmas.log()
    log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log()
    high = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, len(log_sigmas) - 1)
    low = high - 1
    w = ((log_sigma.reshape(-1) - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])).clamp(0, 1)
    return (low + w).reshape(log_sigma.shape)


def get_trailing_timesteps(n, num_train_timesteps=NUM_TRAIN_TIMESTEPS):
    """Returns n trailing timesteps, e.g. 999, 749, 499, 249 for n = 4 (Lin et al. 2024, Table 2)."""
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}, got {n}")
    start = torch.tensor(float(num_train_timesteps), dtype=torch.float64)
    # numpy's arange (used by diffusers) steps by (start + step) - start, not by step, and rounds half
    # to even like torch.round: both matter for ties such as 937.5 at 48 steps.
    delta = (start - num_train_timesteps / n) - start
    return (start + torch.arange(n, dtype=torch.float64) * delta).round().long() - 1


def get_sigmas_trailing(n, device="cpu"):
    """Returns the n + 1 Euler sigmas at the trailing timesteps, ending in 0 (float32)."""
    sigmas = get_training_sigmas()[get_trailing_timesteps(n)]
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float().to(device)


def denoise_steps(n, denoise):
    """Steps a partial denoise runs: int(n * denoise), as diffusers' img2img/video2video `get_timesteps`."""
    return min(int(n * denoise), n)


def get_sigmas_trailing_denoise(n, denoise, device="cpu"):
    """The last int(n * denoise) steps of the n-step trailing sigmas, so that a partial denoise starts at a
    timestep the n-step model was distilled on (4 steps, denoise 0.75: 749, 499, 249); empty when none is kept."""
    kept = denoise_steps(n, denoise)
    sigmas = get_sigmas_trailing(n, device)
    return sigmas[n - kept:] if kept else sigmas[:0]


def add_noise(x0, noise, sigma):
    """Noises a clean sample to level sigma in the variance-exploding parameterization."""
    return x0 + noise * sigma
