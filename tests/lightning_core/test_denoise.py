"""Partial denoising (video-to-video) starts at one of the Lightning file's own trailing timesteps."""

import pytest
import torch

from lightning_core import schedule

DENOISE_VALUES = (1.0, 0.99, 0.9, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.29, 0.25, 0.2, 0.125, 0.1, 0.05, 0.0)


def timesteps_of(sigmas):
    """The training timesteps the (non-zero) sigmas sit on."""
    return schedule.sigma_to_timestep(sigmas[:-1].double()).round().long().tolist()


@pytest.mark.parametrize("steps,denoise,expected", [
    (4, 1.0, [999, 749, 499, 249]), (4, 0.75, [749, 499, 249]), (4, 0.5, [499, 249]), (4, 0.25, [249]),
    (4, 0.7, [499, 249]), (2, 0.75, [499]), (1, 0.99, []), (8, 0.75, [749, 624, 499, 374, 249, 124]),
])
def test_partial_denoise_runs_the_files_own_timesteps(steps, denoise, expected):
    sigmas = schedule.get_sigmas_trailing_denoise(steps, denoise)
    assert (timesteps_of(sigmas) if len(sigmas) else []) == expected
    if expected:
        assert sigmas[-1] == 0 and len(sigmas) == len(expected) + 1
        # the same float32 values as the full schedule, not an interpolation between its entries
        torch.testing.assert_close(sigmas, schedule.get_sigmas_trailing(steps)[-len(sigmas):], rtol=0, atol=0)
    else:
        assert len(sigmas) == 0


def test_mapping_matches_diffusers_video2video_get_timesteps():
    """diffusers' AnimateDiffVideoToVideoPipeline.get_timesteps (strength) on the trailing Euler schedule."""
    pytest.importorskip("diffusers")
    from diffusers import AnimateDiffVideoToVideoControlNetPipeline, AnimateDiffVideoToVideoPipeline
    from fixtures import oracle

    class Pipe:  # get_timesteps reads nothing but self.scheduler
        scheduler = oracle.make_scheduler()

    for pipeline in (AnimateDiffVideoToVideoPipeline, AnimateDiffVideoToVideoControlNetPipeline):
        for steps in (1, 2, 4, 8):
            Pipe.scheduler.set_timesteps(steps)
            for denoise in DENOISE_VALUES:
                ref, ref_steps = pipeline.get_timesteps(Pipe(), steps, Pipe.scheduler.timesteps, denoise, "cpu")
                ours = schedule.get_sigmas_trailing_denoise(steps, denoise)
                assert schedule.denoise_steps(steps, denoise) == ref_steps == len(ref), (steps, denoise)
                assert max(len(ours) - 1, 0) == ref_steps, (steps, denoise)
                if ref_steps:
                    assert timesteps_of(ours) == ref.long().tolist(), (steps, denoise)
                    # the sigmas the scheduler steps through (its own sigma table, same float32 values)
                    torch.testing.assert_close(ours, Pipe.scheduler.sigmas[steps - ref_steps:], rtol=2e-5, atol=0)


def test_full_denoise_is_the_plain_schedule():
    for steps in (1, 2, 4, 8):
        assert torch.equal(schedule.get_sigmas_trailing_denoise(steps, 1.0), schedule.get_sigmas_trailing(steps))
