"""The one module that touches ComfyUI's extension points, so a ComfyUI upgrade touches one file.

A motion module goes into a cloned MODEL as object patches: each UNet block that AnimateDiff extends is
replaced, on the clone only, by a copy of that block with the temporal layer inserted at the original's
position. The copy keeps the block's own child names ("0", "1", ...), so weight patches (LoRAs,
ControlNets) still find their keys, and ComfyUI restores the original blocks whenever it unpatches
the clone. `forward_timestep_embed_patch` tells the UNet how to call the inserted layers.
"""

import logging
from collections import OrderedDict

import comfy.model_sampling
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, Upsample

from ..lightning_core import schedule
from ..lightning_core.motion_module import MotionModule

KEY = "animatediff_lightning"  # our one namespace in transformer_options and attachments
MOTION_CHILD = "motion_module"

log = logging.getLogger(KEY)


class AnimateDiffModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """Epsilon prediction on the AnimateDiff schedule ('sqrt_linear' in ComfyUI's names)."""

    def __init__(self):
        super().__init__()
        self.set_sigmas(schedule.get_training_sigmas())


def _num_frames(x, transformer_options):
    """Frames per video in this UNet batch: ComfyUI stacks one full video per cond/uncond chunk."""
    frames = transformer_options.get(KEY, {}).get("num_frames")
    return frames or x.shape[0] // max(1, len(transformer_options.get("cond_or_uncond", [0])))


def _forward_motion(layer, x, emb, context, transformer_options, *unused):
    settings = transformer_options.get(KEY, {})
    return layer(x, _num_frames(x, transformer_options), settings.get("effect", 1.0), settings.get("motion_scale", 1.0))


def _with_motion(block, motion, position):
    """Returns a copy of a TimestepEmbedSequential with `motion` inserted before child `position`."""
    children = [(name, child) for name, child in block._modules.items() if name != MOTION_CHILD]
    children.insert(position, (MOTION_CHILD, motion))
    return TimestepEmbedSequential(OrderedDict(children))


def _before_upsample(block):
    """Index where the temporal layer goes: after the ResBlock and attention, before any Upsample."""
    names = [n for n, c in block._modules.items() if n != MOTION_CHILD]
    return next((i for i, n in enumerate(names) if isinstance(block._modules[n], Upsample)), len(names))


def motion_placements(unet, motion_set):
    """Maps each UNet block path to (insert position, motion module), checking the UNet fits the set."""
    cfg = motion_set.config
    levels, res_blocks = len(unet.channel_mult), unet.num_res_blocks
    unet_channels = tuple(unet.model_channels * m for m in unet.channel_mult)
    if (unet_channels != tuple(cfg.block_channels) or set(res_blocks) != {cfg.down_layers}
            or cfg.up_layers != cfg.down_layers + 1):
        raise ValueError(
            f"this motion module fits a UNet with block channels {tuple(cfg.block_channels)} and "
            f"{cfg.down_layers} layers per block (SD1.5 family); the model has {unet_channels} and "
            f"{sorted(set(res_blocks))} (SDXL and other families are not supported)")
    stride = cfg.down_layers + 1
    placements = {}
    for i in range(levels):
        for j, motion in enumerate(motion_set.down_blocks[i].motion_modules):
            placements[f"diffusion_model.input_blocks.{1 + i * stride + j}"] = (None, motion)
        for j, motion in enumerate(motion_set.up_blocks[i].motion_modules):
            placements[f"diffusion_model.output_blocks.{i * stride + j}"] = ("upsample", motion)
    if motion_set.mid_block is not None:
        placements["diffusion_model.middle_block"] = (2, motion_set.mid_block.motion_modules[0])
    return placements


def inject_motion_module(model, motion_set, settings):
    """Puts the motion modules into a clone of `model` via object patches; returns the clone."""
    model = model.clone()
    unet = model.get_model_object("diffusion_model")
    for path, (position, motion) in motion_placements(unet, motion_set).items():
        block = model.get_model_object(path)
        if position is None:
            position = len([n for n in block._modules if n != MOTION_CHILD])
        elif position == "upsample":
            position = _before_upsample(block)
        model.add_object_patch(path, _with_motion(block, motion, position))
    patches = model.model_options["transformer_options"].get("patches", {})
    if not any(cls is MotionModule for cls, _ in patches.get("forward_timestep_embed_patch", [])):
        model.set_model_forward_timestep_embed_patch((MotionModule, _forward_motion))
    model.add_object_patch("model_sampling", AnimateDiffModelSampling())
    model.model_options["transformer_options"][KEY] = dict(settings)
    return model


def motion_settings(model):
    """Returns what the apply node recorded on this MODEL (name, steps, ...), or {} for a plain model."""
    return model.model_options.get("transformer_options", {}).get(KEY, {})


def unet_dtype(model):
    """The dtype the UNet computes in, which the motion module must match."""
    return model.model.get_dtype() if model.model.manual_cast_dtype is None else model.model.manual_cast_dtype
