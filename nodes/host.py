"""The one module that touches ComfyUI's extension points, so a ComfyUI upgrade touches one file.

A motion module goes into a cloned MODEL as object patches: each UNet block that AnimateDiff extends is
replaced, on the clone only, by a copy of that block with the temporal layer inserted at the original's
position. The copy keeps the block's own child names ("0", "1", ...), so weight patches (LoRAs,
ControlNets) still find their keys, and ComfyUI restores the original blocks whenever it unpatches
the clone. `forward_timestep_embed_patch` tells the UNet how to call the inserted layers.
"""

import functools
import logging
from collections import OrderedDict
from contextlib import contextmanager

import comfy.context_windows
import comfy.model_management
import comfy.model_sampling
import comfy.ops
import comfy.patcher_extension
import comfy.utils
import comfy_extras.nodes_model_advanced
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, Upsample

from ..lightning_core import context, schedule
from ..lightning_core.motion_module import MotionModule, MotionModuleSet, temporal_attention_bytes

KEY = "animatediff_lightning"  # our one namespace in transformer_options and attachments
MOTION_CHILD = "motion_module"

log = logging.getLogger(KEY)


class AnimateDiffModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """Epsilon prediction on the AnimateDiff schedule ('sqrt_linear' in ComfyUI's names)."""

    def __init__(self):
        super().__init__()
        self.set_sigmas(schedule.get_training_sigmas())


class _SDLinearBetas:
    """The model config AnimateDiff-Evolved hands ComfyUI for its `lcm` schedule: SD's betas, ComfyUI's "linear"
    (linear in sqrt(beta) from 0.00085 to 0.012), which AnimateLCM was distilled on."""

    sampling_settings = {"beta_schedule": "linear"}


class AnimateLCMModelSampling(comfy_extras.nodes_model_advanced.ModelSamplingDiscreteDistilled,
                              comfy_extras.nodes_model_advanced.LCM):
    """AnimateLCM's schedule as AnimateDiff-Evolved applies it (`lcm`): ComfyUI's own LCM sampling, i.e. 50 distilled
    timesteps of SD's schedule and LCM's boundary-condition denoiser (what the stock ModelSamplingDiscrete `lcm`
    node sets on an SD1.5 model)."""

    def __init__(self):
        super().__init__(_SDLinearBetas())


BETA_SCHEDULES = {"animatediff": AnimateDiffModelSampling, "lcm": AnimateLCMModelSampling}


def is_lcm_sampling(model):
    """Whether the MODEL samples with LCM's denoiser (our AnimateLCM schedule or the stock `lcm` patch)."""
    return isinstance(model.get_model_object("model_sampling"), comfy_extras.nodes_model_advanced.LCM)


def _num_frames(x, transformer_options):
    """Frames per video in this UNet batch: ComfyUI stacks one full video per cond/uncond chunk."""
    frames = transformer_options.get(KEY, {}).get("num_frames")
    return frames or x.shape[0] // max(1, len(transformer_options.get("cond_or_uncond", [0])))


def _forward_motion(layer, x, emb, context, transformer_options, *unused):
    settings = transformer_options.get(KEY, {})
    frames = _num_frames(x, transformer_options)
    return layer(x, frames, settings.get("effect", 1.0), settings.get("motion_scale", 1.0),
                 _views(settings.get("views"), frames, transformer_options))


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
    channels = tuple(unet.model_channels * m for m in unet.channel_mult)
    position = {"input": None, "middle": 2, "output": "upsample"}  # after the layers / after the attention / before Upsample
    return {f"diffusion_model.{name}": (position[name.split("_")[0]], motion)
            for name, motion in motion_set.layout(channels, unet.num_res_blocks).items()}


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
    model.add_object_patch("model_sampling", BETA_SCHEDULES[settings.get("beta_schedule", "animatediff")]())
    _patch_memory_required(model, motion_set)
    # The clone inherits the size measured before the object patches existed; the host decides how much of
    # the model fits the GPU from this number, so it must count the motion weights too (once, if re-applied).
    motion_bytes = comfy.model_management.module_size(motion_set)
    model.size = model.model_size() - motion_settings(model).get("motion_bytes", 0) + motion_bytes
    model.model_options["transformer_options"][KEY] = dict(settings, motion_bytes=motion_bytes)
    return model


