"""Motion-module nodes in the real server: unpatching, LoRAs, step counts and every kind of bad input."""

import time

import pytest
import torch
from safetensors.torch import load_file

import graphs
from fixtures import motion_files
from host import saved_files

LIGHTNING_4STEP = "animatediff_lightning_4step_comfyui.safetensors"


def run_latent(comfy, comfy_base, prompt, prefix):
    """Runs a prompt ending in SaveLatent and returns the saved latent tensor."""
    comfy.run(graphs.save_latent(prompt, f"tests/{prefix}"), timeout=600).raise_for_error()
    [path] = saved_files(comfy_base, f"{prefix}_*.latent")
    return load_file(str(path))["latent_tensor"]


def run_error(comfy, prompt):
    """Runs a prompt that must fail while executing; returns the error message ComfyUI reports."""
    result = comfy.run(graphs.save_latent(prompt, "tests/never_written"), timeout=600)
    assert not result.ok, "the prompt was expected to fail"
    return result.execution_error["exception_message"]


@pytest.fixture(scope="module")
def lightning_file(write_motion):
    return write_motion(LIGHTNING_4STEP)


def test_the_model_is_unpatched_after_a_motion_run(comfy, comfy_base, tiny_checkpoint, lightning_file):
    plain = graphs.ksample(graphs.base(tiny_checkpoint), scheduler="normal")
    before = run_latent(comfy, comfy_base, plain, "unpatch_before")
    animated = graphs.lightning_sample(graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file))
    motion = run_latent(comfy, comfy_base, animated, "unpatch_motion")
    after = run_latent(comfy, comfy_base, graphs.ksample(graphs.base(tiny_checkpoint), scheduler="normal",
                                                         seed=7), "unpatch_after")
    assert (motion - before).abs().max() > 1e-2  # the motion run did change things
    assert torch.equal(before, after), "sampling without the motion module must match a never-patched model"


def test_custom_sampler_nodes_match_the_one_node_sampler(comfy, comfy_base, tiny_checkpoint, lightning_file):
    one_node = run_latent(comfy, comfy_base, graphs.lightning_sample(
        graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file), seed=3), "one_node")
    custom = run_latent(comfy, comfy_base, graphs.custom_sample(
        graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file), seed=3), "custom")
    torch.testing.assert_close(custom, one_node, rtol=0, atol=0)


def test_effect_zero_equals_a_zero_initialised_motion_module(comfy, comfy_base, tiny_checkpoint, lightning_file,
                                                             tiny_motion_state_dict, write_motion):
    # AnimateDiff zero-initialises proj_out, so an untrained module is the identity: effect 0 must be that.
    untrained = {k: torch.zeros_like(v) if ".proj_out." in k else v for k, v in tiny_motion_state_dict.items()}
    untrained_file = write_motion("untrained_motion_module.safetensors", untrained)
    full = run_latent(comfy, comfy_base, graphs.lightning_sample(
        graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file)), "effect_one")
    none = run_latent(comfy, comfy_base, graphs.lightning_sample(
        graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file, effect=0.0)), "effect_zero")
    identity = run_latent(comfy, comfy_base, graphs.lightning_sample(
        graphs.with_motion(graphs.base(tiny_checkpoint), untrained_file)), "effect_untrained")
    assert (full - none).abs().max() > 1e-2
    torch.testing.assert_close(none, identity, rtol=0, atol=0)


def test_sampling_can_be_interrupted_and_the_server_keeps_serving(comfy, comfy_base, tiny_checkpoint,
                                                                  lightning_file):
    endless = graphs.save_latent(graphs.lightning_sample(
        graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file), steps=1000), "tests/interrupted")
    log_start = len(comfy.log())
    prompt_id = comfy.queue(endless)
    deadline = time.monotonic() + 120
    while "/1000 [" not in comfy.log()[log_start:]:  # the sampler's progress bar has started
        assert time.monotonic() < deadline, "sampling never started"
        time.sleep(0.2)
    t0 = time.monotonic()
    comfy.interrupt()
    result = comfy.wait(prompt_id, timeout=120)
    assert not result.ok
    assert "execution_interrupted" in [name for name, _ in result.status.get("messages", [])]
    assert time.monotonic() - t0 < 30, "the interrupt took effect only after the sampler finished"
    assert not saved_files(comfy_base, "interrupted_*.latent")
    run_latent(comfy, comfy_base, graphs.lightning_sample(
        graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file)), "after_interrupt")


