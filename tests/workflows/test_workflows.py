"""Every shipped workflow: the UI twin says what the API file says, and the API file runs in the real server."""

import json
from pathlib import Path

import pytest

from host import check_saved_video, uses_node_packs

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
API_FILES = sorted((WORKFLOWS / "api").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def ui_to_api(ui, object_info):
    """Converts a UI-format workflow to API format the way ComfyUI's frontend does, using /object_info."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        info = object_info[node["type"]]
        linked = {i["name"]: links[i["link"]] for i in node["inputs"] if i.get("link") is not None}
        inputs, values = {}, iter(node["widgets_values"])
        for section in ("required", "optional"):
            for name in info["input_order"].get(section, []):
                spec = info["input"][section][name]
                if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES:
                    inputs[name] = next(values)  # a linked widget keeps its value behind the link
                    if len(spec) > 1 and spec[1].get("control_after_generate"):
                        next(values)  # "fixed" / "randomize": a UI-only value
                if name in linked:
                    inputs[name] = [str(linked[name][1]), linked[name][2]]
        assert next(values, None) is None, f"node {node['id']} ({node['type']}) has extra widget values"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_every_api_workflow_has_a_ui_twin():
    assert [p.name for p in API_FILES] == sorted(p.name for p in WORKFLOWS.glob("*.json"))
    assert {f"animatediff_lightning_{n}step_t2v.json" for n in (1, 2, 4, 8)} <= {p.name for p in API_FILES}


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.stem)
def test_queueing_again_makes_a_new_video_with_the_files_own_steps(api_file):
    ui = json.loads((WORKFLOWS / api_file.name).read_text())
    samplers = [node for node in ui["nodes"] if node["type"] == "ADL_LightningKSampler"]
    assert samplers
    for node in samplers:
        seed, control, steps = node["widgets_values"][:3]
        assert isinstance(seed, int) and control == "randomize" and steps == 0  # 0: the motion file's step count


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.stem)
def test_negative_prompt_is_its_own_empty_prompt(api_file):
    prompt = json.loads(api_file.read_text())
    for node in prompt.values():
        if "negative" in node["inputs"]:
            source, _ = node["inputs"]["negative"]
            while prompt[source]["class_type"] == "ControlNetApplyAdvanced":  # passes the negative through
                source, _ = prompt[source]["inputs"]["negative"]
            assert prompt[source]["class_type"] == "CLIPTextEncode" and prompt[source]["inputs"]["text"] == ""


def test_prompt_travel_takes_its_frame_count_from_the_latent():
    prompt = json.loads((WORKFLOWS / "api" / "animatediff_lightning_4step_t2v_travel.json").read_text())
    [schedule] = [node["inputs"] for node in prompt.values() if node["class_type"] == "ADL_PromptSchedule"]
    [sampler] = [node["inputs"] for node in prompt.values() if node["class_type"] == "ADL_LightningKSampler"]
    assert schedule["latent"] == sampler["latent_image"]


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.stem)
def test_ui_twin_matches_api(request, api_file):
    server = request.getfixturevalue("comfy_packs" if uses_node_packs(api_file) else "comfy")
    api = json.loads(api_file.read_text())
    ui = json.loads((WORKFLOWS / api_file.name).read_text())
    converted = ui_to_api(ui, server.object_info())
    assert converted == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


@pytest.mark.parametrize("api_file", [p for p in API_FILES if "_v2v_" not in p.name and not uses_node_packs(p)],
                         ids=lambda p: p.stem)
def test_api_workflow_runs(comfy, comfy_base, tiny_checkpoint, write_motion, api_file):
    # v2v: test_v2v_workflows.py; with IPAdapter_plus: test_pack_workflows.py
    prompt = json.loads(api_file.read_text())
    by_class = {node["class_type"]: node["inputs"] for node in prompt.values()}
    # Official file names, random stand-in weights; 64x64 keeps the run short on CPU.
    official = comfy_base / "models" / "checkpoints" / by_class["CheckpointLoaderSimple"]["ckpt_name"]
    if not official.exists():
        official.symlink_to(tiny_checkpoint)  # a link, not a 0.6 GB copy
    write_motion(by_class["ADL_LoadMotionModule"]["model_name"])
    by_class["EmptyLatentImage"].update(width=64, height=64)
    frames = by_class["EmptyLatentImage"]["batch_size"]

    result = comfy.run(prompt, timeout=600).raise_for_error()
    check_saved_video(comfy_base, result, prompt, frames, 64)
