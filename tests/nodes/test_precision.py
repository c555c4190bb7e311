"""Weight precisions in the real server: the motion layers are stored and cast exactly like the UNet's.

Each precision runs in a server of its own (the precision flags are process-wide) and is compared with the
fp32 run of the same graph. On a CPU ComfyUI stores the weights in the low precision and computes in fp32
(manual cast), so what is measured is the storage rounding of the weights. The tolerances are relative to the
spread of the final latents and sit far below the distance to a run without motion (effect 0), so a motion
module that were dropped, or run at the wrong precision, fails them.
"""

import pytest
import torch
from safetensors.torch import load_file, save_file

import graphs
from fixtures import sd15
from host import saved_files
from host.comfy_server import ComfyServer

FRAMES, SIZE = 8, 32
FP32_MOTION = "precision_fp32_motion.safetensors"
FP16_MOTION = "precision_fp16_motion.safetensors"
TINY_UNET = "tiny_sd15_unet.safetensors"

# Max abs difference to the fp32 run, as a fraction of the fp32 latents' standard deviation. Weight rounding
# is relative: 2^-9 for fp16, 2^-8 for bf16, 2^-4 for fp8 e4m3; through a random UNet and 4 Euler steps it
# grows by about an order of magnitude (measured: see the README's precision table), hence these bounds.
TOLERANCE = {"fp16_motion": 0.005, "fp16_unet": 0.005, "bf16_unet": 0.05, "fp8_e4m3fn_unet": 0.25}


def sample(server, prompt, prefix):
    """Runs a prompt ending in SaveLatent on `server`; returns the latent."""
    server.run(graphs.save_latent(prompt, f"tests/{prefix}"), timeout=600).raise_for_error()
    [path] = saved_files(server.base_dir, f"{prefix}_*.latent")
    return load_file(str(path))["latent_tensor"]


def motion_graph(checkpoint, motion_file, effect=1.0, unet=None):
    prompt = graphs.with_motion(graphs.base(checkpoint, frames=FRAMES, size=SIZE), motion_file, effect=effect)
    if unet is not None:  # the UNet from a diffusion-model file (UNETLoader), CLIP and VAE from the checkpoint
        prompt["10"] = {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}}
        prompt["3"]["inputs"]["model"] = ["10", 0]
    return graphs.lightning_sample(prompt, seed=11)


@pytest.fixture(scope="module")
def motion_files(comfy_base, tiny_motion_state_dict):
    """The same random motion module stored in fp32 and rounded to fp16."""
    folder = comfy_base / "models" / "animatediff_models"
    save_file({k: v.float().contiguous() for k, v in tiny_motion_state_dict.items()}, str(folder / FP32_MOTION))
    save_file({k: v.half().contiguous() for k, v in tiny_motion_state_dict.items()}, str(folder / FP16_MOTION))
    return FP32_MOTION, FP16_MOTION


@pytest.fixture(scope="module")
def reference(comfy, comfy_base, tiny_checkpoint, motion_files):
    """fp32 UNet, fp32 motion file: the latent every precision is compared with, and the no-motion latent."""
    full = sample(comfy, motion_graph(tiny_checkpoint, FP32_MOTION), "precision_fp32")
    still = sample(comfy, motion_graph(tiny_checkpoint, FP32_MOTION, effect=0.0), "precision_still")
    assert (full - still).abs().max() > 0.5 * full.std(), "the motion module must matter for the test to mean anything"
    return full, still


def assert_close_to(latent, reference, tolerance):
    full, still = reference
    distance = (latent - full).abs().max().item() / full.std().item()
    print(f"max |difference| / std = {distance:.2e} (bound {tolerance:g}); "
          f"without motion: {(still - full).abs().max().item() / full.std().item():.2f}")
    assert distance < tolerance


def test_fp16_motion_file_on_an_fp32_unet(comfy, tiny_checkpoint, reference):
    latent = sample(comfy, motion_graph(tiny_checkpoint, FP16_MOTION), "precision_fp16_motion")
    assert 0 < (latent - reference[0]).abs().max()  # the file's rounding is really there
    assert_close_to(latent, reference, TOLERANCE["fp16_motion"])


@pytest.fixture(scope="module")
def server_with(comfy_base):
    """Starts a second server on the same folders with extra precision flags; stops them all at the end."""
    started = []

    def start(*flags):
        server = ComfyServer.start(comfy_base, extra_args=list(flags))
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


def test_fp32_motion_file_on_an_fp16_unet(server_with, tiny_checkpoint, reference, motion_files):
    server = server_with("--fp16-unet")
    latent = sample(server, motion_graph(tiny_checkpoint, FP32_MOTION), "precision_fp16unet")
    assert "model weight dtype torch.float16, manual cast: torch.float32" in server.log()
    assert_close_to(latent, reference, TOLERANCE["fp16_unet"])


def test_bf16_unet_and_unpatching(server_with, tiny_checkpoint, reference, motion_files):
    server = server_with("--bf16-unet")
    plain = graphs.ksample(graphs.base(tiny_checkpoint, frames=FRAMES, size=SIZE), scheduler="normal")
    before = sample(server, plain, "precision_bf16plain_before")
    latent = sample(server, motion_graph(tiny_checkpoint, FP32_MOTION), "precision_bf16")
    after = sample(server, plain, "precision_bf16plain_after")
    assert_close_to(latent, reference, TOLERANCE["bf16_unet"])
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_fp8_weight_storage(server_with, comfy_base, tiny_checkpoint, reference, motion_files):
    # A diffusion-model file, as users load fp8 UNets (UNETLoader); the flag makes the host store it in fp8
    # on any device (UNETLoader's own fp8 option keeps fp32 on a CPU, where fp8 saves no compute).
    checkpoint = load_file(str(comfy_base / "models" / "checkpoints" / tiny_checkpoint))
    prefix = "model.diffusion_model."
    unet_dir = comfy_base / "models" / "diffusion_models"
    unet_dir.mkdir(exist_ok=True)
    save_file({k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}, str(unet_dir / TINY_UNET))
    del checkpoint
    server = server_with("--fp8_e4m3fn-unet")
    latent = sample(server, motion_graph(tiny_checkpoint, FP32_MOTION, unet=TINY_UNET), "precision_fp8")
    assert "model weight dtype torch.float8_e4m3fn, manual cast: torch.float32" in server.log()
    assert_close_to(latent, reference, TOLERANCE["fp8_e4m3fn_unet"])
