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
# A widget fed by a link (a widget converted to an input) is a WidgetLink: it stays in the widget order, since the
# frontend keeps a value for the widget behind the link.


class WidgetLink(tuple):
    """(source id, output slot) into a widget's input, with the value the hidden widget keeps in the UI file."""

    def __new__(cls, source, slot, value):
        link = super().__new__(cls, (source, slot))
        link.value = value
        return link


def motion_model(steps):
    """Nodes 1-3: the SD1.5 checkpoint, the Lightning file for `steps` steps, and the patched MODEL (3, 0)."""
    return [
        (1, "CheckpointLoaderSimple", {"ckpt_name": BASE_CHECKPOINT},
         [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], ["ckpt_name"]),
        (2, "ADL_LoadMotionModule", {"model_name": f"animatediff_lightning_{steps}step_comfyui.safetensors"},
         [("MOTION_MODULE", "ADL_MOTION_MODULE")], ["model_name"]),
        (3, "ADL_ApplyMotionModule", {"model": (1, 0), "motion_module": (2, 0), "effect": 1.0, "motion_scale": 1.0,
                                      "beta_schedule": "auto"},
         [("MODEL", "MODEL")], ["effect", "motion_scale", "beta_schedule"]),
    ]


def sampler(nid, model, positive, latent, steps=0, denoise=1.0, negative=None):
    """Our one-node Lightning sampler: steps 0 is the motion file's own step count (swapping the file just works),
    and the seed is randomized after every queue in the UI (the API file keeps this one)."""
    inputs = {"model": model, "seed": 42, "steps": steps, "cfg": 1.0, "positive": positive, "latent_image": latent,
              "denoise": denoise}
    if negative is not None:
        inputs["negative"] = negative
    return nid, "ADL_LightningKSampler", inputs, [("LATENT", "LATENT")], ["seed", "steps", "cfg", "denoise"]


def save_video(first_id, images, prefix, fps=FPS, audio=None):
    """An animated WEBP and an H.264 MP4 of `images`, with stock nodes, ids first_id to first_id + 2.

    `fps`: a number, or a link to a frame rate output (e.g. a video loader's), made a WidgetLink here.
    `audio`: a link to an AUDIO output (e.g. a video loader's) for the MP4, or None."""
    if is_link(fps):
        fps = WidgetLink(*fps[:2], FPS)
    video = {"images": images, **({"audio": audio} if audio else {}), "fps": fps}  # the node's input order
    return [
        (first_id, "SaveAnimatedWEBP", {"images": images, "filename_prefix": prefix, "fps": fps, "lossless": False,
                                        "quality": 90, "method": "default"},
         [], ["filename_prefix", "fps", "lossless", "quality", "method"]),
        (first_id + 1, "CreateVideo", video, [("VIDEO", "VIDEO")], ["fps"]),
        (first_id + 2, "SaveVideo", {"video": (first_id + 1, 0), "filename_prefix": prefix, "format": "mp4",
                                     "codec": "h264"},
         [], ["filename_prefix", "format", "codec"]),
    ]


def empty_latent(nid, frames):
    return (nid, "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": frames}, [("LATENT", "LATENT")],
            ["width", "height", "batch_size"])


def text_to_video(steps):
    """The 16-frame text-to-video graph for a Lightning file distilled for `steps` steps."""
    return [
        *motion_model(steps),
        (4, "CLIPTextEncode", {"text": PROMPT, "clip": (1, 1)}, [("CONDITIONING", "CONDITIONING")], ["text"]),
        empty_latent(5, 16),
        sampler(6, (3, 0), (4, 0), (5, 0)),
        (7, "VAEDecode", {"samples": (6, 0), "vae": (1, 2)}, [("IMAGE", "IMAGE")], []),
        *save_video(8, (7, 0), f"AnimateDiff-Lightning/t2v_{steps}step"),
    ]


V2V_CONTROLNETS = {"canny": "control_v11p_sd15_canny.pth", "openpose": "control_v11p_sd15_openpose.pth"}
V2V_PROMPT = "a watercolor painting of a woman dancing in a garden, soft light, masterpiece"