def test_motion_lora_chain_changes_the_video(comfy, comfy_base, tiny_checkpoint, lightning_file,
                                             tiny_motion_state_dict):
    shapes = {k: tuple(v.shape) for k, v in tiny_motion_state_dict.items()}
    lora_dir = comfy_base / "models" / "animatediff_motion_lora"
    motion_files.write_ckpt(lora_dir / "v2_lora_ZoomIn.ckpt", motion_files.motion_lora_state_dict(shapes, rank=4))
    motion_files.write_ckpt(lora_dir / "v2_lora_PanLeft.ckpt",
                            motion_files.motion_lora_state_dict(shapes, rank=4, seed=2))
    without = run_latent(comfy, comfy_base, graphs.lightning_sample(
        graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file)), "lora_none")
    zero = run_latent(comfy, comfy_base, graphs.lightning_sample(graphs.with_motion(
        graphs.base(tiny_checkpoint), lightning_file, loras=[("v2_lora_ZoomIn.ckpt", 0.0)])), "lora_zero")
    chained = run_latent(comfy, comfy_base, graphs.lightning_sample(graphs.with_motion(
        graphs.base(tiny_checkpoint), lightning_file,
        loras=[("v2_lora_ZoomIn.ckpt", 0.75), ("v2_lora_PanLeft.ckpt", 0.5)])), "lora_chain")
    torch.testing.assert_close(zero, without, rtol=0, atol=0)
    assert (chained - without).abs().max() > 1e-3


def test_step_count_mismatch_warns_and_still_samples(comfy, comfy_base, tiny_checkpoint, lightning_file):
    prompt = graphs.custom_sample(graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file), steps=2)
    run_latent(comfy, comfy_base, prompt, "mismatch")
    assert f"{LIGHTNING_4STEP} was distilled for 4 steps but 2 were requested" in comfy.log()


def test_bad_motion_files_give_clear_errors_and_the_server_keeps_serving(comfy, comfy_base, tiny_checkpoint,
                                                                        lightning_file, tmp_path):
    folder = comfy_base / "models" / "animatediff_models"
    marker = tmp_path / "pwned"
    cases = {
        "sd15_checkpoint.safetensors": (lambda p: motion_files.write_safetensors(
            p, motion_files.sd_checkpoint_state_dict()), "Stable Diffusion checkpoint"),
        "picture.safetensors": (motion_files.write_png, "PNG image"),
        "truncated.safetensors": (lambda p: motion_files.write_truncated(p, motion_files.random_motion_state_dict(
            motion_files.motion_module_shapes(**motion_files.TINY))), "truncated or corrupt"),
        "evil.ckpt": (lambda p: motion_files.write_malicious_pickle(p, marker), "refused"),
    }
    for name, (write, expected) in cases.items():
        write(folder / name)
        prompt = graphs.lightning_sample(graphs.with_motion(graphs.base(tiny_checkpoint), name))
        message = run_error(comfy, prompt)
        assert name in message and expected in message, message
    assert not marker.exists(), "unpickling the malicious file ran its code"
    ok = graphs.lightning_sample(graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file))
    run_latent(comfy, comfy_base, ok, "after_bad_files")


def test_lora_for_another_architecture_is_refused(comfy, tiny_checkpoint, lightning_file, comfy_base):
    full_shapes = motion_files.motion_module_shapes()  # an SD1.5-size LoRA on the tiny module
    motion_files.write_ckpt(comfy_base / "models" / "animatediff_motion_lora" / "wrong_arch.ckpt",
                            motion_files.motion_lora_state_dict(full_shapes, rank=2))
    prompt = graphs.lightning_sample(graphs.with_motion(graphs.base(tiny_checkpoint), lightning_file,
                                                        loras=[("wrong_arch.ckpt", 1.0)]))
    message = run_error(comfy, prompt)
    assert "wrong_arch.ckpt does not fit this motion module" in message, message


