"""Video-to-video with a canny ControlNet: our graph in the real ComfyUI server vs diffusers'
AnimateDiffVideoToVideoControlNetPipeline, same weights, same source frames, same noise.

Graph (what workflows/animatediff_lightning_4step_v2v_canny.json does, at 64x64 and 8 frames):

    ADL_LoadVideo(synthetic mp4) -> VAEEncode -> ADL_LightningKSampler(denoise 0.75: 749, 499, 249)
                                 -> ADL_CannyPreprocessor -> ControlNetApplyAdvanced(ControlNetLoader)
    CheckpointLoaderSimple -> ADL_ApplyMotionModule(ADL_LoadMotionModule); VAEDecode -> SaveImage

Oracle: the pipeline with strength 0.75 and 4 steps (its get_timesteps keeps 749, 499, 249), Euler at
trailing timesteps on the AnimateDiff betas, guidance 1, the motion modules' input GroupNorm per frame
(tests/fixtures/oracle.py), fed the frames and control images the graph used (saved as PNG by the graph:
8-bit values round-trip exactly). Two things are made equal rather than left to chance:
  * the VAE encoding: ComfyUI's VAEEncode takes the posterior mean, the pipeline samples the posterior with
    the noise generator; the oracle's VAE returns the mean (oracle.encode_with_posterior_mean), which also
    leaves the generator untouched for
  * the noise: the pipeline draws it from torch.Generator().manual_seed(SEED) in (1, frames, 4, h, w) order,
    the same numbers ComfyUI draws for SEED in (frames, 4, h, w); both add noise * sigma(749).
The same run also samples without the ControlNet, which must land clearly away from the oracle.
"""
from __future__ import annotations

import gc

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from fixtures import controlnet, oracle, sd15

PROMPT = "a lighthouse on a cliff, oil painting"
SEED = 4321
FRAMES, SIZE, STEPS, DENOISE = 8, 64, 4, 0.75
LATENT_ATOL = 1e-3
FRAME_ATOL = 1 / 255 + 1e-3
VIDEO_NAME = "adl_v2v_source.mp4"
CKPT_NAME = "adl_v2v_tiny.safetensors"


def output_paths(result, base, node_id, kind):
    entries = result.outputs.get(node_id, {}).get(kind, [])
    assert entries, f"node {node_id} produced no {kind}: outputs={result.outputs}"
    return [base / "output" / e["subfolder"] / e["filename"] for e in entries]


def read_latent(result, base, node_id):
    """A SaveLatent output in diffusers' (UNet-space) scale."""
    (path,) = output_paths(result, base, node_id, "latents")
    return load_file(str(path))["latent_tensor"].float() * sd15.SCALING_FACTOR


def read_pngs(result, base, node_id):
    return [Image.open(p).convert("RGB") for p in output_paths(result, base, node_id, "images")]


def max_abs(a, b):
    assert a.shape == b.shape, f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a - b).abs().max().item()


