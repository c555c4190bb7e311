"""The shipped video-to-video workflows run in the real server: synthetic source video, random ControlNet.

Official file names, random stand-in weights (the tiny checkpoint, a motion module and an official-layout
ControlNet), a 24 fps synthetic clip made with opencv in input/ (the pose video too), 64x64 and 4 frames instead of
512x512 and 16. The UI twins
are checked with every other workflow in test_workflows.py.
"""
import json
from pathlib import Path

import pytest

from fixtures.controlnet import tiny_controlnet, write_source_video  # noqa: F401 (fixture)
from host import check_saved_video

API_DIR = Path(__file__).resolve().parents[2] / "workflows" / "api"
V2V_FILES = sorted(API_DIR.glob("*_v2v_*.json"))
SOURCE_FPS, SOURCE_FRAMES, SIZE, FRAMES = 24.0, 48, 64, 4


def test_canny_and_openpose_workflows_are_shipped():
    assert {p.name for p in V2V_FILES} == {"animatediff_lightning_4step_v2v_canny.json",
                                           "animatediff_lightning_4step_v2v_openpose.json"}


@pytest.mark.parametrize("api_file", V2V_FILES, ids=lambda p: p.stem)
def test_v2v_workflow_runs(comfy, comfy_base, tiny_checkpoint, write_motion, tiny_controlnet, api_file):
    prompt = json.loads(api_file.read_text())
    by_class = {}
    for node in prompt.values():
        by_class.setdefault(node["class_type"], []).append(node["inputs"])
    [sampler] = by_class["ADL_LightningKSampler"]
    assert sampler["denoise"] == 0.75 and sampler["steps"] == 4  # 749, 499, 249

    models = comfy_base / "models"
    checkpoint = models / "checkpoints" / by_class["CheckpointLoaderSimple"][0]["ckpt_name"]
    if not checkpoint.exists():
        checkpoint.symlink_to(tiny_checkpoint)
    write_motion(by_class["ADL_LoadMotionModule"][0]["model_name"])
    [loader] = by_class["ControlNetLoader"]
    official = models / "controlnet" / loader["control_net_name"]
    if not official.exists():
        official.symlink_to(models / "controlnet" / tiny_controlnet)
    for video in by_class["ADL_LoadVideo"]:
        write_source_video(comfy_base / "input" / video["file"], frames=SOURCE_FRAMES, size=SIZE, fps=SOURCE_FPS)
        assert video["frame_load_cap"] * SOURCE_FPS / video["force_rate"] <= SOURCE_FRAMES  # long enough for the cap
        video.update(force_width=SIZE, force_height=SIZE, frame_load_cap=FRAMES)
    frames, fps = FRAMES, by_class["ADL_LoadVideo"][0]["force_rate"]

    result = comfy.run(prompt, timeout=600).raise_for_error()

    check_saved_video(comfy_base, result, prompt, frames, SIZE, fps)  # at the forced rate