class MotionMemoryRequired:
    """`memory_required` of a UNet with temporal layers: the host's estimate plus their attention scores.

    Installed as an object patch, so the host's per-step batching (`calc_cond_batch`) sees it while the clone
    is patched; it is removed with the other object patches.
    """

    def __init__(self, base, num_heads, max_frames, dtype, view_factor=1.0):
        self.base, self.num_heads, self.max_frames, self.dtype = base, num_heads, max_frames, dtype
        self.view_factor = view_factor  # views hold each overlapped frame once per view: frames in views / frames

    def __call__(self, input_shape, cond_shapes={}):
        batch, _, height, width = input_shape[:4]
        temporal = temporal_attention_bytes(batch, height, width, self.max_frames, self.num_heads,
                                            comfy.model_management.dtype_size(self.dtype))
        return self.base(input_shape, cond_shapes=cond_shapes) + int(temporal * self.view_factor)


def _patch_memory_required(model, motion_set):
    base = model.get_model_object("memory_required")
    base = base.base if isinstance(base, MotionMemoryRequired) else base
    cfg = motion_set.config
    model.add_object_patch("memory_required", MotionMemoryRequired(
        base, cfg.num_heads, cfg.position_encoding_length or 32, unet_dtype(model)))


def motion_settings(model):
    """Returns what the apply node recorded on this MODEL (name, steps, ...), or {} for a plain model."""
    return model.model_options.get("transformer_options", {}).get(KEY, {})


def unet_dtype(model):
    """The dtype the UNet computes in, which the motion module must match."""
    return model.model.get_dtype() if model.model.manual_cast_dtype is None else model.model.manual_cast_dtype


def unet_operations(model):
    """The `comfy.ops` namespace the UNet was built with, for the motion layers to store and cast weights alike.

    Mirrors `comfy.model_base.BaseModel.__init__`. Scaled-fp8 files carry per-layer scales that a motion
    file has not, so their motion layers take plain manual casting from the same weight dtype.
    """
    config = model.model.model_config
    if config.custom_operations is not None:
        return config.custom_operations
    return comfy.ops.pick_operations(model.model.get_dtype(), model.model.manual_cast_dtype,
                                     load_device=model.load_device,
                                     fp8_optimizations=config.optimizations.get("fp8", False))


def build_motion_set(model, state_dict):
    """Builds a motion-module set stored like the UNet's weights (dtype and operations)."""
    return MotionModuleSet.from_state_dict(state_dict, dtype=model.model.get_dtype(), operations=unet_operations(model))


# ----------------------------------------------------------------------------- context windows
# Videos longer than the motion module's window go through the host's own handler (comfy/context_windows.py),
# subclassed where AnimateDiff's frame batches (dim 0) need more than it does.

class StackedWindows(comfy.context_windows.IndexListContextWindow):
    """Windows of equal length evaluated in one model call: their frames one window after another on dim 0."""

    def __init__(self, windows, first_index):
        super().__init__([i for window in windows for i in window], dim=0)
        self.windows = [comfy.context_windows.IndexListContextWindow(window, dim=0) for window in windows]
        self.first_index = first_index  # of windows[0] among the step's windows
        self.context_length = len(windows[0])


