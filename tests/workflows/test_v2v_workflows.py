"""The shipped video-to-video workflows run in the real server: synthetic source video, random ControlNet.

Official file names, random stand-in weights (the tiny checkpoint, a motion module and an official-layout
ControlNet), a 24 fps synthetic clip made with opencv in input/ (the pose video too), 64x64 and 4 frames instead of
512x512 and 16 (the long workflow: 10 frames in windows of 6 instead of 256 in windows of 16). The loaders resample
to 12 fps instead of 8 and input.mp4 has a sound track, so the saved videos show that their frame rate and sound
come from the loader. The UI twins are checked with every other workflow in test_workflows.py.
"""
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from fixtures.controlnet import tiny_controlnet, write_source_video  # noqa: F401 (fixture)
from host import output_files
from lightning_core import video as video_io

API_DIR = Path(__file__).resolve().parents[2] / "workflows" / "api"
V2V_FILES = sorted(API_DIR.glob("*_v2v_*.json"))
SOURCE_FPS, SOURCE_FRAMES, SIZE, FRAMES, FPS = 24.0, 48, 64, 4, 12.0
LONG_FRAMES, LONG_CONTEXT, LONG_OVERLAP = 10, 6, 2  # two overlapping windows per step


def test_canny_openpose_and_long_workflows_are_shipped():
    assert {p.name for p in V2V_FILES} == {"animatediff_lightning_4step_v2v_canny.json",
                                           "animatediff_lightning_4step_v2v_openpose.json",
                                           "animatediff_lightning_4step_v2v_long.json"}


def add_sound(path, fps, rate=16000):
    """Rewrites a clip with a stereo tone under it (the source's audio that the MP4 must carry)."""
    with av.open(str(path)) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    t = torch.arange(round(rate * len(frames) / fps)) / rate
    tone = torch.stack([torch.sin(2 * np.pi * 440 * t), torch.sin(2 * np.pi * 660 * t)]) * 0.5
    part = path.with_name(path.stem + ".sound" + path.suffix)
    video_io.write_mp4(part, [torch.from_numpy(frames)], fps=fps, audio=(tone, rate))
    part.replace(path)


def nodes_by_class(prompt):
    by_class = {}
    for node in prompt.values():
        by_class.setdefault(node["class_type"], []).append(node["inputs"])
    return by_class


def test_long_workflow_streams_256_frames_in_windows():
    prompt = json.loads((API_DIR / "animatediff_lightning_4step_v2v_long.json").read_text())
    by_class = nodes_by_class(prompt)
    [latent_loader], [image_loader] = by_class["ADL_LoadVideoLatent"], by_class["ADL_LoadVideo"]
    assert latent_loader["frame_load_cap"] == 256
    selection = {k: v for k, v in image_loader.items() if k != "video"}
    assert {k: latent_loader[k] for k in selection} == selection  # control frames = latent frames
    [options] = by_class["ADL_ContextOptions"]
    assert (options["context_length"], options["context_overlap"]) == (16, 4)
    [sampler] = by_class["ADL_LightningKSampler"]
    assert prompt[sampler["model"][0]]["class_type"] == "ADL_ContextOptions"
    assert prompt[sampler["latent_image"][0]]["class_type"] == "ADL_LoadVideoLatent"
    assert "ADL_VAEDecodeChunked" in by_class and "VAEDecode" not in by_class


@pytest.mark.parametrize("api_file", V2V_FILES, ids=lambda p: p.stem)
def test_v2v_workflow_runs(comfy, comfy_base, tiny_checkpoint, write_motion, tiny_controlnet, api_file):
    prompt = json.loads(api_file.read_text())
    by_class = nodes_by_class(prompt)
    [sampler] = by_class["ADL_LightningKSampler"]
    assert sampler["denoise"] == 0.75 and sampler["steps"] == 0  # the 4-step file's 749, 499, 249

    models = comfy_base / "models"
    checkpoint = models / "checkpoints" / by_class["CheckpointLoaderSimple"][0]["ckpt_name"]
    if not checkpoint.exists():
        checkpoint.symlink_to(tiny_checkpoint)
    write_motion(by_class["ADL_LoadMotionModule"][0]["model_name"])
    [loader] = by_class["ControlNetLoader"]
    official = models / "controlnet" / loader["control_net_name"]
    if not official.exists():
        official.symlink_to(models / "controlnet" / tiny_controlnet)
    frames = LONG_FRAMES if "ADL_ContextOptions" in by_class else FRAMES
    for options in by_class.get("ADL_ContextOptions", []):
        options.update(context_length=LONG_CONTEXT, context_overlap=LONG_OVERLAP)
    for video in by_class["ADL_LoadVideo"] + by_class.get("ADL_LoadVideoLatent", []):
        source = write_source_video(comfy_base / "input" / video["file"], frames=SOURCE_FRAMES, size=SIZE,
                                    fps=SOURCE_FPS)
        if video["file"] == "input.mp4":
            add_sound(source, SOURCE_FPS)
        video.update(force_rate=FPS, force_width=SIZE, force_height=SIZE, frame_load_cap=frames)

    result = comfy.run(prompt, timeout=600).raise_for_error()

    ids = {node["class_type"]: nid for nid, node in prompt.items()}
    [webp] = output_files(comfy_base, result, ids["SaveAnimatedWEBP"])
    with Image.open(webp) as image:
        assert image.n_frames == frames and image.size == (SIZE, SIZE)
        image.load()  # the frame's duration is read with the frame
        assert image.info["duration"] == int(1000 / FPS)  # the loader's rate, through its fps output
    [mp4] = output_files(comfy_base, result, ids["SaveVideo"])
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == pytest.approx(FPS)
        assert len(container.streams.audio) == 1  # the source's sound, from the loader's audio output
        assert sum(1 for _ in container.decode(stream)) == frames
