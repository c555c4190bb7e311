"""View Options: the motion module's temporal attention in views, alone and inside UNet windows.

Views alone at 48 frames (more than the position encoding) against diffusers' FreeNoise
(`AnimateDiffPipeline.enable_free_noise`) on the same tiny random weights and noise, with the per-frame
motion-module norm of the text-to-video oracle, to the bound of tests/nodes/test_equivalence.py. Views inside
UNet windows against the plain window loop of tests/nodes/test_context_nodes.py whose UNet calls carry the
views (so: UNet windows fused by hand, each window's frames windowed again in the motion module). One view
over all frames against no views, bit for bit. Bad settings refused in the server, naming the parameter.
"""
import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

import graphs
from fixtures import oracle, sd15
from host import saved_files
from lightning_core import context, formats
from test_context_nodes import (FRAMES, LENGTH, SEED, SIZE, assert_same, context_inputs,  # noqa: F401
                                local, motion_file, noise_for, run_error)
from test_equivalence import LATENT_ATOL, PROMPT

FREENOISE_FRAMES, FREENOISE_LENGTH, FREENOISE_STRIDE = 48, 16, 8
FREENOISE_MOTION_FILE = "animatediff_lightning_4step_comfyui.safetensors"


def view_inputs(model=("3", 0), view_length=3, view_overlap=1, schedule="standard_static", fuse_method="pyramid",
                freenoise=False, closed_loop=False):
    return {"model": list(model), "view_length": view_length, "view_overlap": view_overlap, "schedule": schedule,
            "fuse_method": fuse_method, "freenoise": freenoise, "closed_loop": closed_loop}


def views(length=3, overlap=1, schedule="standard_static", fuse_method="pyramid", freenoise=False):
    return {"length": length, "overlap": overlap, "schedule": schedule, "fuse_method": fuse_method,
            "closed_loop": False, "freenoise": freenoise}


def sample_plain(local, model, noise, steps=2):
    """ADL_LightningKSampler's sampling in this process, without UNet windows."""
    import comfy.sample
    import comfy.samplers

    from lightning_core import sampling, schedule
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.KSAMPLER(sampling.sample_euler),
                                          schedule.get_sigmas_trailing(steps), local.positive, local.positive,
                                          torch.zeros_like(noise), disable_pbar=True, seed=SEED)


# ----------------------------------------------------------------------------- against diffusers' FreeNoise

