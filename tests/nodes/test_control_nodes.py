"""Control nodes in the real server: preprocessors, stock ControlNets on our patched model, the frame-count rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fixtures.controlnet import tiny_controlnet, write_source_video  # noqa: F401 (fixture)
from host import PromptRejected, output_files
from lightning_core import control

FRAMES, SIZE, STEPS = 4, 64, 2  # 2 steps of the 4-step file keep the server runs short; enough for start/end percent
VIDEO = "adl_control_source.mp4"


@pytest.fixture(scope="module")
def source_video(comfy_base):
    write_source_video(comfy_base / "input" / VIDEO, frames=FRAMES, size=SIZE)
    return VIDEO


def load_video(node="40"):
    return {node: {"class_type": "ADL_LoadVideo",
                   "inputs": {"file": VIDEO, "force_rate": 0.0, "force_width": 0, "force_height": 0,
                              "frame_load_cap": FRAMES, "skip_first_frames": 0, "select_every_nth": 1}}}


def pngs(comfy_base, result, node):
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in output_files(comfy_base, result, node)])


def latent(comfy_base, result, node):
    [path] = output_files(comfy_base, result, node)
    return load_file(str(path))["latent_tensor"].float()


PREPROCESSORS = {
    "ADL_CannyPreprocessor": (control.canny, {"low_threshold": 50, "high_threshold": 120}),
    "ADL_SoftEdgePreprocessor": (control.soft_edges, {"blur_sigma": 1.0, "gain": 4.0}),
    "ADL_GrayscalePreprocessor": (control.grayscale, {"threshold": 0.5}),
    "ADL_TilePreprocessor": (control.tile, {"downscale": 4, "blur_sigma": 0.5}),
}


def test_preprocessor_nodes_compute_what_lightning_core_does(comfy, comfy_base, source_video):
    prompt = load_video()
    prompt["50"] = {"class_type": "SaveImage", "inputs": {"images": ["40", 0], "filename_prefix": "adl_ctl/source"}}
    for i, (node_type, (_, params)) in enumerate(PREPROCESSORS.items()):
        prompt[str(60 + i)] = {"class_type": node_type, "inputs": {"images": ["40", 0], **params}}
        prompt[str(70 + i)] = {"class_type": "SaveImage",
                               "inputs": {"images": [str(60 + i), 0], "filename_prefix": f"adl_ctl/{node_type}"}}
    result = comfy.run(prompt, timeout=300).raise_for_error()
    source = pngs(comfy_base, result, "50").astype(np.float32) / 255  # the loader's k/255 values, exactly
    assert source.shape == (FRAMES, SIZE, SIZE, 3)
    for i, (node_type, (preprocess, params)) in enumerate(PREPROCESSORS.items()):
        expected = control.map_frames(preprocess, torch.from_numpy(source), **params).numpy()
        expected = np.clip(255.0 * expected, 0, 255).astype(np.uint8)  # SaveImage truncates
        got = pngs(comfy_base, result, str(70 + i))
        assert got.shape == expected.shape, node_type
        assert np.abs(got.astype(int) - expected).max() <= 1, node_type  # float32 vs float32 rounding at most
        assert got.std() > 1, f"{node_type} gave a flat image"


def controlnet_graph(checkpoint, motion, controlnet_name, effect=1.0):
    """Checkpoint (1), motion (2, 3), prompt (4), empty latent (5), the video (40), canny (41), ControlNet (42), soft edges (43)."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "ADL_LoadMotionModule", "inputs": {"model_name": motion}},
        "3": {"class_type": "ADL_ApplyMotionModule",
              "inputs": {"model": ["1", 0], "motion_module": ["2", 0], "effect": effect, "motion_scale": 1.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a dancer", "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": FRAMES}},
        **load_video(),
        "41": {"class_type": "ADL_CannyPreprocessor", "inputs": {"images": ["40", 0], "low_threshold": 50,
                                                                 "high_threshold": 120}},
        "42": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet_name}},
        "43": {"class_type": "ADL_SoftEdgePreprocessor", "inputs": {"images": ["40", 0], "blur_sigma": 1.0, "gain": 4.0}},
    }
    return prompt


def apply(prompt, node, image, positive=("4", 0), strength=1.0, start=0.0, end=1.0):
    prompt[node] = {"class_type": "ControlNetApplyAdvanced",
                    "inputs": {"positive": list(positive), "negative": ["4", 0], "control_net": ["42", 0],
                               "image": list(image), "strength": strength, "start_percent": start, "end_percent": end}}
    return (node, 0)


