import pytest
import torch

from lightning_core import schedule


def test_betas_are_linear_in_beta():
    betas = schedule.get_betas()
    assert betas.dtype == torch.float64 and len(betas) == 1000
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.012 - 0.00085) / 999, dtype=torch.float64))


def test_four_step_trailing_timesteps_and_sigmas():
    assert schedule.get_trailing_timesteps(4).tolist() == [999, 749, 499, 249]
    sigmas = schedule.get_sigmas_trailing(4)
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0
    # The AnimateDiff schedule reaches sigma 25.1461 at t = 999 (SD's squared schedule: 14.6146).
    assert sigmas[:-1].tolist() == pytest.approx([25.1461, 6.5572, 2.2760, 0.8670], abs=1e-4)


@pytest.mark.parametrize("steps,expected", [(1, [999]), (2, [999, 499]), (8, [999, 874, 749, 624, 499, 374, 249, 124])])
def test_trailing_timesteps_per_lightning_file(steps, expected):
    assert schedule.get_trailing_timesteps(steps).tolist() == expected


def test_trailing_schedule_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    checked = 0
    for n in range(1, 101):
        ref = diffusers.EulerDiscreteScheduler(beta_schedule="linear", timestep_spacing="trailing",
                                               beta_start=0.00085, beta_end=0.012)
        ref.set_timesteps(n)
        if len(ref.timesteps) != n:
            continue  # numpy's arange overshoots for a few n (61, ...) and diffusers then runs n + 1 steps
        assert schedule.get_trailing_timesteps(n).tolist() == ref.timesteps.long().tolist(), n
        torch.testing.assert_close(schedule.get_sigmas_trailing(n), ref.sigmas, rtol=2e-5, atol=0)
        checked += 1
    assert checked >= 95


def test_timestep_sigma_round_trip():
    t = torch.tensor([0.0, 12.5, 249.0, 998.25, 999.0], dtype=torch.float64)
    sigma = schedule.timestep_to_sigma(t)
    torch.testing.assert_close(schedule.sigma_to_timestep(sigma), t)
    assert schedule.timestep_to_sigma(999).item() == pytest.approx(schedule.get_training_sigmas()[-1].item())


def test_zero_terminal_snr_rescale():
    betas = schedule.rescale_zero_terminal_snr(schedule.get_betas())
    alphas_cumprod = schedule.get_alphas_cumprod(betas)
    assert alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert alphas_cumprod[0].item() == pytest.approx(schedule.get_alphas_cumprod()[0].item())
    assert (betas > 0).all() and (betas <= 1).all()


def test_steps_out_of_range_are_refused():
    with pytest.raises(ValueError, match="steps"):
        schedule.get_trailing_timesteps(0)
