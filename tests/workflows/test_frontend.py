"""Every UI workflow opened in the real ComfyUI frontend the host serves (headless Chromium).

The frontend must know every node type, its own app.graphToPrompt() must give the shipped API file, and
the layout it draws must read left to right without overlapping nodes.
"""

import json
from pathlib import Path

import pytest

from host import uses_node_packs
from host.frontend import open_frontend

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))


@pytest.fixture(scope="module")
def frontend(comfy):
    """One browser page for the module, on the session's server."""
    with open_frontend(comfy.url) as page:
        yield page


@pytest.fixture(scope="module")
def packs_frontend(comfy_packs):
    """A page on the server with IPAdapter_plus and Advanced-ControlNet, for the workflows that use them."""
    with open_frontend(comfy_packs.url) as page:
        yield page


def page_for(request, ui_file):
    return request.getfixturevalue("packs_frontend" if uses_node_packs(ui_file) else "frontend")


def load(frontend, ui_file):
    """Loads a UI workflow; returns it and the node types the frontend reported missing."""
    workflow = json.loads(ui_file.read_text())
    return workflow, frontend.load(workflow)


def as_numbers(value):
    """JSON with every number a float (1 == 1.0 as in JSON), booleans kept apart, `_meta` dropped."""
    if isinstance(value, dict):
        return {k: as_numbers(v) for k, v in value.items() if k != "_meta"}
    if isinstance(value, list):
        return [as_numbers(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


@pytest.mark.parametrize("ui_file", UI_FILES, ids=lambda p: p.stem)
def test_frontend_knows_every_node_type(request, ui_file):
    frontend = page_for(request, ui_file)
    _, missing = load(frontend, ui_file)
    assert missing == []
    assert frontend.unregistered_node_types() == []


@pytest.mark.parametrize("ui_file", UI_FILES, ids=lambda p: p.stem)
def test_frontend_prompt_is_the_api_file(request, ui_file):
    frontend = page_for(request, ui_file)
    load(frontend, ui_file)
    prompt = frontend.graph_to_prompt()
    api = json.loads((WORKFLOWS / "api" / ui_file.name).read_text())
    assert as_numbers(prompt) == as_numbers(api)


@pytest.mark.parametrize("ui_file", UI_FILES, ids=lambda p: p.stem)
def test_frontend_layout_reads_left_to_right(request, ui_file):
    frontend = page_for(request, ui_file)
    workflow, _ = load(frontend, ui_file)
    boxes = frontend.node_boxes()  # as the frontend sized them, titles included
    for link_id, source, _, target, _, _ in workflow["links"]:
        sx, _, sw, _ = boxes[str(source)]
        assert sx + sw < boxes[str(target)][0], f"link {link_id} ({source} -> {target}) does not go right"
    ids = sorted(boxes, key=int)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = boxes[a], boxes[b]
            assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay, f"nodes {a} and {b} overlap"
    # Long links pass between the nodes of the columns they skip, through reroutes the frontend loaded.
    reroutes = frontend.reroutes()
    assert len(reroutes) == len(workflow.get("extra", {}).get("reroutes", []))
    for reroute_id, x, y in reroutes:
        for nid, (bx, by, bw, bh) in boxes.items():
            assert not (bx <= x <= bx + bw and by <= y <= by + bh), f"reroute {reroute_id} is on node {nid}"


def test_frontend_reports_a_missing_node_type(frontend):
    # The check above must be able to fail: an unknown type is reported by the frontend itself.
    workflow = json.loads((WORKFLOWS / "animatediff_lightning_4step_t2v.json").read_text())
    workflow["nodes"][0]["type"] = "ADL_NoSuchNode"
    assert frontend.load(workflow) == ["ADL_NoSuchNode"]
    assert frontend.unregistered_node_types() == ["ADL_NoSuchNode"]
