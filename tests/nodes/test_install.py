"""Installing into a ComfyUI that has only ComfyUI's own requirements: no opencv.

A second real server runs with `tests/host/without_modules` on PYTHONPATH, whose sitecustomize makes `cv2`
unimportable. The pack must load every node, run text to video, and have the video loader refuse with what
to install, while the server keeps serving.
"""

import json
from pathlib import Path

import av
import numpy as np
import pytest

from host import PACKAGE_DIR_NAME, REPO_ROOT
from host.comfy_server import ComfyServer, PromptRejected
from lightning_core.requirements import INSTALL_HINT

WITHOUT_MODULES = Path(__file__).resolve().parents[1] / "host" / "without_modules"
T2V = REPO_ROOT / "workflows" / "api" / "animatediff_lightning_4step_t2v.json"


def write_clip(path, frames=4, size=(64, 64)):
    """A small H.264 MP4 written with PyAV (what ComfyUI itself ships), so the test needs no opencv either."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            frame = np.full((size[1], size[0], 3), 40 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def comfy_without_opencv(comfy_base, tmp_path_factory):
    """A real server whose Python cannot import cv2, sharing the session server's model folders."""
    base = tmp_path_factory.mktemp("comfy_without_opencv")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACKAGE_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    (base / "models").symlink_to(comfy_base / "models", target_is_directory=True)
    (base / "input").mkdir()
    server = ComfyServer.start(base, extra_env={"PYTHONPATH": str(WITHOUT_MODULES), "ADL_WITHOUT_MODULES": "cv2"})
    yield server
    server.stop()


def test_the_harness_really_hides_opencv(comfy_without_opencv):
    # the pack's own start-up line proves the server's Python could not import cv2
    assert "opencv is not installed" in comfy_without_opencv.log()


def test_without_opencv_every_node_registers_and_t2v_runs(comfy, comfy_without_opencv, tiny_checkpoint, write_motion):
    ours = {name for name, node in comfy.object_info().items() if PACKAGE_DIR_NAME in node["python_module"]}
    info = comfy_without_opencv.object_info()
    assert ours and ours <= set(info)  # every node the server with opencv has (test_schema lists them)

    prompt = json.loads(T2V.read_text())
    by_class = {node["class_type"]: node["inputs"] for node in prompt.values()}
    by_class["CheckpointLoaderSimple"]["ckpt_name"] = tiny_checkpoint
    by_class["ADL_LoadMotionModule"]["model_name"] = write_motion("lightning_4step_no_opencv.safetensors")
    by_class["EmptyLatentImage"].update(width=64, height=64, batch_size=4)
    comfy_without_opencv.run(prompt, timeout=600).raise_for_error()


def test_without_opencv_the_video_loader_says_what_to_install(comfy_without_opencv):
    name = write_clip(comfy_without_opencv.base_dir / "input" / "clip.mp4").name
    load = {"1": {"class_type": "ADL_LoadVideo", "inputs": {
        "file": name, "force_rate": 0.0, "force_width": 0, "force_height": 0, "frame_load_cap": 0,
        "skip_first_frames": 0, "select_every_nth": 1}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(PromptRejected) as rejected:
        comfy_without_opencv.queue(load)
    assert INSTALL_HINT in json.dumps(rejected.value.node_errors)

    canny = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
             "2": {"class_type": "ADL_CannyPreprocessor",
                   "inputs": {"images": ["1", 0], "low_threshold": 100, "high_threshold": 200}},
             "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    result = comfy_without_opencv.run(canny)
    assert not result.ok and INSTALL_HINT in result.execution_error["exception_message"]

    assert comfy_without_opencv.system_stats()["system"]  # still serving
    canny["2"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    comfy_without_opencv.run(canny).raise_for_error()