def negative_prompt(nid):
    """An empty negative prompt of its own: used only at cfg above 1, where the positive would guide nothing."""
    return nid, "CLIPTextEncode", {"text": "", "clip": (1, 1)}, [("CONDITIONING", "CONDITIONING")], ["text"]


def apply_controlnet(nid, positive, negative, control_net, image):
    return (nid, "ControlNetApplyAdvanced", {"positive": positive, "negative": negative, "control_net": control_net,
                                             "image": image, "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
            [("positive", "CONDITIONING"), ("negative", "CONDITIONING")], ["strength", "start_percent", "end_percent"])


def controlnet_loader(nid, control):
    return (nid, "ControlNetLoader", {"control_net_name": V2V_CONTROLNETS[control]}, [("CONTROL_NET", "CONTROL_NET")],
            ["control_net_name"])


VIDEO_SELECTION = ["force_rate", "force_width", "force_height", "frame_load_cap", "skip_first_frames",
                   "select_every_nth"]
VIDEO_OUTPUTS = [("IMAGE", "IMAGE"), ("frame_count", "INT"), ("fps", "FLOAT"), ("audio", "AUDIO")]


def video_selection(frames):
    """The loaders' frame selection: `frames` frames at 8 fps and 512x512 from the start of the file."""
    return dict(zip(VIDEO_SELECTION, (FPS, 512, 512, frames, 0, 1)))


def load_video(nid, file, frames):
    return nid, "ADL_LoadVideo", {"file": file, **video_selection(frames)}, VIDEO_OUTPUTS, ["file", *VIDEO_SELECTION]


def video_to_video(control, steps=4):
    """Video-to-video with one ControlNet: 16 frames of input.mp4 at 8 fps and 512x512, denoise 0.75 (749, 499, 249),
    saved at the loader's frame rate.

    canny: control images from our canny preprocessor on the source frames. openpose: pose images from a
    second video, input_pose.mp4 (e.g. rendered by DWPose/OpenPose from comfyui_controlnet_aux); replace that
    loader by the pose preprocessor node to compute them in the same graph.
    """
    if control == "canny":
        hint = (7, "ADL_CannyPreprocessor", {"images": (5, 0), "low_threshold": 100, "high_threshold": 200},
                [("IMAGE", "IMAGE")], ["low_threshold", "high_threshold"])
    else:
        hint = load_video(7, "input_pose.mp4", 16)
    return [
        *motion_model(steps),
        (4, "CLIPTextEncode", {"text": V2V_PROMPT, "clip": (1, 1)}, [("CONDITIONING", "CONDITIONING")], ["text"]),
        load_video(5, "input.mp4", 16),
        (6, "VAEEncode", {"pixels": (5, 0), "vae": (1, 2)}, [("LATENT", "LATENT")], []),
        hint,
        controlnet_loader(8, control),
        apply_controlnet(9, (4, 0), (15, 0), (8, 0), (7, 0)),
        sampler(10, (3, 0), (9, 0), (6, 0), denoise=0.75, negative=(9, 1)),
        (11, "VAEDecode", {"samples": (10, 0), "vae": (1, 2)}, [("IMAGE", "IMAGE")], []),
        *save_video(12, (11, 0), f"AnimateDiff-Lightning/v2v_{control}_{steps}step", fps=(5, 2), audio=(5, 3)),
        negative_prompt(15),
    ]


def long_video_to_video(steps=4, frames=256):
    """Video-to-video over `frames` frames of input.mp4 (8 fps, 512x512) in context windows of 16 (overlap 4).

    The source goes to LATENT in 16-frame chunks (its full-size frames are never held), the canny ControlNet gets
    each window's own control frames, and the result is decoded in chunks. The control frames come from a second
    loader of the same file and selection, since canny needs pixels.
    """
    options = {"context_length": 16, "context_overlap": 4, "schedule": "standard_uniform", "fuse_method": "pyramid",
               "windows_per_batch": 1, "freenoise": False, "closed_loop": False}
    selection = video_selection(frames)
    return [
        *motion_model(steps),
        (4, "ADL_ContextOptions", {"model": (3, 0), **options}, [("MODEL", "MODEL")], list(options)),
        (5, "CLIPTextEncode", {"text": V2V_PROMPT, "clip": (1, 1)}, [("CONDITIONING", "CONDITIONING")], ["text"]),
        negative_prompt(6),
        (7, "ADL_LoadVideoLatent", {"file": "input.mp4", "vae": (1, 2), **selection, "frames_per_chunk": 16},
         [("LATENT", "LATENT"), *VIDEO_OUTPUTS[1:]], ["file", *VIDEO_SELECTION, "frames_per_chunk"]),
        load_video(8, "input.mp4", frames),
        (9, "ADL_CannyPreprocessor", {"images": (8, 0), "low_threshold": 100, "high_threshold": 200},
         [("IMAGE", "IMAGE")], ["low_threshold", "high_threshold"]),
        controlnet_loader(10, "canny"),
        apply_controlnet(11, (5, 0), (6, 0), (10, 0), (9, 0)),
        sampler(12, (4, 0), (11, 0), (7, 0), denoise=0.75, negative=(11, 1)),
        (13, "ADL_VAEDecodeChunked", {"samples": (12, 0), "vae": (1, 2), "frames_per_chunk": 16},
         [("IMAGE", "IMAGE")], ["frames_per_chunk"]),
        *save_video(14, (13, 0), f"AnimateDiff-Lightning/v2v_long_canny_{steps}step", fps=(7, 2), audio=(7, 3)),
    ]


TRAVEL_SCHEDULE = """0: a girl with long hair walking on a beach at sunset, waves
24: a girl with long hair walking through a snowy forest, falling snow
48: a girl with long hair walking down a neon city street at night, rain
"""
LONG_PROMPT = "a girl with long hair walking along a beach at sunset, waves, cinematic lighting, masterpiece"
LOOP_PROMPT = "a koi pond seen from above, fish circling slowly, ripples, soft light, masterpiece"


def long_video(kind, steps=4, frames=64):
    """64 frames, decoded in chunks. kind "long": one prompt, in views of 16 (overlap 4); "loop": a closed loop
    (looped context windows of 16); "travel": a prompt schedule over the frames (context windows of 16).

    Views alone are the fastest mode and fit a 24 GB GPU at 512x512 (docs/long_video.md has the arithmetic): the
    UNet takes the 64 frames in one call per step, ComfyUI's own estimate for it is about 5.1 GiB in fp16.
    """
    loop = kind == "loop"
    options = {"context_length": 16, "context_overlap": 4, "schedule": "looped_uniform" if loop else "standard_uniform",
               "fuse_method": "pyramid", "windows_per_batch": 1, "freenoise": False, "closed_loop": loop}
    long_options = {"view_length": 16, "view_overlap": 4, "schedule": "standard_static", "fuse_method": "pyramid",
                    "freenoise": False, "closed_loop": False}
    if kind == "long":
        windows = (4, "ADL_ViewOptions", {"model": (3, 0), **long_options}, [("MODEL", "MODEL")], list(long_options))
    else:
        windows = (4, "ADL_ContextOptions", {"model": (3, 0), **options}, [("MODEL", "MODEL")], list(options))
    if kind == "travel":
        # the frame count comes from the latent (`frames` is then ignored)
        prompt = (5, "ADL_PromptSchedule", {"clip": (1, 1), "text": TRAVEL_SCHEDULE, "frames": frames, "pre_text": "",
                                            "app_text": "cinematic lighting, masterpiece", "latent": (6, 0)},
                  [("CONDITIONING", "CONDITIONING")], ["text", "frames", "pre_text", "app_text"])
    else:
        prompt = (5, "CLIPTextEncode", {"text": LOOP_PROMPT if loop else LONG_PROMPT, "clip": (1, 1)},
                  [("CONDITIONING", "CONDITIONING")], ["text"])
    return [
        *motion_model(steps),
        windows,
        prompt,
        empty_latent(6, frames),
        sampler(7, (4, 0), (5, 0), (6, 0)),
        (8, "ADL_VAEDecodeChunked", {"samples": (7, 0), "vae": (1, 2), "frames_per_chunk": 16},
         [("IMAGE", "IMAGE")], ["frames_per_chunk"]),
        *save_video(9, (8, 0), f"AnimateDiff-Lightning/t2v_{kind}_{steps}step"),
    ]


IPADAPTER_FILE = "ip-adapter_sd15.safetensors"
IPADAPTER_CLIP_VISION = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
IPADAPTER_PROMPT = "a woman walking through a city park in autumn, falling leaves, cinematic lighting, masterpiece"


def ipadapter_long_video(steps=4, frames=64):
    """64 frames in context windows of 16 (overlap 4) that all follow one reference image (input/reference.png)
    through IPAdapter_plus (IPAdapter Advanced with the SD1.5 IPAdapter and its ViT-H image encoder).

    Needs ComfyUI_IPAdapter_plus installed beside this package (docs/packs.md). The IPAdapter patches the model
    before the context options, so every window sees the reference, as with AnimateDiff-Evolved.
    """
    options = {"context_length": 16, "context_overlap": 4, "schedule": "standard_uniform", "fuse_method": "pyramid",
               "windows_per_batch": 1, "freenoise": False, "closed_loop": False}
    ipadapter = {"weight": 0.8, "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
                 "embeds_scaling": "V only"}
    return [
        *motion_model(steps),
        (4, "IPAdapterModelLoader", {"ipadapter_file": IPADAPTER_FILE}, [("IPADAPTER", "IPADAPTER")],
         ["ipadapter_file"]),
        (5, "CLIPVisionLoader", {"clip_name": IPADAPTER_CLIP_VISION}, [("CLIP_VISION", "CLIP_VISION")], ["clip_name"]),
        (6, "LoadImage", {"image": "reference.png"}, [("IMAGE", "IMAGE"), ("MASK", "MASK")], ["image"]),
        (7, "IPAdapterAdvanced", {"model": (3, 0), "ipadapter": (4, 0), "image": (6, 0), **ipadapter,
                                  "clip_vision": (5, 0)},
         [("MODEL", "MODEL")], list(ipadapter)),
        (8, "ADL_ContextOptions", {"model": (7, 0), **options}, [("MODEL", "MODEL")], list(options)),
        (9, "CLIPTextEncode", {"text": IPADAPTER_PROMPT, "clip": (1, 1)}, [("CONDITIONING", "CONDITIONING")], ["text"]),
        empty_latent(10, frames),
        sampler(11, (8, 0), (9, 0), (10, 0)),
        (12, "ADL_VAEDecodeChunked", {"samples": (11, 0), "vae": (1, 2), "frames_per_chunk": 16},
         [("IMAGE", "IMAGE")], ["frames_per_chunk"]),
        *save_video(13, (12, 0), f"AnimateDiff-Lightning/t2v_ipadapter_long_{steps}step"),
    ]


def is_link(value):
    return isinstance(value, tuple)


def to_api(graph):
    """API format: {id: {class_type, inputs}} with links as [source id, slot]."""
    return {str(nid): {"class_type": cls, "inputs": {k: [str(v[0]), v[1]] if is_link(v) else v for k, v in inputs.items()},
                       "_meta": {"title": cls}}
            for nid, cls, inputs, _, _ in graph}


# UI layout: data flows left to right. Sizes are generous on purpose: the frontend only ever grows a node to
# fit its slots and widgets (optional inputs included), so with these it keeps them and nodes never overlap.
TITLE_HEIGHT = 30  # litegraph draws the title above a node's `pos`
SLOT_HEIGHT = 22
WIDGET_HEIGHT = 26
TEXT_LINE_HEIGHT = 16  # in a multi-line prompt box
TEXT_BOX_CHARS = 40  # characters per line in it
PREVIEW_HEIGHT = 220  # room for the preview of an image or video file
MEDIA_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".webm", ".mov", ".mkv", ".avi")
NODE_WIDTH = 330
WIDGET_CHAR_WIDTH = 7  # a node is widened until a file name or other one-line value fits beside its label
WIDGET_LABEL_WIDTH = 130
COLUMN_GAP = 100  # room for the links between columns
ROW_GAP = 40
ORDERING_SWEEPS = 4