def sample(prompt, node, positive, prefix):
    prompt[node] = {"class_type": "ADL_LightningKSampler",
                    "inputs": {"model": ["3", 0], "seed": 3, "steps": STEPS, "cfg": 1.0, "positive": list(positive),
                               "latent_image": ["5", 0], "denoise": 1.0}}
    prompt[node + "9"] = {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": prefix}}
    return node + "9"


def test_stock_controlnets_steer_the_patched_model(comfy, comfy_base, tiny_checkpoint, write_motion, tiny_controlnet,
                                                   source_video):
    """Per-frame hints, strength, start/end percent and two ControlNets chained, with the motion module on."""
    prompt = controlnet_graph(tiny_checkpoint, write_motion("adl_ctl_4step.safetensors"), tiny_controlnet)
    runs = {
        "none": ("4", 0),
        "canny": apply(prompt, "80", ("41", 0)),
        "half strength": apply(prompt, "81", ("41", 0), strength=0.5),
        "first step only": apply(prompt, "82", ("41", 0), end=0.25),  # 2 steps: 999 with control, 499 without
        "canny + soft edges": apply(prompt, "83", ("43", 0), positive=("80", 0)),
        "one image for all frames": apply(prompt, "85", ("84", 0)),
    }
    prompt["84"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["41", 0], "batch_index": 3, "length": 1}}
    saved = {name: sample(prompt, str(100 + 10 * i), positive, f"adl_ctl/{i}") for i, (name, positive) in
             enumerate(runs.items())}
    result = comfy.run(prompt, timeout=600).raise_for_error()
    latents = {name: latent(comfy_base, result, node) for name, node in saved.items()}
    assert all(torch.isfinite(x).all() and x.shape == (FRAMES, 4, SIZE // 8, SIZE // 8) for x in latents.values())
    names = list(latents)
    distances = {(a, b): (latents[a] - latents[b]).abs().max().item() for i, a in enumerate(names) for b in names[i + 1:]}
    print("\n" + "\n".join(f"{a} vs {b}: {d:.4g}" for (a, b), d in distances.items()))
    # every setting changes the result: none of them is ignored
    assert min(distances.values()) > 1e-2, min(distances.items(), key=lambda kv: kv[1])
    # half strength lies between none and full, the first step alone closer to none than all steps
    assert distances[("none", "half strength")] < distances[("none", "canny")]
    assert distances[("none", "first step only")] < distances[("none", "canny")]


def test_each_frame_gets_its_own_control_image(comfy, comfy_base, tiny_checkpoint, write_motion, tiny_controlnet,
                                               source_video):
    """With the motion module off (effect 0) frames do not interact: changing frame 0's hint changes frame 0 only."""
    prompt = controlnet_graph(tiny_checkpoint, write_motion("adl_ctl_4step.safetensors"), tiny_controlnet, effect=0.0)
    prompt["90"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["41", 0], "batch_index": FRAMES - 1, "length": 1}}
    prompt["91"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["41", 0], "batch_index": 1, "length": FRAMES - 1}}
    prompt["92"] = {"class_type": "ImageBatch", "inputs": {"image1": ["90", 0], "image2": ["91", 0]}}
    a = sample(prompt, "100", apply(prompt, "80", ("41", 0)), "adl_ctl/frames_a")
    b = sample(prompt, "110", apply(prompt, "81", ("92", 0)), "adl_ctl/frames_b")
    result = comfy.run(prompt, timeout=600).raise_for_error()
    per_frame = (latent(comfy_base, result, a) - latent(comfy_base, result, b)).flatten(1).abs().max(1).values
    print(f"\nper-frame change when only frame 0's hint changes: {[round(v, 5) for v in per_frame.tolist()]}")
    assert per_frame[0] > 1e-2 and per_frame[1:].max() < 1e-4


def test_control_frame_count_must_match_the_latent(comfy, comfy_base, tiny_checkpoint, write_motion, tiny_controlnet,
                                                   source_video):
    prompt = controlnet_graph(tiny_checkpoint, write_motion("adl_ctl_4step.safetensors"), tiny_controlnet)
    prompt["90"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["41", 0], "batch_index": 0, "length": 3}}
    sample(prompt, "100", apply(prompt, "80", ("90", 0)), "adl_ctl/wrong_count")
    result = comfy.run(prompt, timeout=300)
    assert not result.ok
    message = result.execution_error["exception_message"]
    assert "exactly as many frames as the latent batch, or 1" in message
    assert "3 control frames" in message and f"{FRAMES} frames" in message, message
    # bad thresholds name the parameter; the server keeps serving
    bad = {**load_video(), "41": {"class_type": "ADL_CannyPreprocessor",
                                  "inputs": {"images": ["40", 0], "low_threshold": 200, "high_threshold": 100}},
           "42": {"class_type": "PreviewImage", "inputs": {"images": ["41", 0]}}}
    result = comfy.run(bad, timeout=120)
    assert not result.ok and "low_threshold" in result.execution_error["exception_message"]
    assert comfy.system_stats()


def test_preprocessor_refuses_a_missing_image_input(comfy):
    with pytest.raises(PromptRejected):
        comfy.queue({"1": {"class_type": "ADL_CannyPreprocessor", "inputs": {"low_threshold": 1, "high_threshold": 2}},
                     "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
