"""Writes workflows/*.json (ComfyUI UI format) and workflows/api/*.json (API format) from one graph description.

Run `python scripts/build_workflows.py` after changing a graph; tests/workflows checks that both formats
agree with each other under the real server's /object_info and that every API workflow runs.
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
PROMPT = "a girl with long hair walking on a beach at sunset, waves, cinematic lighting, masterpiece"
FPS = 8.0

# (node id, class, {input: value or (source id, output slot)}, [(output name, type)], widget order)
# Widget order is the node's input order in /object_info; `seed` carries an extra "control after generate" value.


def text_to_video(steps):
    """The 16-frame text-to-video graph for a Lightning file distilled for `steps` steps."""
    prefix = f"AnimateDiff-Lightning/t2v_{steps}step"
    return [
        (1, "CheckpointLoaderSimple", {"ckpt_name": BASE_CHECKPOINT},
         [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], ["ckpt_name"]),
        (2, "ADL_LoadMotionModule", {"model_name": f"animatediff_lightning_{steps}step_comfyui.safetensors"},
         [("MOTION_MODULE", "ADL_MOTION_MODULE")], ["model_name"]),
        (3, "ADL_ApplyMotionModule", {"model": (1, 0), "motion_module": (2, 0), "effect": 1.0, "motion_scale": 1.0},
         [("MODEL", "MODEL")], ["effect", "motion_scale"]),
        (4, "CLIPTextEncode", {"text": PROMPT, "clip": (1, 1)}, [("CONDITIONING", "CONDITIONING")], ["text"]),
        (5, "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 16}, [("LATENT", "LATENT")],
         ["width", "height", "batch_size"]),
        (6, "ADL_LightningKSampler", {"model": (3, 0), "seed": 42, "steps": steps, "cfg": 1.0, "positive": (4, 0),
                                      "latent_image": (5, 0), "denoise": 1.0},
         [("LATENT", "LATENT")], ["seed", "steps", "cfg", "denoise"]),
        (7, "VAEDecode", {"samples": (6, 0), "vae": (1, 2)}, [("IMAGE", "IMAGE")], []),
        (8, "SaveAnimatedWEBP", {"images": (7, 0), "filename_prefix": prefix, "fps": FPS, "lossless": False,
                                 "quality": 90, "method": "default"},
         [], ["filename_prefix", "fps", "lossless", "quality", "method"]),
        (9, "CreateVideo", {"images": (7, 0), "fps": FPS}, [("VIDEO", "VIDEO")], ["fps"]),
        (10, "SaveVideo", {"video": (9, 0), "filename_prefix": prefix, "format": "mp4", "codec": "h264"},
         [], ["filename_prefix", "format", "codec"]),
    ]


def is_link(value):
    return isinstance(value, tuple)


def to_api(graph):
    """API format: {id: {class_type, inputs}} with links as [source id, slot]."""
    return {str(nid): {"class_type": cls, "inputs": {k: [str(v[0]), v[1]] if is_link(v) else v for k, v in inputs.items()},
                       "_meta": {"title": cls}}
            for nid, cls, inputs, _, _ in graph}


def to_ui(graph):
    """UI (litegraph) format, laid out left to right in graph order."""
    outputs_of = {nid: outs for nid, _, _, outs, _ in graph}
    links, nodes = [], []
    for order, (nid, cls, inputs, outs, widgets) in enumerate(graph):
        node_inputs = []
        for name, value in inputs.items():
            if is_link(value):
                src, slot = value
                links.append([len(links) + 1, src, slot, nid, len(node_inputs), outputs_of[src][slot][1]])
                node_inputs.append({"name": name, "type": outputs_of[src][slot][1], "link": len(links)})
        values = []
        for name in widgets:
            values.append(inputs[name])
            if name == "seed":
                values.append("fixed")
        nodes.append({"id": nid, "type": cls, "pos": [60 + 330 * (order % 5), 80 + 420 * (order // 5)],
                      "size": [300, 120 + 26 * len(values)], "flags": {}, "order": order, "mode": 0,
                      "inputs": node_inputs, "outputs": [], "properties": {"Node name for S&R": cls},
                      "widgets_values": values})
    by_id = {n["id"]: n for n in nodes}
    for nid, _, _, outs, _ in graph:
        by_id[nid]["outputs"] = [{"name": name, "type": typ, "slot_index": slot,
                                  "links": [l[0] for l in links if l[1] == nid and l[2] == slot]}
                                 for slot, (name, typ) in enumerate(outs)]
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main():
    for steps in (1, 2, 4, 8):
        graph = text_to_video(steps)
        name = f"animatediff_lightning_{steps}step_t2v.json"
        (ROOT / "workflows" / name).write_text(json.dumps(to_ui(graph), indent=2) + "\n")
        (ROOT / "workflows" / "api" / name).write_text(json.dumps(to_api(graph), indent=2) + "\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
