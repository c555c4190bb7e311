"""Nodes that load a motion module, chain motion LoRAs and put the module on a MODEL."""

from dataclasses import dataclass

import folder_paths
from comfy_api.latest import io

from ..lightning_core import formats
from . import host, menu

MOTION_FOLDER = "animatediff_models"
LORA_FOLDER = "animatediff_motion_lora"

MotionModuleType = io.Custom("ADL_MOTION_MODULE")
MotionLoraType = io.Custom("ADL_MOTION_LORA")


@dataclass(frozen=True)
class LoadedMotionModule:
    """A motion module read from disk, in canonical naming, with what its file says about itself."""

    name: str
    state_dict: dict
    info: formats.MotionModuleInfo


def _file_error(error):
    """Turns a format error into the ValueError ComfyUI shows the user, without a traceback of ours."""
    return ValueError(str(error))


class LoadMotionModule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_LoadMotionModule",
            display_name=menu.title("Load Motion Module"),
            category=menu.MOTION_MODULE,
            description="Loads an AnimateDiff-Lightning (1/2/4/8-step), AnimateDiff v1/v2/v3 or AnimateLCM motion module.",
            inputs=[io.Combo.Input("model_name", options=folder_paths.get_filename_list(MOTION_FOLDER),
                                   tooltip="A file in models/animatediff_models, e.g. "
                                           "animatediff_lightning_4step_comfyui.safetensors. "
                                           "The layout is recognised by its keys; the step count of a Lightning file by its name.")],
            outputs=[MotionModuleType.Output(display_name="MOTION_MODULE")],
        )

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(MOTION_FOLDER, model_name)
        try:
            state_dict, info = formats.load_motion_module(path)
        except formats.MotionFormatError as e:
            raise _file_error(e) from None
        return io.NodeOutput(LoadedMotionModule(model_name, state_dict, info))


class MotionLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_MotionLoraLoader",
            display_name=menu.title("Load Motion LoRA"),
            category=menu.MOTION_MODULE,
            description="Adds a motion LoRA (e.g. the AnimateDiff v2 camera LoRAs) to a chain applied with the motion module.",
            inputs=[
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list(LORA_FOLDER),
                               tooltip="A file in models/animatediff_motion_lora (v2 LoRAs fit Lightning modules)."),
                io.Float.Input("strength", default=0.75, min=-10.0, max=10.0, step=0.01,
                               tooltip="LoRA weight; 0.7-0.8 is recommended with Lightning to avoid watermarks."),
                MotionLoraType.Input("prev_motion_lora", optional=True, tooltip="Another LoRA chain to extend."),
            ],
            outputs=[MotionLoraType.Output(display_name="MOTION_LORA")],
        )

    @classmethod
    def execute(cls, lora_name, strength, prev_motion_lora=None) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(LORA_FOLDER, lora_name)
        return io.NodeOutput(tuple(prev_motion_lora or ()) + ((path, strength),))


def merge_motion_loras(state_dict, loras):
    """Returns the state dict with each (path, strength) LoRA merged in, in chain order."""
    for path, strength in loras:
        try:
            state_dict = formats.apply_motion_lora(state_dict, formats.load_motion_lora(path), strength, path)
        except formats.MotionFormatError as e:
            raise _file_error(e) from None
    return state_dict


BETA_SCHEDULE_OPTIONS = ["auto", *host.BETA_SCHEDULES]


def resolve_beta_schedule(choice, family):
    """`auto`: AnimateLCM's own `lcm` schedule for AnimateLCM files, AnimateDiff's for Lightning and v1/v2/v3."""
    if choice != "auto":
        return choice
    return "lcm" if family == "animatelcm" else "animatediff"


class ApplyMotionModule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_ApplyMotionModule",
            display_name=menu.title("Apply Motion Module"),
            category=menu.MOTION_MODULE,
            description="Returns a copy of the model with the motion module inserted and the file's noise schedule "
                        "set (AnimateDiff's; AnimateLCM's for AnimateLCM files); the input model is left untouched. "
                        "Each latent in the batch is one frame.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5-family checkpoint."),
                MotionModuleType.Input("motion_module", tooltip="From Load Motion Module (AnimateDiff-Lightning)."),
                MotionLoraType.Input("motion_lora", optional=True, tooltip="Motion LoRAs to merge into the module."),
                io.Float.Input("effect", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="How much of each motion layer's output is added: 1 as trained, 0 no motion."),
                io.Float.Input("motion_scale", default=1.0, min=0.5, max=1.5, step=0.01,
                               tooltip="Multiplies the temporal attention logits: above 1 livelier, below 1 calmer."),
                io.Combo.Input("beta_schedule", options=BETA_SCHEDULE_OPTIONS, default="auto", optional=True,
                               tooltip="The noise schedule set on the model. auto: AnimateLCM files get AnimateLCM's "
                                       "own (`lcm`, as AnimateDiff-Evolved's autoselect; sample with the KSampler's "
                                       "lcm sampler and sgm_uniform), every other file AnimateDiff's (sqrt_linear)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, motion_module, effect, motion_scale, motion_lora=None,
                beta_schedule="auto") -> io.NodeOutput:
        state_dict = merge_motion_loras(motion_module.state_dict, motion_lora or ())
        motion_set = host.build_motion_set(model, state_dict)
        schedule = resolve_beta_schedule(beta_schedule, motion_module.info.family)
        host.log.info("%s: %s noise schedule", motion_module.name, schedule)
        settings = {"name": motion_module.name, "lightning_steps": motion_module.info.lightning_steps,
                    "position_encoding_length": motion_module.info.position_encoding_length,
                    "effect": effect, "motion_scale": motion_scale, "beta_schedule": schedule}
        return io.NodeOutput(host.inject_motion_module(model, motion_set, settings))


NODES = [LoadMotionModule, MotionLoraLoader, ApplyMotionModule]
