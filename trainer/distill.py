"""The flow arithmetic of progressive distillation (SDXL-Lightning 2.1-2.3, 3.5), on video latents [b, f, c, h, w].

Timesteps are integers 0..999 with -1 meaning "clean" (alpha-bar 1), so x_{t-ns} past the end of the
trajectory is x0. A student step of stride ns from t is matched by n teacher steps of stride s,
starting from u = t + 1 in (0, 1000] like the trailing schedule: t_j = round(u - j s) - 1.
Moves are DDIM steps on the linear AnimateDiff schedule, which equal the Euler steps on sigmas that the
ComfyUI sampler takes at inference, so the student learns exactly the jumps it will be asked for.
"""
from __future__ import annotations

import torch

from lightning_core import losses, schedule

T_MAX = schedule.NUM_TRAIN_TIMESTEPS - 1


def alpha_bar_table(device) -> torch.Tensor:
    """[1001] alpha-bar with index t + 1 (index 0 = clean, alpha-bar 1), float32."""
    ab = schedule.get_alphas_cumprod()
    return torch.cat([ab.new_ones(1), ab]).float().to(device)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample values [b] viewed as [b, 1, 1, ...] to broadcast against x."""
    return v.view(-1, *[1] * (x.ndim - 1))


def to_timestep(u: torch.Tensor) -> torch.Tensor:
    """Trailing-schedule position u in (-inf, 1000] -> integer timestep (round half to even, minus 1), >= -1."""
    return (torch.round(u) - 1).clamp(min=-1).long()


def plan_timesteps(u0: torch.Tensor, teacher_steps: int, student_steps: int) -> torch.Tensor:
    """[b, n + 1] timesteps t_0 .. t_n of the n = teacher/student teacher steps from each u0."""
    n = teacher_steps // student_steps
    stride = schedule.NUM_TRAIN_TIMESTEPS / teacher_steps
    j = torch.arange(n + 1, dtype=torch.float64)
    return to_timestep(u0.double()[:, None] - j[None, :] * stride)


def sample_start(batch: int, student_steps: int, timesteps: list[int], generator) -> torch.Tensor:
    """u0 per sample: uniform over `timesteps` if given (multi-timestep, SDXL-L 3.7.1), else over the student's grid."""
    if timesteps:
        choices = torch.tensor(timesteps, dtype=torch.float64)
    else:
        choices = schedule.NUM_TRAIN_TIMESTEPS - torch.arange(student_steps, dtype=torch.float64) * (
            schedule.NUM_TRAIN_TIMESTEPS / student_steps)
    return choices[torch.randint(len(choices), (batch,), generator=generator)]


def add_noise(x0, noise, t, alpha_bar):
    """forward(x0, eps, t), with pure noise at t = T (SDXL-Lightning Eq. 24: zero terminal SNR in training)."""
    ab = _bcast(alpha_bar[t + 1], x0)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return torch.where(_bcast(t == T_MAX, x0), noise, x_t)


def move(x_t, eps, t, t_next, alpha_bar):
    """move(x_t, eps, t, t') = forward(x0_hat, eps, t') with x0_hat = (x_t - sqrt(1 - ab) eps) / sqrt(ab) (Eq. 5)."""
    ab, ab_next = _bcast(alpha_bar[t + 1], x_t), _bcast(alpha_bar[t_next + 1], x_t)
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps


def video_eps(unet, motion, x, t, context, time_emb_extra=None):
    """eps of the AnimateDiff model F = f o m on [b, f, c, h, w] latents, per-sample t [b], context [b, 77, d]."""
    b, f = x.shape[:2]
    eps = unet(x.flatten(0, 1), t.clamp(min=0).repeat_interleave(f).to(x.dtype),
               context.repeat_interleave(f, 0), num_frames=f, motion=motion, time_emb_extra=time_emb_extra)
    return eps.view_as(x)


def guided_eps(unet, motion, x, t, context, uncond, cfg_scale):
    """Classifier-free guidance with the empty prompt as uncond (no negative prompt), one batched call."""
    if cfg_scale == 1.0:
        return video_eps(unet, motion, x, t, context)
    eps_c, eps_u = video_eps(unet, motion, torch.cat([x, x]), torch.cat([t, t]),
                             torch.cat([context, uncond.expand_as(context)])).chunk(2)
    return eps_u + cfg_scale * (eps_c - eps_u)


