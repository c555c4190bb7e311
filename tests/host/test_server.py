"""Proves the harness against the real ComfyUI server, with stock nodes only
(no model weights), and checks that our package loads into it."""
from __future__ import annotations

import re

import pytest
from PIL import Image

from host import PACKAGE_DIR_NAME, REPO_ROOT_INIT, output_files, outputs_of
from host.comfy_server import PromptRejected


def empty_image_prompt(width: int, height: int, prefix: str) -> dict:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0x3366CC}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def test_object_info_has_stock_nodes(comfy):
    info = comfy.object_info()
    assert "KSampler" in info and "SaveImage" in info


def test_runs_prompt_and_saves_png(comfy, comfy_base):
    result = comfy.run(empty_image_prompt(72, 40, "harness/empty"), timeout=60)
    assert result.ok, result.execution_error
    assert len(outputs_of(result, "2")["images"]) == 1
    [png] = output_files(comfy_base, result, "2")
    assert png.is_file() and png.is_relative_to(comfy_base / "output" / "harness")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (72, 40)
        assert im.convert("RGB").getpixel((0, 0)) == (0x33, 0x66, 0xCC)


def test_invalid_prompt_is_rejected_and_server_keeps_serving(comfy):
    with pytest.raises(PromptRejected) as exc:
        comfy.queue(empty_image_prompt(0, 40, "harness/bad"))  # width min is 1
    errors = exc.value.node_errors["1"]["errors"]
    assert any(e["type"] == "value_smaller_than_min" and e["extra_info"]["input_name"] == "width"
               for e in errors), errors
    assert "width" in str(exc.value)

    assert comfy.run(empty_image_prompt(8, 8, "harness/after_bad"), timeout=60).ok


def test_free_and_interrupt_keep_server_usable(comfy):
    comfy.free()       # what tests call between model-heavy prompts
    comfy.interrupt()  # nothing running: a no-op, but must be accepted
    assert comfy.run(empty_image_prompt(8, 8, "harness/after_free"), timeout=60).ok


def test_execution_error_is_reported(comfy):
    # Valid prompt that fails while running: scaling a 1px image by 0.01 asks
    # torch for a 0-pixel output.
    prompt = empty_image_prompt(1, 1, "harness/never")
    prompt["3"] = {"class_type": "ImageScaleBy",
                   "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 0.01}}
    prompt["2"]["inputs"]["images"] = ["3", 0]
    result = comfy.run(prompt, timeout=60)
    assert not result.ok
    err = result.execution_error
    assert err["node_type"] == "ImageScaleBy" and err["exception_type"] and err["exception_message"]


def test_our_package_loads(comfy):
    log = comfy.log()
    # ComfyUI sums up every custom node as "<secs> seconds[ (IMPORT FAILED)]: <path>";
    # the reason is on the warning lines naming our path (import error,
    # comfy_entrypoint error, or "Skip ... lack of NODE_CLASS_MAPPINGS").
    failed = re.search(rf"\(IMPORT FAILED\): \S*{re.escape(PACKAGE_DIR_NAME)}\s*$", log, re.M)
    ours = sorted(n for n in comfy.object_info() if n.startswith("ADL_"))
    if ours and not failed:
        return
    # While the package is still being written (no __init__.py exporting
    # NODE_CLASS_MAPPINGS or comfy_entrypoint yet) there is nothing to load:
    # skip, don't fail. Once it exports nodes, a failed import fails here.
    init = REPO_ROOT_INIT.read_text() if REPO_ROOT_INIT.is_file() else ""
    if not any(hook in init for hook in ("NODE_CLASS_MAPPINGS", "comfy_entrypoint")):
        pytest.skip(f"{PACKAGE_DIR_NAME} not importable yet: {REPO_ROOT_INIT} is missing "
                    "or exports neither NODE_CLASS_MAPPINGS nor comfy_entrypoint")
    pytest.fail(f"{PACKAGE_DIR_NAME} did not load into ComfyUI (ADL_ nodes: {ours}):\n"
                + load_errors(log))


def load_errors(log: str) -> str:
    """Log lines naming our package; an import error comes with the traceback
    ComfyUI printed just before its "Cannot import" line."""
    lines, picked = log.splitlines(), []
    for i, line in enumerate(lines):
        if PACKAGE_DIR_NAME not in line or "IMPORT FAILED" in line:
            continue
        start = i
        if line.startswith("Cannot import"):
            while start > max(0, i - 80) and not lines[start].startswith("Traceback"):
                start -= 1
        picked += lines[start:i + 1] if lines[start].startswith("Traceback") else [line]
    return "\n".join(picked) or "(no error line in the log)"
