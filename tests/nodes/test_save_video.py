"""Saving like the stock savers: the workflow rides along in the MP4 and WEBP (dropped back on the real frontend
it restores the graph), the loader's audio reaches the MP4, and the MP4/GIF/WEBP options apply."""

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from host import output_files
from host.frontend import open_frontend
from lightning_core import video

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SHARED_WORKFLOW = WORKFLOWS / "animatediff_lightning_4step_t2v.json"  # what the user's canvas held when queueing
MIME = {"mp4": "video/mp4", "webp": "image/webp", "gif": "image/gif"}
FORMATS = {"mp4": "mp4 (H.264)", "webp": "webp", "gif": "gif"}


def frames(count=10, size=(64, 48)):
    return [torch.from_numpy(np.stack([np.full((size[1], size[0], 3), 20 * i, np.uint8) for i in range(count)]))]


@pytest.fixture(scope="module")
def clips(comfy_base):
    """talking.mp4 (10 frames at 10 fps with a stereo tone) and silent.mp4 in the server's input folder."""
    t = torch.arange(16000 * 2) / 16000
    tone = torch.stack([torch.sin(2 * np.pi * 440 * t), torch.sin(2 * np.pi * 660 * t)]) * 0.5
    video.write_mp4(comfy_base / "input" / "talking.mp4", frames(), fps=10, audio=(tone, 16000))
    video.write_mp4(comfy_base / "input" / "silent.mp4", frames(), fps=10)
    return "talking.mp4", "silent.mp4"


def load(file, **overrides):
    inputs = {**dict(file=file, force_rate=0.0, force_width=0, force_height=0, frame_load_cap=0,
                     skip_first_frames=0, select_every_nth=1), **overrides}
    return {"class_type": "ADL_LoadVideo", "inputs": inputs}


def save(fmt, prefix, **options):
    return {"class_type": "ADL_SaveVideo", "inputs": {"images": ["1", 0], "fps": ["1", 2], "format": FORMATS[fmt],
                                                      "filename_prefix": f"adl_save/{prefix}", **options}}


def test_the_loaders_audio_reaches_the_mp4_cut_to_the_selection(comfy, comfy_base, clips):
    talking, silent = clips
    prompt = {"1": load(talking, skip_first_frames=2, frame_load_cap=5),  # 0.2 s to 0.7 s
              "2": save("mp4", "with_audio", crf=30, pix_fmt="yuv444p", audio=["1", 3])}
    result = comfy.run(prompt, timeout=120).raise_for_error()
    [mp4] = output_files(comfy_base, result, "2")
    with av.open(str(mp4)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"
        assert [s.type for s in container.streams] == ["video", "audio"]
    waveform, rate = video.read_audio(mp4)
    assert waveform.shape[0] == 2 and 0.5 * rate <= waveform.shape[1] <= 0.5 * rate + 1024

    silent_prompt = {"1": load(silent), "2": save("mp4", "no_audio", audio=["1", 3])}
    result = comfy.run(silent_prompt, timeout=120).raise_for_error()
    [mp4] = output_files(comfy_base, result, "2")
    with av.open(str(mp4)) as container:
        assert [s.type for s in container.streams] == ["video"]


@pytest.fixture(scope="module")
def saved_with_workflow(comfy, comfy_base, clips):
    """One file per format, saved while the frontend's extra_pnginfo held SHARED_WORKFLOW."""
    workflow = json.loads(SHARED_WORKFLOW.read_text())
    paths = {}
    for fmt in FORMATS:
        prompt = {"1": load(clips[1]), "2": save(fmt, f"shared_{fmt}", loop_count=2)}
        result = comfy.run(prompt, timeout=120, extra_data={"extra_pnginfo": {"workflow": workflow}})
        [paths[fmt]] = output_files(comfy_base, result.raise_for_error(), "2")
    return workflow, paths


@pytest.fixture(scope="module")
def frontend(comfy):
    with open_frontend(comfy.url) as page:
        yield page


@pytest.mark.parametrize("fmt", ["mp4", "webp"])
def test_dropping_a_saved_file_on_the_canvas_restores_its_workflow(frontend, saved_with_workflow, fmt):
    workflow, paths = saved_with_workflow
    frontend.load({"nodes": [], "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4})
    assert frontend.graph_node_types() == {}
    frontend.drop_file(paths[fmt], MIME[fmt])
    assert frontend.graph_node_types() == {str(node["id"]): node["type"] for node in workflow["nodes"]}, \
        frontend.errors


def test_the_frontend_reads_no_workflow_from_a_gif(frontend, saved_with_workflow):
    # ComfyUI 0.3.75's frontend (1.32.9) takes workflows from PNG, WEBP, SVG, AVIF, MP3/OGG/FLAC, MP4/MOV/M4V/WEBM
    # and JSON/latent files, not from GIFs: a dropped GIF leaves the graph as it was (our save node says so).
    _, paths = saved_with_workflow
    before = {"nodes": [], "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4}
    frontend.load(before)
    frontend.drop_file(paths["gif"], MIME["gif"])
    assert frontend.graph_node_types() == {}
