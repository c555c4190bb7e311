"""What the server tells the frontend about our nodes: one prefix, a subcategory per job, display names no
search can confuse with another pack's, a tooltip on every input."""

from host import PACKAGE_DIR_NAME

PREFIX, PACK = "ADL_", "AnimateDiff-Lightning"
SUFFIX = f" ({PACK})"
CATEGORIES = {  # node id -> (menu category, display name): what the README and the workflows engineer refer to
    "ADL_LoadMotionModule": ("motion module", "Load Motion Module"),
    "ADL_MotionLoraLoader": ("motion module", "Load Motion LoRA"),
    "ADL_ApplyMotionModule": ("motion module", "Apply Motion Module"),
    "ADL_LightningScheduler": ("sampling", "Lightning Scheduler"),
    "ADL_LightningSampler": ("sampling", "Lightning Euler"),
    "ADL_LightningKSampler": ("sampling", "Lightning KSampler"),
    "ADL_ContextOptions": ("long video", "Context Windows"),
    "ADL_ViewOptions": ("long video", "View Options"),
    "ADL_PromptSchedule": ("long video", "Prompt Travel Schedule"),
    "ADL_VAEDecodeChunked": ("video", "VAE Decode Video in Chunks"),
    "ADL_VAEEncodeChunked": ("video", "VAE Encode Video in Chunks"),
    "ADL_LoadVideo": ("video", "Load Video File"),
    "ADL_LoadVideoLatent": ("video", "Load Video File to Latent"),
    "ADL_SaveVideo": ("video", "Save Video MP4/WEBP/GIF"),
    "ADL_CannyPreprocessor": ("control", "Canny Edge Map"),
    "ADL_SoftEdgePreprocessor": ("control", "Soft Edge Map (Sobel)"),
    "ADL_GrayscalePreprocessor": ("control", "Grayscale / Threshold Map"),
    "ADL_TilePreprocessor": ("control", "Tile Blur Map"),
}
# Display names of the same jobs in the packs our users also run (AnimateDiff-Evolved, VideoHelperSuite,
# comfyui_controlnet_aux), without their emoji badges: ours must differ from each even without our suffix.
PEER_NAMES = {"Load AnimateDiff Model", "Apply AnimateDiff Model", "Load AnimateDiff LoRA", "Context Options",
              "Prompt Scheduling", "Load Video (Upload)", "Load Video (Path)", "Video Combine", "VAE Decode Batched",
              "VAE Encode Batched", "Canny Edge", "HED Soft-Edge Lines", "Tile", "Binary Lines"}


def ours(info):
    return {name: node for name, node in info.items() if PACKAGE_DIR_NAME in node.get("python_module", "")}


def test_every_node_is_registered_under_one_prefix_in_its_subcategory(comfy):
    nodes = ours(comfy.object_info())
    assert set(nodes) == set(CATEGORIES)
    for name, node in nodes.items():
        assert name.startswith(PREFIX), name
        assert (node["category"], node["display_name"]) == (f"{PACK}/{CATEGORIES[name][0]}",
                                                            CATEGORIES[name][1] + SUFFIX), name
        assert node["description"], f"{name} has no description"


def test_no_display_name_can_be_confused_with_a_stock_or_peer_node(comfy):
    info = comfy.object_info()
    others = {(node["display_name"] or name).lower() for name, node in info.items() if name not in CATEGORIES}
    others |= {name.lower() for name in info if name not in CATEGORIES} | {n.lower() for n in PEER_NAMES}
    mine = [node["display_name"] for node in ours(info).values()]
    assert len(set(mine)) == len(mine)
    for display in mine:
        assert display.lower() not in others and display[:-len(SUFFIX)].lower() not in others, display


def test_every_input_has_a_tooltip_and_every_number_a_default(comfy):
    info = comfy.object_info()
    for name in CATEGORIES:
        node = info[name]
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
                if spec[0] in ("INT", "FLOAT"):
                    assert "default" in options, f"{name}.{input_name} has no default"
