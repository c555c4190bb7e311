"""Lightning's sampling nodes: trailing-timestep SIGMAS, the Euler SAMPLER, and a one-node sampler."""

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..lightning_core import context, sampling, schedule
from . import control, host, menu

STEPS_TOOLTIP = ("Sampling steps; 0 takes the step count the loaded Lightning file was distilled for "
                 "(4 for a file without one). Lightning files work best at their own step count.")
DENOISE_TOOLTIP = ("1 samples from pure noise. Below 1 (video-to-video) noises the input latent to one of the file's "
                   "own timesteps and runs the last int(steps x denoise) steps: 4 steps at 0.75 run 749, 499, 249; "
                   "0.5 runs 499, 249; 0.25 runs 249; below 1/steps (and 0) returns the input unchanged.")


def resolve_steps(model, steps):
    """Returns the step count to use: the requested one, or the motion module's own when 0; warns on mismatch."""
    settings = host.motion_settings(model)
    distilled = settings.get("lightning_steps")
    if steps == 0:
        return distilled or 4
    if distilled and steps != distilled:
        host.log.warning("%s was distilled for %d steps but %d were requested; expect %s results",
                         settings.get("name"), distilled, steps, "blurry" if steps < distilled else "over-sharpened")
    return steps


def lcm_sigmas(model, steps, denoise=1.0):
    """The sigmas ComfyUI's KSampler gives an LCM model (sgm_uniform over its own schedule), cut like ours."""
    full = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "sgm_uniform", steps).cpu()
    kept = schedule.denoise_steps(steps, denoise)
    return full[steps - kept:] if kept else full[:0]


def lightning_sigmas(model, steps, denoise=1.0):
    """(steps run, sigmas): the trailing-timestep Euler sigmas; denoise < 1 keeps the last int(steps * denoise)
    of them, so partial denoising starts at a timestep the file was distilled on (as diffusers' video2video).
    A model on AnimateLCM's schedule gets the sigmas the stock KSampler's lcm + sgm_uniform run."""
    steps = resolve_steps(model, steps)
    if host.is_lcm_sampling(model):
        sigmas = lcm_sigmas(model, steps, denoise)
    else:
        sigmas = schedule.get_sigmas_trailing_denoise(steps, denoise)
    if denoise > 0.0 and len(sigmas) == 0:
        host.log.warning("denoise %.3f keeps none of the %d trailing steps (the smallest that runs one is %.3f); "
                         "the input latent is returned unchanged", denoise, steps, 1.0 / steps)
    return max(len(sigmas) - 1, 0), sigmas


def check_frame_count(model, latent):
    """Fails early, naming the parameter, on an empty batch or on more frames than the position encoding
    covers at once (without context windows or views) or per window or view (with them)."""
    limit = host.motion_settings(model).get("position_encoding_length")
    frames = latent["samples"].shape[0]
    window, views = host.context_window_length(model), host.views_settings(model)
    if frames == 0:
        raise ValueError("latent batch_size is 0 frames; a video needs at least one frame")
    host.check_windows(limit, window, views)
    if not window and not views:
        context.check_frames("latent batch_size", frames, limit,
                             f"use at most {limit} frames, or View Options / Context Windows (AnimateDiff-Lightning) "
                             "for more")


def check_prompt_frames(frames, *conditionings):
    """Refuses a per-frame CONDITIONING (prompt travel) made for another frame count, which the host would silently
    cut or repeat to the batch."""
    for conditioning in conditionings:
        for cond, _ in conditioning or ():
            if cond.shape[0] not in (1, frames):
                raise ValueError(f"the prompt conditioning has {cond.shape[0]} frames (e.g. the Prompt Travel Schedule's "
                                 f"frames) but latent_image has {frames}; set them equal")


class LightningScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_LightningScheduler",
            display_name=menu.title("Lightning Scheduler"),
            category=menu.SAMPLING,
            description="Euler sigmas at the trailing timesteps Lightning was distilled on (4 steps: 999, 749, 499, 249).",
            inputs=[
                io.Model.Input("model", tooltip="A model with a motion module applied (its step count is read from it)."),
                io.Int.Input("steps", default=0, min=0, max=1000, tooltip=STEPS_TOOLTIP),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=DENOISE_TOOLTIP),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, model, steps, denoise) -> io.NodeOutput:
        return io.NodeOutput(lightning_sigmas(model, steps, denoise)[1])


class LightningSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_LightningSampler",
            display_name=menu.title("Lightning Euler"),
            category=menu.SAMPLING,
            description="The deterministic Euler sampler Lightning is distilled for, for SamplerCustom(Advanced).",
            inputs=[],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(comfy.samplers.KSAMPLER(sampling.sample_euler))


class LightningKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_LightningKSampler",
            display_name=menu.title("Lightning KSampler"),
            category=menu.SAMPLING,
            description="Samples a video with Lightning's defaults: the checkpoint's step count, Euler at trailing "
                        "timesteps, CFG 1 (the negative prompt is then not used).",
            inputs=[
                io.Model.Input("model", tooltip="A model with a motion module applied."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the same seed gives the same video."),
                io.Int.Input("steps", default=0, min=0, max=1000, tooltip=STEPS_TOOLTIP),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="1 is what Lightning is distilled for and the fastest; above 1 costs a "
                                       "second UNet pass per step and uses the negative prompt."),
                io.Conditioning.Input("positive", tooltip="The prompt (CLIP Text Encode); one for all frames."),
                io.Latent.Input("latent_image", tooltip="One latent per frame, e.g. Empty Latent Image with batch_size 16."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=DENOISE_TOOLTIP),
                io.Conditioning.Input("negative", optional=True, tooltip="Used only when cfg is not 1."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, positive, latent_image, denoise, negative=None) -> io.NodeOutput:
        if negative is None and cfg != 1.0:
            raise ValueError(f"cfg is {cfg}: connect a negative prompt, or set cfg to 1")
        check_frame_count(model, latent_image)
        control.check_control_frames(latent_image["samples"].shape[0], positive, negative)
        check_prompt_frames(latent_image["samples"].shape[0], positive, negative)
        host.check_pack_frames(model, latent_image["samples"].shape[0],
                               control.controls_of(positive) + control.controls_of(negative))
        steps, sigmas = lightning_sigmas(model, steps, denoise)
        latent = latent_image.copy()
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
        callback = latent_preview.prepare_callback(model, steps)
        # AnimateLCM's schedule samples with LCM's own sampler, as the stock KSampler's `lcm` does
        sampler = (comfy.samplers.sampler_object("lcm") if host.is_lcm_sampling(model)
                   else comfy.samplers.KSAMPLER(sampling.sample_euler))
        latent["samples"] = comfy.sample.sample_custom(
            model, noise, cfg, sampler, sigmas, positive,
            positive if negative is None else negative, samples, noise_mask=latent.get("noise_mask"),
            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        return io.NodeOutput(latent)


NODES = [LightningScheduler, LightningSampler, LightningKSampler]
