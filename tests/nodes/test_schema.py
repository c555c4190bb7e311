"""What the server tells the frontend about our nodes: one prefix, one category, a tooltip on every input."""

from host import PACKAGE_DIR_NAME

PREFIX, CATEGORY = "ADL_", "AnimateDiff-Lightning"
NODE_IDS = {"ADL_LoadMotionModule", "ADL_MotionLoraLoader", "ADL_ApplyMotionModule", "ADL_LightningScheduler",
            "ADL_LightningSampler", "ADL_LightningKSampler",
            "ADL_ContextOptions", "ADL_ViewOptions", "ADL_PromptSchedule",
            "ADL_VAEDecodeChunked", "ADL_VAEEncodeChunked",
            "ADL_LoadVideo", "ADL_LoadVideoLatent", "ADL_SaveVideo",
            "ADL_CannyPreprocessor", "ADL_SoftEdgePreprocessor", "ADL_GrayscalePreprocessor", "ADL_TilePreprocessor"}


def test_every_node_is_registered_under_one_prefix_and_category(comfy):
    info = comfy.object_info()
    ours = {name: node for name, node in info.items() if PACKAGE_DIR_NAME in node.get("python_module", "")}
    assert set(ours) == NODE_IDS
    for name, node in ours.items():
        assert name.startswith(PREFIX), name
        assert node["category"] == CATEGORY, (name, node["category"])
        assert node["description"], f"{name} has no description"


def test_every_input_has_a_tooltip_and_every_number_a_default(comfy):
    info = comfy.object_info()
    for name in NODE_IDS:
        node = info[name]
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
                if spec[0] in ("INT", "FLOAT"):
                    assert "default" in options, f"{name}.{input_name} has no default"