def build_prompt(prefix, motion_name, control_name):
    sampler = {"model": ["3", 0], "seed": SEED, "steps": 0, "cfg": 1.0, "latent_image": ["44", 0], "denoise": DENOISE}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT_NAME}},
        "2": {"class_type": "ADL_LoadMotionModule", "inputs": {"model_name": motion_name}},
        "3": {"class_type": "ADL_ApplyMotionModule",
              "inputs": {"model": ["1", 0], "motion_module": ["2", 0], "effect": 1.0, "motion_scale": 1.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "40": {"class_type": "ADL_LoadVideo",
               "inputs": {"file": VIDEO_NAME, "force_rate": 0.0, "force_width": SIZE, "force_height": SIZE,
                          "frame_load_cap": FRAMES, "skip_first_frames": 0, "select_every_nth": 1}},
        "41": {"class_type": "ADL_CannyPreprocessor", "inputs": {"images": ["40", 0], "low_threshold": 50,
                                                                 "high_threshold": 120}},
        "42": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": control_name}},
        "43": {"class_type": "ControlNetApplyAdvanced",
               "inputs": {"positive": ["4", 0], "negative": ["4", 0], "control_net": ["42", 0], "image": ["41", 0],
                          "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "44": {"class_type": "VAEEncode", "inputs": {"pixels": ["40", 0], "vae": ["1", 2]}},
        "6": {"class_type": "ADL_LightningKSampler", "inputs": {**sampler, "positive": ["43", 0]}},
        "9": {"class_type": "ADL_LightningKSampler", "inputs": {**sampler, "positive": ["4", 0]}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"{prefix}/v2v"}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": f"{prefix}/v2v"}},
        "30": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": f"{prefix}/nocontrol"}},
        "50": {"class_type": "SaveImage", "inputs": {"images": ["40", 0], "filename_prefix": f"{prefix}/source"}},
        "51": {"class_type": "SaveImage", "inputs": {"images": ["41", 0], "filename_prefix": f"{prefix}/canny"}},
    }


def test_canny_v2v_graph_matches_diffusers_pipeline(comfy, comfy_base):
    from lightning_core import formats

    unet, vae, text_encoder, tokenizer = sd15.build_models("tiny")
    net = controlnet.build_controlnet(unet)
    ckpt = sd15.write_checkpoint(comfy_base / "models" / "checkpoints" / CKPT_NAME, unet, vae, text_encoder)
    control_path = controlnet.write_controlnet(comfy_base / "models" / "controlnet" / "adl_v2v_canny.pth", net, unet)
    motion_sd = sd15.random_motion_state_dict("tiny")
    motion_name = "adl_v2v/" + sd15.MOTION_FILE_NAME
    motion_path = comfy_base / "models" / "animatediff_models" / motion_name
    motion_path.parent.mkdir(parents=True, exist_ok=True)
    formats.save_motion_module(motion_path, motion_sd, layout="original")
    controlnet.write_source_video(comfy_base / "input" / VIDEO_NAME, frames=FRAMES, size=SIZE)

    try:
        result = comfy.run(build_prompt("adl_v2v_equivalence", motion_name, control_path.name), timeout=600)
        result.raise_for_error()
    finally:
        comfy.free()
        for path in (ckpt, control_path, motion_path):
            path.unlink()
    ours_latents = read_latent(result, comfy_base, "10")
    ours_frames = torch.from_numpy(np.stack([np.asarray(p, np.float32) / 255 for p in read_pngs(result, comfy_base, "12")]))
    nocontrol_latents = read_latent(result, comfy_base, "30")
    source, canny = read_pngs(result, comfy_base, "50"), read_pngs(result, comfy_base, "51")
    assert len(source) == len(canny) == FRAMES
    edge_fraction = np.mean([np.asarray(c)[..., 0] > 0 for c in canny])
    assert 0.02 < edge_fraction < 0.5, f"the canny control frames are degenerate ({edge_fraction:.1%} edge pixels)"

    _, adapter_cfg = sd15.motion_config("tiny")
    ref_latents, ref_frames = oracle.run_diffusers_v2v_controlnet_oracle(
        unet, vae, text_encoder, tokenizer, formats.original_to_diffusers(motion_sd), adapter_cfg, net, PROMPT,
        source, canny, STEPS, DENOISE, SEED)
    del unet, vae, text_encoder, net
    gc.collect()

    d = {"latents": max_abs(ours_latents, ref_latents), "frames_255": max_abs(ours_frames, ref_frames) * 255,
         "frames_above_ref_255": (ours_frames - ref_frames).max().item() * 255,
         "no_control_latents": max_abs(nocontrol_latents, ref_latents)}
    print("\n[v2v canny] oracle latents: " + sd15.describe(ref_latents))
    print("[v2v canny] distances: " + ", ".join(f"{k}={v:.4g}" for k, v in d.items()))
    assert d["no_control_latents"] > 100 * LATENT_ATOL, (
        f"sampling without the ControlNet lands {d['no_control_latents']:.3g} from the oracle: the control is too "
        "weak for this test to see whether it was applied")
    assert d["latents"] <= LATENT_ATOL, (
        f"final latents differ from AnimateDiffVideoToVideoControlNetPipeline by {d['latents']:.4g} "
        f"(tolerance {LATENT_ATOL})")
    assert d["frames_255"] <= FRAME_ATOL * 255 and d["frames_above_ref_255"] <= 0.255 + 1e-6, (
        f"decoded frames differ by {d['frames_255']:.3f}/255 (SaveImage truncates: at most one 8-bit step below)")