class LightningContextHandler(comfy.context_windows.IndexListContextHandler):
    """The host's context windows for frame batches, with up to `windows_per_batch` windows per model call.

    Added to the host's handler: one sigma per step (`set_step`), per-frame conds and ControlNet/T2I hints
    cut to each window's frames, the motion module told the window length, progress and interrupt between
    model calls. `windows_per_batch` 0 stacks as many windows as the free memory allows.

    Each model call also publishes `transformer_options["ad_params"]` as AnimateDiff-Evolved does, so that
    IPAdapter_plus and Advanced-ControlNet cut their per-frame inputs to the call's frames (`_ad_params`).
    Advanced-ControlNet's latent keyframes and SparseCtrl read `sub_idxs` as one window, so conds that hold
    them are evaluated one window per call (`_needs_one_window_per_call`); the result is the same.
    """

    def __init__(self, schedule_name, fuse_method, context_length, context_overlap, closed_loop=False,
                 windows_per_batch=1, freenoise=False):
        super().__init__(comfy.context_windows.get_matching_context_schedule(schedule_name),
                         comfy.context_windows.get_matching_fuse_method(fuse_method),
                         context_length=context_length, context_overlap=context_overlap, closed_loop=closed_loop,
                         dim=0)
        self.windows_per_batch = windows_per_batch
        self.freenoise = freenoise
        self._chunks = 1  # conds evaluated per step (cond, uncond): sizes the memory-budget batching
        self._calls = 1  # model calls in the current step: sizes the progress bar
        self._one_window_per_call = False  # set per step by execute(): a control reads sub_idxs as one window

    def should_use_context(self, model, conds, x_in, timestep, model_options):
        settings = model_options.get("transformer_options", {}).get(KEY, {})
        check_windows(settings.get("position_encoding_length"), self.context_length, settings.get("views"))
        return super().should_use_context(model, conds, x_in, timestep, model_options)

    def set_step(self, timestep, model_options):
        """The step whose sigma is nearest; the host's compares each frame's timestep and fails on frame batches."""
        self._step = context.nearest_step(model_options["transformer_options"]["sample_sigmas"], timestep)

    def execute(self, calc_cond_batch, model, conds, x_in, timestep, model_options):
        self._chunks = max(1, sum(cond is not None for cond in conds))
        self._one_window_per_call = any(_needs_one_window_per_call(control) for control in _controls(conds))
        return super().execute(calc_cond_batch, model, conds, x_in, timestep, model_options)

    def windows_per_call(self, model, x_in):
        """`windows_per_batch`, or for 0 as many windows as fit in free memory as the host sizes its batches."""
        if self._one_window_per_call:
            return 1
        if self.windows_per_batch:
            return self.windows_per_batch
        required = model.memory_required([self._chunks * self.context_length, *x_in.shape[1:]])
        return max(1, int(comfy.model_management.get_free_memory(x_in.device) // (1.5 * required)))

    def get_context_windows(self, model, x_in, model_options):
        """The host's windows of this step, grouped into model calls."""
        windows = [window.index_list for window in super().get_context_windows(model, x_in, model_options)]
        calls, first = [], 0
        for group in context.stack_windows(windows, self.windows_per_call(model, x_in)):
            calls.append(StackedWindows(group, first))
            first += len(group)
        self._calls = len(calls)
        return calls

    def get_resized_cond(self, cond_in, x_in, window, device=None):
        """The host's slicing, plus model conds with one entry per frame (prompt travel) cut to the window."""
        resized = super().get_resized_cond(cond_in, x_in, window, device)
        for cond in resized or []:
            if "model_conds" in cond:
                cond["model_conds"] = {name: _window_cond(value, window, x_in.size(0), device)
                                       for name, value in cond["model_conds"].items()}
        return resized

    def evaluate_context_windows(self, calc_cond_batch, model, x_in, conds, timestep, enumerated_context_windows,
                                 model_options, device=None, first_device=None):
        """Runs each group of windows as one model call; returns one result per window for the host to fuse."""
        results = []
        for call_index, stacked in enumerated_context_windows:
            comfy.model_management.throw_exception_if_processing_interrupted()
            for callback in comfy.patcher_extension.get_all_callbacks(
                    comfy.context_windows.IndexListCallbacks.EVALUATE_CONTEXT_WINDOWS, self.callbacks):
                callback(self, model, x_in, conds, timestep, model_options, call_index, stacked, model_options,
                         device, first_device)
            model_options["transformer_options"]["context_window"] = stacked
            sub_x = stacked.get_tensor(x_in, device)
            sub_timestep = stacked.get_tensor(timestep, device, dim=0)
            sub_conds = [self.get_resized_cond(cond, x_in, stacked, device) for cond in conds]
            with (_motion_window(model_options, stacked.context_length), _window_hints(conds, stacked, x_in.size(0)),
                  _ad_params(model_options, stacked, x_in.size(0))):
                outputs = calc_cond_batch(model, sub_conds, sub_x, sub_timestep, model_options)
            length = stacked.context_length
            for k, window in enumerate(stacked.windows):
                parts = [out[k * length:(k + 1) * length].to(x_in.device) for out in outputs]
                results.append(comfy.context_windows.ContextResults(stacked.first_index + k, parts, sub_conds, window))
            self._report_progress(call_index, model_options)
        return results

    def _report_progress(self, call_index, model_options):
        """Advances the node's progress bar per model call, in the units the sampler's own per-step bar uses."""
        steps = max(1, len(model_options["transformer_options"]["sample_sigmas"]) - 1)
        done = min(self._step, steps - 1) * self._calls + call_index + 1
        comfy.utils.ProgressBar(steps * self._calls).update_absolute(done)


def _window_cond(value, window, frames, device):
    """A model cond holding one entry per frame (CONDRegular and kin), cut to the window; others unchanged."""
    tensor = getattr(value, "cond", None)
    if isinstance(tensor, torch.Tensor) and tensor.ndim > 0 and frames > 1 and tensor.shape[0] == frames:
        return value._copy_with(window.get_tensor(tensor, device))
    return value


def _controls(conds):
    """Every ControlNet / T2I adapter in the conds, chained ones included, each once."""
    found = {}
    for cond in conds:
        for item in cond or []:
            control = item.get("control")
            while control is not None:
                found[id(control)] = control
                control = control.previous_controlnet
    return list(found.values())


def _reads_ad_params(control):
    """Whether a control cuts its own per-frame inputs by `ad_params` (Advanced-ControlNet's, which it
    recognises by the same `sub_idxs` attribute); such a control owns its hints and `_window_hints` skips it."""
    return hasattr(control, "sub_idxs")


def _needs_one_window_per_call(control):
    """Whether an Advanced-ControlNet control reads `sub_idxs` as a single window: SparseCtrl (its motion
    module spans the call, its hints are placed by the window's first and last frame) and latent keyframes
    (each frame index is mapped to one position in the call, so a frame shared by two stacked windows is
    counted once)."""
    if not _reads_ad_params(control):
        return False
    if getattr(control, "sparse_settings", None) is not None:
        return True
    if getattr(control, "latent_keyframe_override", None) is not None:
        return True
    keyframes = getattr(getattr(control, "timestep_keyframes", None), "keyframes", None) or []
    return any(getattr(keyframe, "latent_keyframes", None) is not None for keyframe in keyframes)


def pack_frame_inputs(model, controls):
    """(what, frame count) of every per-frame input of IPAdapter_plus and Advanced-ControlNet that the model and
    the controls carry, read where the packs store them (the attn2 patches' arguments; the controls)."""
    found = []
    replaced = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for patch in replaced.values():
        for arguments in getattr(patch, "kwargs", None) or ():
            if not isinstance(arguments, dict) or "unfold_batch" not in arguments:
                continue  # not IPAdapter_plus's attention patch
            if arguments["unfold_batch"] and isinstance(arguments.get("cond"), torch.Tensor):
                found.append(("IPAdapter's per-frame image embeds (IPAdapter Batch)", arguments["cond"].shape[0]))
            weight, mask = arguments.get("weight"), arguments.get("mask")
            if arguments["unfold_batch"] and isinstance(weight, torch.Tensor) and weight.ndim > 0:
                found.append(("IPAdapter's per-frame weights", weight.shape[0]))
            if isinstance(mask, torch.Tensor) and mask.ndim == 3:
                found.append(("IPAdapter's attn_mask", mask.shape[0]))
    for net in controls:
        mask = getattr(net, "mask_cond_hint_original", None)
        if isinstance(mask, torch.Tensor) and mask.ndim == 3:
            found.append(("Advanced-ControlNet's mask_optional", mask.shape[0]))
    return found


def check_pack_frames(model, frames, controls):
    """Refuses per-frame IPAdapter / Advanced-ControlNet inputs made for another frame count, which the packs would
    silently repeat or cut, naming both counts."""
    for what, count in pack_frame_inputs(model, controls):
        if count not in (1, frames):
            raise ValueError(f"{what} has {count} frames but latent_image has {frames}; give one frame for all, "
                             f"or exactly one per frame")


@contextmanager
def _ad_params(model_options, stacked, frames):
    """Publishes AnimateDiff-Evolved's `ad_params` for one model call and removes it afterwards.

    `full_length`: frames of the whole video. `sub_idxs`: the video frames of this call, in the order of the
    call's batch: for stacked windows the windows' frame lists one after another (so a frame in two windows
    appears twice), which is what a pack indexing its per-frame tensors with it needs. `context_length`: frames
    of one window (equal to len(sub_idxs) for one window per call, as in AnimateDiff-Evolved).
    """
    options = model_options["transformer_options"]
    previous = options.get("ad_params")
    options["ad_params"] = {"full_length": frames, "context_length": stacked.context_length,
                            "sub_idxs": list(stacked.index_list)}
    try:
        yield
    finally:
        if previous is None:
            options.pop("ad_params", None)
        else:
            options["ad_params"] = previous


@contextmanager
def _window_hints(conds, window, frames):
    """For one model call, gives each control that has one hint image per frame only the window's images.

    The host hands every window the whole hint batch, of which a control uses the first frames. Clearing
    `cond_hint` makes the control resize (and a T2I adapter re-encode) the images it now holds. Controls that
    cut their hints by `ad_params` themselves (Advanced-ControlNet) are left whole, or they would cut twice.
    """
    swapped = []
    for control in _controls(conds):
        hint = control.cond_hint_original
        if (isinstance(hint, torch.Tensor) and frames > 1 and hint.shape[0] == frames
                and not _reads_ad_params(control)):
            swapped.append((control, hint))
            control.cond_hint_original, control.cond_hint = window.get_tensor(hint), None
    try:
        yield
    finally:
        for control, hint in swapped:
            control.cond_hint_original, control.cond_hint = hint, None


@contextmanager
def _motion_window(model_options, length):
    """Tells the motion module that the batch holds videos of `length` frames (one per window and cond)."""
    options = model_options["transformer_options"]
    settings = options.get(KEY)
    options[KEY] = dict(settings or {}, num_frames=length)
    try:
        yield
    finally:
        if settings is None:
            options.pop(KEY)
        else:
            options[KEY] = settings


def _prepare_sampling_wrapper(executor, model, noise_shape, conds, *args, **kwargs):
    """Checks the node packs' per-frame inputs against the video (any sampler node, before any model is loaded),
    and sizes the host's memory estimate for the frames of one model call, not the whole video."""
    handler = kwargs["model_options"].get("context_handler")
    if isinstance(handler, LightningContextHandler):
        check_pack_frames(model, noise_shape[0], _controls(conds.values()))
        frames = handler.context_length * max(1, handler.windows_per_batch)
        noise_shape = [min(noise_shape[0], frames), *noise_shape[1:]]
    return executor(model, noise_shape, conds, *args, **kwargs)


def _freenoise_wrapper(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
    """Replaces the initial noise by FreeNoise's before the sampler scales it, when the UNet windows (first) or
    the views ask for it, with their window length and overlap."""
    handler = extra_args["model_options"].get("context_handler")
    views = extra_args["model_options"].get("transformer_options", {}).get(KEY, {}).get("views") or {}
    if getattr(handler, "freenoise", False):
        length, overlap = handler.context_length, handler.context_overlap
    elif views.get("freenoise"):
        length, overlap = views["length"], views["overlap"]
    else:
        length = None
    if length and noise.shape[0] > length:
        generator = torch.Generator().manual_seed(extra_args.get("seed") or 0)
        noise = context.freenoise(noise, length, overlap, generator)
    return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)


def with_context_windows(model, handler):
    """A clone of `model` that samples through `handler` (as the stock ContextWindowsManual sets it up)."""
    model = model.clone()
    model.model_options["context_handler"] = handler
    wrappers = comfy.patcher_extension.WrappersMP
    for wrapper_type, wrapper in ((wrappers.PREPARE_SAMPLING, _prepare_sampling_wrapper),
                                  (wrappers.SAMPLER_SAMPLE, _freenoise_wrapper)):
        model.remove_wrappers_with_key(wrapper_type, KEY)  # once, however often the node is chained
        model.add_wrapper_with_key(wrapper_type, KEY, wrapper)
    return model


def check_windows(limit, context_length=None, views=None):
    """Refuses UNet windows or views the motion module cannot take, naming the parameter: the motion module sees
    the views when there are some, else the whole UNet window."""
    if views:
        context.check_frames("view_length", views["length"], limit,
                             f"use a view_length of at most {limit} (16 is what it was trained on)")
        if views["overlap"] >= views["length"]:
            raise ValueError(f"view_overlap is {views['overlap']} but must be smaller than view_length "
                             f"({views['length']}), or the views would not advance")
        if context_length and views["length"] > context_length:
            raise ValueError(f"view_length is {views['length']} but the UNet windows (context_length) have "
                             f"{context_length} frames; use a view_length of at most {context_length}, or longer "
                             "UNet windows")
    elif context_length:
        context.check_frames("context_length", context_length, limit,
                             f"use a context_length of at most {limit} (16 is what it was trained on), or put "
                             "View Options (AnimateDiff-Lightning) before the Context Windows so that the motion "
                             "module sees views of it")


# ----------------------------------------------------------------------------- views
# Views window only the motion module's temporal attention (diffusers' FreeNoise, AnimateDiff-Evolved's View
# Options): the UNet's spatial layers see every frame of the model call once. The settings travel in
# transformer_options[KEY]["views"]; each motion layer windows the frames it is given (the whole video, or one
# UNet window's frames when Context Windows are attached too).

@functools.lru_cache(maxsize=64)
def _view_windows(schedule_name, fuse_method, frames, length, overlap, step, closed_loop):
    return context.view_windows(schedule_name, fuse_method, frames, length, overlap, step, closed_loop)


def _views(views, frames, transformer_options):
    """The windows and weights of this model call's views (a function of the step for the uniform schedules)."""
    if not views:
        return None
    sigmas, sigma = transformer_options.get("sample_sigmas"), transformer_options.get("sigmas")
    step = context.nearest_step(sigmas, sigma) if sigmas is not None and sigma is not None else 0
    return _view_windows(views["schedule"], views["fuse_method"], frames, views["length"], views["overlap"], step,
                         views.get("closed_loop", False))


def with_views(model, views):
    """A clone of `model` whose motion layers attend within views: {length, overlap, schedule, fuse_method,
    closed_loop, freenoise}. The memory estimate counts each view's attention."""
    settings = motion_settings(model)
    check_windows(settings.get("position_encoding_length"), context_window_length(model), views)
    model = model.clone()
    model.model_options["transformer_options"][KEY] = dict(settings, views=dict(views))
    estimate = model.get_model_object("memory_required")
    if isinstance(estimate, MotionMemoryRequired):
        factor = views["length"] / max(1, views["length"] - views["overlap"])
        model.add_object_patch("memory_required", MotionMemoryRequired(
            estimate.base, estimate.num_heads, min(settings.get("position_encoding_length") or 32, views["length"]),
            estimate.dtype, factor))
    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY, _freenoise_wrapper)
    return model


def views_settings(model):
    """The views attached to this MODEL, or None."""
    return motion_settings(model).get("views")


def context_window_length(model):
    """Frames per window of the MODEL's context handler (ours or the stock one), or None without one."""
    return getattr(model.model_options.get("context_handler"), "context_length", None)
