"""The shipped workflows that use IPAdapter_plus run in the real server with the pack installed (`comfy_packs`).

The CLIP vision model is the full-size ViT-H/14 layout (random weights, 1.3 GB in fp16), written for this test
and deleted right after it; the IPAdapter file has the official keys sized for the tiny test UNet that stands
in for SD1.5 (tests/fixtures/packs.py). 64x64 and 20 frames (two windows of 16, overlap 4) keep the run short on CPU.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import packs
from host import check_saved_video, uses_node_packs

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
PACK_API_FILES = [p for p in sorted((WORKFLOWS / "api").glob("*.json")) if uses_node_packs(p)]
FRAMES = 20


def test_the_ipadapter_workflow_is_shipped():
    assert [p.name for p in PACK_API_FILES] == ["animatediff_lightning_4step_t2v_ipadapter_long.json"]


@pytest.mark.parametrize("api_file", PACK_API_FILES, ids=lambda p: p.stem)
def test_pack_workflow_runs(comfy_packs, comfy_packs_base, tiny_checkpoint, write_motion, api_file):
    prompt = json.loads(api_file.read_text())
    by_class = {node["class_type"]: node["inputs"] for node in prompt.values()}
    models = comfy_packs_base / "models"
    official = models / "checkpoints" / by_class["CheckpointLoaderSimple"]["ckpt_name"]
    if not official.exists():
        official.symlink_to(tiny_checkpoint)
    write_motion(by_class["ADL_LoadMotionModule"]["model_name"])
    packs.write_ipadapter(models / "ipadapter" / by_class["IPAdapterModelLoader"]["ipadapter_file"],
                          packs.TINY_PATCHED_CHANNELS)
    clip_vision = models / "clip_vision" / by_class["CLIPVisionLoader"]["clip_name"]
    reference = np.random.default_rng(5).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(reference).save(comfy_packs_base / "input" / by_class["LoadImage"]["image"])
    by_class["EmptyLatentImage"].update(width=64, height=64, batch_size=FRAMES)
    try:
        packs.write_clip_vision_h(clip_vision)
        result = comfy_packs.run(prompt, timeout=900).raise_for_error()
    finally:
        clip_vision.unlink(missing_ok=True)
        comfy_packs.free()

    check_saved_video(comfy_packs_base, result, prompt, FRAMES, 64)