@torch.no_grad()
def teacher_solve(unet, teacher, x_t, plan, context, uncond, cfg_scale, alpha_bar):
    """x_{t-ns} by n teacher Euler/DDIM steps along plan [b, n + 1] (Eqs. 7-13).

    Samples already at the clean end of their plan (t = -1, e.g. a 4-step teacher from t = 250) stay put and
    cost no teacher pass: only the rows still on the way are batched through the UNet.
    """
    x = x_t
    for j in range(plan.shape[1] - 1):
        t, t_next = plan[:, j], plan[:, j + 1]
        active = (t >= 0).nonzero().flatten()
        if len(active) == 0:
            break
        if len(active) == len(t):
            eps = guided_eps(unet, teacher, x, t, context, uncond, cfg_scale)
            x = move(x, eps.float(), t, t_next, alpha_bar)
            continue
        eps = guided_eps(unet, teacher, x[active], t[active], context[active], uncond, cfg_scale)
        x = x.index_copy(0, active, move(x[active], eps.float(), t[active], t_next[active], alpha_bar))
    return x


def student_jump(unet, student, x_t, plan, context, alpha_bar):
    """x_hat_{t-ns} = move(x_t, f_student(x_t, t, c), t, t - ns) (Eqs. 14-15), differentiable in the student."""
    t, t_next = plan[:, 0], plan[:, -1]
    eps = video_eps(unet, student, x_t, t, context)
    return move(x_t, eps.float(), t, t_next, alpha_bar)


def sample_d_noise(t_next, shape, noise_timesteps, weights, generator):
    """SDXL-Lightning 3.7.2: for clean targets (t' = -1) draw t* from noise_timesteps (by weight) and fresh eps*.

    Returns (t_d, eps*): the timestep D sees per sample and the noise (None when nothing is re-noised).
    """
    clean = t_next < 0
    if not noise_timesteps or not bool(clean.any()):
        return t_next, None
    w = torch.tensor(weights or [1.0] * len(noise_timesteps), dtype=torch.float64)
    pick = torch.multinomial(w, len(t_next), replacement=True, generator=generator)
    t_star = torch.tensor(noise_timesteps)[pick].to(t_next.device)
    return torch.where(clean, t_star, t_next), torch.randn(shape, generator=generator)


def renoise(x, t_next, t_d, noise, alpha_bar):
    """forward(x, eps*, t*) where t_d differs from t' (the re-noised clean targets), x elsewhere."""
    if noise is None:
        return x
    keep = (t_d != t_next).view(-1, *[1] * (x.ndim - 1))
    return torch.where(keep, add_noise(x, noise.to(x.device, x.dtype), t_d, alpha_bar), x)


def discriminator_condition(d, x_t, t, context, flow):
    """d(x_t, t, c, i) for the x_t-conditional D (Eq. 11), None for D' (Eq. 12); x_t is data, so no grad."""
    if not d.conditional:
        return None
    with torch.no_grad():
        return d.features(x_t, t, context, flow)


def adversarial_generator_loss(unet, student, d, x_t, plan, context, flow, t_d, d_noise, alpha_bar):
    """L_G (Eq. 9) of the student's jump x_hat_{t-ns} as D scores it; differentiable in the student only
    when the caller has frozen D (requires_grad_(False)), as the G phase of the trainer does."""
    fake = student_jump(unet, student, x_t, plan, context, alpha_bar)
    fake_d = renoise(fake, plan[:, -1], t_d, d_noise, alpha_bar)
    cond = discriminator_condition(d, x_t, plan[:, 0], context, flow)
    return losses.generator_loss(d(fake_d, t_d, context, flow, cond))


def adversarial_discriminator_logits(unet, student, d, x_t, plan, context, flow, target, t_d, d_noise, alpha_bar):
    """(real, fake) logits of D on the teacher's target and on a fresh student jump (no grad to the student),
    both re-noised with the same t* and eps* (SDXL-Lightning 3.7.2)."""
    with torch.no_grad():
        fake = student_jump(unet, student, x_t, plan, context, alpha_bar)
        fake_d = renoise(fake, plan[:, -1], t_d, d_noise, alpha_bar)
        real_d = renoise(target, plan[:, -1], t_d, d_noise, alpha_bar)
    cond = d.features(x_t, plan[:, 0], context, flow) if d.conditional else None
    return d(real_d, t_d, context, flow, cond), d(fake_d, t_d, context, flow, cond)