def test_motion_module_for_another_unet_is_refused(comfy, comfy_base, tiny_checkpoint, write_motion):
    full = motion_files.random_motion_state_dict(motion_files.motion_module_shapes(), dtype=torch.float16)
    name = write_motion("mm_sd_v15_v2.safetensors", full)
    try:
        message = run_error(comfy, graphs.lightning_sample(graphs.with_motion(graphs.base(tiny_checkpoint), name)))
    finally:
        (comfy_base / "models" / "animatediff_models" / name).unlink()  # 0.9 GB
    assert "block channels (320, 640, 1280, 1280)" in message and "(320, 640)" in message, message


def test_more_frames_than_the_position_encoding_is_refused(comfy, tiny_checkpoint, lightning_file):
    prompt = graphs.lightning_sample(graphs.with_motion(graphs.base(tiny_checkpoint, frames=33), lightning_file))
    message = run_error(comfy, prompt)
    assert "batch_size is 33 frames" in message and "32" in message, message


def test_animatelcm_files_get_animatediff_evolveds_lcm_schedule(comfy, comfy_base, tiny_checkpoint,
                                                                tiny_motion_state_dict, write_motion):
    # AnimateDiff-Evolved's autoselect gives AnimateLCM files its `lcm` schedule: ComfyUI's own
    # ModelSamplingDiscreteDistilled + LCM on SD's "linear" betas, which is what the stock ModelSamplingDiscrete
    # node sets with sampling=lcm on an SD1.5 model. Our apply node's `auto` must sample exactly like that.
    assert any(key.startswith("mid_block.") for key in tiny_motion_state_dict)
    animatelcm = write_motion("AnimateLCM_sd15_t2v.safetensors",  # no pos_encoder keys: an AnimateLCM file
                              {k: v for k, v in tiny_motion_state_dict.items() if "pos_encoder" not in k})
    prompt = graphs.with_motion(graphs.base(tiny_checkpoint, frames=4), animatelcm)  # "3": beta_schedule auto
    prompt["30"] = {"class_type": "ADL_ApplyMotionModule", "inputs": {
        "model": ["1", 0], "motion_module": ["2", 0], "effect": 1.0, "motion_scale": 1.0,
        "beta_schedule": "animatediff"}}
    prompt["31"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["30", 0], "sampling": "lcm",
                                                                     "zsnr": False}}
    stock = {"seed": 5, "steps": 4, "cfg": 1.0, "sampler_name": "lcm", "scheduler": "sgm_uniform",
             "positive": ["4", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}
    samplers = {"auto": {"class_type": "KSampler", "inputs": {**stock, "model": ["3", 0]}},
                "evolved": {"class_type": "KSampler", "inputs": {**stock, "model": ["31", 0]}},
                "animatediff": {"class_type": "KSampler", "inputs": {**stock, "model": ["30", 0]}},
                "ours": {"class_type": "ADL_LightningKSampler", "inputs": {
                    "model": ["3", 0], "seed": 5, "steps": 0, "cfg": 1.0, "positive": ["4", 0],
                    "latent_image": ["5", 0], "denoise": 1.0}}}
    for i, (name, node) in enumerate(samplers.items()):
        prompt[f"4{i}"] = node
        prompt[f"4{i}s"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"4{i}", 0],
                                                                    "filename_prefix": f"tests/lcm_{name}"}}
    comfy.run(prompt, timeout=600).raise_for_error()
    latents = {name: load_file(str(saved_files(comfy_base, f"lcm_{name}_*.latent")[-1]))["latent_tensor"]
               for name in samplers}
    assert torch.equal(latents["auto"], latents["evolved"])
    assert torch.equal(latents["ours"], latents["evolved"])
    assert (latents["animatediff"] - latents["evolved"]).abs().max() > 1e-3, "the schedules must differ"
    assert "AnimateLCM_sd15_t2v.safetensors: lcm noise schedule" in comfy.log()