def links_of(graph):
    """(source id, source slot, target id, target input index) of every link."""
    found = []
    for nid, _, inputs, _, _ in graph:
        linked = [v for v in inputs.values() if is_link(v)]
        found += [(src, slot, nid, index) for index, (src, slot) in enumerate(linked)]
    return found


def is_text_box(name, value):
    """A multi-line prompt box, by its widget's name or its text (the graph does not say which widgets are)."""
    return isinstance(value, str) and (name.endswith(("text", "prompt")) or "\n" in value or len(value) > 48)


def text_box_height(value):
    """Its lines as the box wraps them, plus a few spare ones."""
    wrapped = sum(-(-len(line) // TEXT_BOX_CHARS) or 1 for line in value.split("\n"))
    return TEXT_LINE_HEIGHT * (wrapped + 3)


def is_media_file(value):
    """A file picked from input/: the frontend adds an upload button and a preview."""
    return isinstance(value, str) and value.lower().endswith(MEDIA_SUFFIXES)


def node_size(inputs, outputs, widgets):
    """[width, height] of a node's body: one row per slot (a spare one for optional inputs), then the widgets."""
    slots = max(sum(map(is_link, inputs.values())) + 1, len(outputs))
    values = {name: inputs[name] for name in widgets}
    # seed has a "control after generate" row, a file an upload button
    widget_rows = len(values) + ("seed" in widgets) + sum(map(is_media_file, values.values()))
    extra = sum(text_box_height(value) for name, value in values.items() if is_text_box(name, value))
    extra += PREVIEW_HEIGHT * sum(map(is_media_file, values.values()))
    one_line = [len(value) for name, value in values.items() if isinstance(value, str) and not is_text_box(name, value)]
    width = max([NODE_WIDTH] + [WIDGET_LABEL_WIDTH + WIDGET_CHAR_WIDTH * chars for chars in one_line])
    return [width, SLOT_HEIGHT * slots + WIDGET_HEIGHT * widget_rows + extra + 10]


def columns(graph, links):
    """Column of each node: the longest path from a source; a node without inputs sits just before its first user."""
    sources = {nid: [src for src, _, dst, _ in links if dst == nid] for nid, *_ in graph}
    column = {}

    def depth(nid):
        if nid not in column:
            column[nid] = max((depth(src) + 1 for src in sources[nid]), default=0)
        return column[nid]

    for nid in sources:
        depth(nid)
    for nid in sources:
        consumers = [column[dst] for src, _, dst, _ in links if src == nid]
        if consumers and not sources[nid]:
            column[nid] = min(consumers) - 1
    return column


def lane(src, slot, column):
    """Where the links from one output slot pass through a column they skip (a row kept free of nodes)."""
    return ("lane", src, slot, column)


def is_lane(item):
    return isinstance(item, tuple)


def column_edges(links, column):
    """Links cut into edges between adjacent columns: (item, slot, item, input index), items being nodes or lanes."""
    edges = {}
    for src, slot, dst, index in links:
        here, here_slot = src, slot
        for c in range(column[src] + 1, column[dst]):
            edges[(here, here_slot, lane(src, slot, c), 0)] = None
            here, here_slot = lane(src, slot, c), 0
        edges[(here, here_slot, dst, index)] = None
    return list(edges)


def edge_crossings(edges, pos, size):
    """How many pairs of edges (as straight lines from output slot to input slot) cross."""
    def ends(edge):
        src, slot, dst, index = edge
        return ((pos[src][0] + size[src][0], pos[src][1] + SLOT_HEIGHT * (slot + 0.5)),
                (pos[dst][0], pos[dst][1] + SLOT_HEIGHT * (index + 0.5)))

    def side(a, b, c):
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    segments = [ends(edge) for edge in edges]
    crossings = 0
    for i, (a, b) in enumerate(segments):
        for c, d in segments[i + 1:]:
            if side(a, b, c) * side(a, b, d) < 0 and side(c, d, a) * side(c, d, b) < 0:
                crossings += 1
    return crossings


def place(cols, edges, size):
    """Top-left corner of each node and lane: columns side by side, each level with its inputs where there is room."""
    pos, x = {}, 60
    for col in cols:
        floor = 80
        for item in col:
            head = 0 if is_lane(item) else TITLE_HEIGHT
            wanted = [pos[src][1] + SLOT_HEIGHT * (slot - index) for src, slot, dst, index in edges
                      if dst == item and src in pos]
            y = max(sum(wanted) / len(wanted) if wanted else 0, floor + head)
            pos[item] = [x, round(y)]
            floor = y + size[item][1] + ROW_GAP
        x += max(size[item][0] for item in col) + COLUMN_GAP
    return pos


def order_rows(cols, edges, size):
    """Reorders each column's items (in place) to cut link crossings: barycenter sweeps, then neighbour swaps."""
    items = [item for col in cols for item in col]
    # Where each neighbour would put an item's top: level with the port it links to.
    from_inputs = {item: [(src, slot - index) for src, slot, dst, index in edges if dst == item] for item in items}
    from_consumers = {item: [(dst, index - slot) for src, slot, dst, index in edges if src == item] for item in items}

    def sweep(order, towards, fallback):
        """Sorts columns one by one by the mean height their neighbours on one side want."""
        for c in order:
            pos = place(cols, edges, size)

            def wanted_top(item):
                ports = towards[item] or fallback[item]
                return sum(pos[n][1] + SLOT_HEIGHT * rows for n, rows in ports) / len(ports) if ports else pos[item][1]

            cols[c].sort(key=wanted_top)

    def score(cand):
        """Fewest crossings first, then the shortest links up and down."""
        pos = place(cand, edges, size)
        return edge_crossings(edges, pos, size), sum(abs(pos[a][1] + SLOT_HEIGHT * (slot - index) - pos[b][1])
                                                     for a, slot, b, index in edges)

    candidates = []
    for _ in range(ORDERING_SWEEPS):
        sweep(range(1, len(cols)), from_inputs, from_consumers)
        candidates.append([list(col) for col in cols])
        sweep(range(len(cols) - 2, -1, -1), from_consumers, from_inputs)
        candidates.append([list(col) for col in cols])
    cols[:] = min(candidates, key=score)
    best, improved = score(cols), True
    while improved:  # the "transpose" heuristic: swap neighbours in a column while that helps
        improved = False
        for col in cols:
            for i in range(len(col) - 1):
                col[i], col[i + 1] = col[i + 1], col[i]
                if score(cols) < best:
                    best, improved = score(cols), True
                else:
                    col[i], col[i + 1] = col[i + 1], col[i]


def layout(graph):
    """Positions and sizes of nodes and lanes: columns by data-flow depth, rows ordered to cut link crossings."""
    links = links_of(graph)
    column = columns(graph, links)
    edges = column_edges(links, column)
    size = {nid: node_size(inputs, outs, widgets) for nid, _, inputs, outs, widgets in graph}
    cols = [[nid for nid, *_ in graph if column[nid] == c] for c in range(max(column.values()) + 1)]
    for item in dict.fromkeys(e[2] for e in edges if is_lane(e[2])):
        cols[item[3]].append(item)
    for col in cols:
        width = max(size[item][0] for item in col if not is_lane(item))
        size.update({item: [width, SLOT_HEIGHT] for item in col if is_lane(item)})
    order_rows(cols, edges, size)
    return place(cols, edges, size), size


def reroutes(links, pos, size):
    """Native reroutes carrying each long link along its lanes: where a lane enters or leaves a column, unless the
    link runs straight on there. Returns them and, per link id, the reroute next to the target (its parentId)."""
    found, last_of_link = {}, {}
    for link_id, src, slot, dst, _, _ in links:
        passed = sorted((item for item in pos if is_lane(item) and item[1:3] == (src, slot)
                         and pos[item][0] < pos[dst][0]), key=lambda item: item[3])
        points = [(item, end_x, pos[item][1] + SLOT_HEIGHT // 2)
                  for item in passed for end_x in (pos[item][0], pos[item][0] + size[item][0])]
        bends = [p for i, p in enumerate(points)
                 if i in (0, len(points) - 1) or not points[i - 1][2] == p[2] == points[i + 1][2]]
        parent = None
        for item, x, y in bends:
            if (item, x) not in found:
                found[(item, x)] = {"id": len(found) + 1, "pos": [x, y], "linkIds": []}
                if parent is not None:
                    found[(item, x)]["parentId"] = parent
            found[(item, x)]["linkIds"].append(link_id)
            parent = found[(item, x)]["id"]
        if parent is not None:
            last_of_link[link_id] = parent
    return list(found.values()), last_of_link


def to_ui(graph):
    """UI (litegraph) format, laid out left to right in the order the data flows."""
    outputs_of = {nid: outs for nid, _, _, outs, _ in graph}
    pos, size = layout(graph)
    by_place = sorted((item for item in pos if not is_lane(item)), key=lambda nid: (pos[nid][0], pos[nid][1]))
    execution_order = {nid: i for i, nid in enumerate(by_place)}
    links, nodes = [], []
    for nid, cls, inputs, outs, widgets in graph:
        node_inputs = []
        for name, value in inputs.items():
            if is_link(value):
                src, slot = value
                links.append([len(links) + 1, src, slot, nid, len(node_inputs), outputs_of[src][slot][1]])
                node_input = {"name": name, "type": outputs_of[src][slot][1], "link": len(links)}
                if name in widgets:  # a widget converted to an input
                    node_input["widget"] = {"name": name}
                node_inputs.append(node_input)
        values = []
        for name in widgets:
            values.append(inputs[name].value if is_link(inputs[name]) else inputs[name])
            if name == "seed":
                values.append("randomize")  # a new video each time the graph is queued
        nodes.append({"id": nid, "type": cls, "pos": pos[nid], "size": size[nid], "flags": {},
                      "order": execution_order[nid], "mode": 0,
                      "inputs": node_inputs, "outputs": [], "properties": {"Node name for S&R": cls},
                      "widgets_values": values})
    by_id = {n["id"]: n for n in nodes}
    for nid, _, _, outs, _ in graph:
        by_id[nid]["outputs"] = [{"name": name, "type": typ, "slot_index": slot,
                                  "links": [l[0] for l in links if l[1] == nid and l[2] == slot]}
                                 for slot, (name, typ) in enumerate(outs)]
    rerouted, last_reroute = reroutes(links, pos, size)
    extra = {"reroutes": rerouted,
             "linkExtensions": [{"id": link, "parentId": parent} for link, parent in last_reroute.items()]}
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": extra if rerouted else {}, "version": 0.4}


def graphs():
    """Every shipped workflow: file name -> graph."""
    named = {f"animatediff_lightning_{steps}step_t2v.json": text_to_video(steps) for steps in (1, 2, 4, 8)}
    named.update({f"animatediff_lightning_4step_v2v_{control}.json": video_to_video(control)
                  for control in V2V_CONTROLNETS})
    named.update({f"animatediff_lightning_4step_t2v_{kind}.json": long_video(kind) for kind in ("travel", "long", "loop")})
    named["animatediff_lightning_4step_t2v_ipadapter_long.json"] = ipadapter_long_video()
    named["animatediff_lightning_4step_v2v_long.json"] = long_video_to_video()
    return named


def main():
    for name, graph in graphs().items():
        (ROOT / "workflows" / name).write_text(json.dumps(to_ui(graph), indent=2) + "\n")
        (ROOT / "workflows" / "api" / name).write_text(json.dumps(to_api(graph), indent=2) + "\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