def test_views_alone_equal_diffusers_freenoise_at_48_frames(comfy, comfy_base, tiny_checkpoint, write_motion,
                                                            tiny_motion_state_dict):
    motion = write_motion(FREENOISE_MOTION_FILE)
    prompt = graphs.with_motion(graphs.base(tiny_checkpoint, frames=FREENOISE_FRAMES, size=SIZE), motion)
    prompt["4"]["inputs"]["text"] = PROMPT
    # diffusers windows every context_stride frames: our standard_static schedule with overlap length - stride.
    prompt["10"] = {"class_type": "ADL_ViewOptions", "inputs": view_inputs(
        view_length=FREENOISE_LENGTH, view_overlap=FREENOISE_LENGTH - FREENOISE_STRIDE)}
    prompt = graphs.save_latent(graphs.lightning_sample(prompt, model=("10", 0), seed=SEED), "tests/views_freenoise")
    comfy.run(prompt, timeout=900).raise_for_error()
    saved = load_file(str(saved_files(comfy_base, "views_freenoise_*.latent")[-1]))["latent_tensor"]
    ours = saved.float() * sd15.SCALING_FACTOR  # diffusers' latents are the UNet's, ComfyUI's the VAE's

    unet, vae, text_encoder, tokenizer = sd15.build_models("tiny")
    noise = sd15.comfy_noise((FREENOISE_FRAMES, 4, SIZE // 8, SIZE // 8), SEED)
    latents = (noise * (math.sqrt(1.0 + sd15.sigma_max() ** 2) / oracle.init_noise_sigma())).permute(1, 0, 2, 3)[None]
    motion_diffusers = formats.original_to_diffusers(tiny_motion_state_dict)
    _, adapter_config = sd15.motion_config("tiny")
    run = dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, prompt=PROMPT, steps=4,
               motion_state_dict_diffusers_naming=motion_diffusers, motion_config=adapter_config, decode=False)
    free_noise = dict(context_length=FREENOISE_LENGTH, context_stride=FREENOISE_STRIDE, weighting_scheme="pyramid",
                      noise_type="random")
    reference, _ = oracle.run_diffusers_oracle(latents_bcfhw=latents.contiguous(), free_noise=free_noise, **run)
    error = (ours - reference).abs().max().item()
    assert error <= LATENT_ATOL, f"views differ from diffusers' FreeNoise by {error:.3g} (bound {LATENT_ATOL})"
    # The comparison can tell windows apart: FreeNoise with twice the stride lands far away.
    other, _ = oracle.run_diffusers_oracle(latents_bcfhw=latents.contiguous(),
                                           free_noise=dict(free_noise, context_stride=2 * FREENOISE_STRIDE), **run)
    assert (other - reference).abs().max().item() > 100 * LATENT_ATOL


# ----------------------------------------------------------------------------- in this process

def test_views_inside_unet_windows_equal_the_window_loop_with_views(local):
    inner = views(length=3, overlap=1)
    with_views = dataclasses.replace(local, model=local.host.with_views(local.model, inner))
    noise = noise_for()
    ours = with_views.sample(with_views.handler(schedule_name="standard_static"), noise)
    reference = with_views.reference(noise, "standard_static", "pyramid")
    assert_same(ours, reference, "views inside UNet windows")
    windows_alone = local.sample(local.handler(schedule_name="standard_static"), noise)
    assert (ours - windows_alone).abs().max() > 1e-2, "the views inside the UNet windows changed nothing"


def test_one_view_over_all_frames_equals_no_views_bit_for_bit(local):
    noise = noise_for()
    plain = sample_plain(local, local.model, noise)
    one_view = sample_plain(local, local.host.with_views(local.model, views(length=FRAMES, overlap=2)), noise)
    assert torch.equal(one_view, plain)
    several = sample_plain(local, local.host.with_views(local.model, views(length=4, overlap=2)), noise)
    assert (several - plain).abs().max() > 1e-2


def test_views_freenoise_noise_uses_the_view_length(local):
    noise = noise_for()
    ours = sample_plain(local, local.host.with_views(local.model, views(length=4, overlap=1, freenoise=True)), noise)
    free = context.freenoise(noise, 4, 1, torch.Generator().manual_seed(SEED))
    reference = sample_plain(local, local.host.with_views(local.model, views(length=4, overlap=1)), free)
    assert_same(ours, reference, "FreeNoise with views")


def test_memory_estimate_counts_views_attention(local):
    import comfy.model_management

    base = local.model.get_model_object("memory_required")
    shape = [2 * LENGTH * 4, 4, 8, 8]
    viewed = local.host.with_views(local.model, views(length=4, overlap=1)).get_model_object("memory_required")
    temporal = lambda frames: local.host.temporal_attention_bytes(  # noqa: E731
        shape[0], 8, 8, frames, base.num_heads, comfy.model_management.dtype_size(base.dtype))
    assert base(shape) == base.base(shape) + temporal(32)
    assert viewed(shape) == base.base(shape) + int(temporal(4) * 4 / 3)


# ----------------------------------------------------------------------------- in the server

def test_bad_view_options_are_refused_naming_the_parameter(comfy, comfy_base, tiny_checkpoint, motion_file):
    def graph(frames=FRAMES, context=None, **options):
        prompt = graphs.with_motion(graphs.base(tiny_checkpoint, frames=frames, size=SIZE), motion_file)
        prompt["10"] = {"class_type": "ADL_ViewOptions", "inputs": view_inputs(**options)}
        model = ("10", 0)
        if context:
            prompt["11"] = {"class_type": "ADL_ContextOptions", "inputs": context_inputs(model=model, **context)}
            model = ("11", 0)
        return graphs.lightning_sample(prompt, model=model, seed=SEED)

    cases = {
        "view_length is 33 frames but this motion module's position encoding covers 32": graph(view_length=33),
        "view_overlap is 3 but must be smaller than view_length (3)": graph(view_overlap=3),
        "view_length is 3 but the UNet windows (context_length) have 2": graph(context=dict(context_length=2)),
    }
    for expected, prompt in cases.items():
        message = run_error(comfy, prompt)
        assert expected in message, message
    # Views inside UNet windows longer than the position encoding, and views alone past it, run.
    prompt = graphs.save_latent(graph(frames=40, context=dict(context_length=36, context_overlap=4)),
                                "tests/views_nested_36")
    comfy.run(prompt, timeout=600).raise_for_error()
    latent = load_file(str(saved_files(comfy_base, "views_nested_36_*.latent")[-1]))["latent_tensor"]
    assert latent.shape[0] == 40 and torch.isfinite(latent).all()
