"""The context-options node: sample videos longer than the motion module's window in overlapping windows."""

from comfy_api.latest import io

from ..lightning_core import context
from . import host, menu

SCHEDULE_TOOLTIP = ("How frames are cut into windows. standard_uniform: windows every context_length - "
                    "context_overlap frames, shifted at each step so that seams do not stay in place; "
                    "looped_uniform: the same, wrapping around the end (for loops); standard_static: the same "
                    "windows at every step; batched: no overlap (fastest, visible seams).")
FUSE_TOOLTIP = ("How the windows' results are averaged where they overlap. pyramid: frames near a window's "
                "middle count most; flat: all alike; overlap-linear: linear cross-fade over the overlap; "
                "relative: by distance to the window's centre.")


def check_context_options(model, context_length, context_overlap, fuse_method):
    """Fails early, naming the parameter, on windows the motion module or the schedule cannot use."""
    host.check_windows(host.motion_settings(model).get("position_encoding_length"), context_length,
                       host.views_settings(model))
    if context_overlap >= context_length:
        raise ValueError(f"context_overlap is {context_overlap} but must be smaller than context_length "
                         f"({context_length}), or the windows would not advance")
    check_fuse_overlap(fuse_method, context_overlap, "context_overlap")


def check_fuse_overlap(fuse_method, overlap, name):
    """overlap-linear has nothing to cross-fade without an overlap."""
    if fuse_method == "overlap-linear" and overlap == 0:
        raise ValueError(f"fuse_method overlap-linear cross-fades over the overlap: set {name} to at least 1, or "
                         "use fuse_method flat")


VIEWS_DESCRIPTION = (
    "Lets the motion module see a long video in overlapping views of frames (FreeNoise's design): only its "
    "temporal attention is windowed and averaged per frame, every other layer runs once per frame. Three ways "
    "to sample a long video:\n"
    "- View Options alone: the UNet takes all frames in one call per step. Fastest (each frame through the "
    "UNet once per step); memory grows with the frame count like an image batch of that many frames.\n"
    "- View Options, then Context Windows with a longer context_length (e.g. 64): views inside UNet windows. "
    "Memory is bounded by the UNet window; time grows with the UNet windows' overlap.\n"
    "- Context Windows alone (context_length at most 32): every layer per window. Least memory, slowest "
    "(frames in overlaps go through the whole UNet once per window).")


class ViewOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_ViewOptions",
            display_name=menu.title("View Options"),
            category=menu.LONG_VIDEO,
            description=VIEWS_DESCRIPTION,
            inputs=[
                io.Model.Input("model", tooltip="A model with a motion module applied."),
                io.Int.Input("view_length", default=16, min=1, max=128,
                             tooltip="Frames per view: 16, what AnimateDiff was trained on, is best; at most the "
                                     "module's position encoding (32 for v2/v3/Lightning, 24 for v1) and at most "
                                     "the context_length of Context Windows used with it."),
                io.Int.Input("view_overlap", default=4, min=0, max=127,
                             tooltip="Frames shared by neighbouring views: smoother motion across views. It costs "
                                     "only temporal-attention time (a few percent of a step), so it can be generous."
                                     " Must be below view_length."),
                io.Combo.Input("schedule", options=list(context.SCHEDULES), default="standard_static",
                               tooltip=SCHEDULE_TOOLTIP + " standard_static is FreeNoise's (diffusers) choice."),
                io.Combo.Input("fuse_method", options=list(context.FUSE_METHODS), default="pyramid",
                               tooltip=FUSE_TOOLTIP),
                io.Boolean.Input("freenoise", default=False,
                                 tooltip="FreeNoise initial noise with the views' length and overlap (the Context "
                                         "Windows' own setting wins when both are attached)."),
                io.Boolean.Input("closed_loop", default=False,
                                 tooltip="With looped_uniform: views also span the end and the start, so the motion "
                                         "loops. Ignored by the other schedules."),
            ],
            outputs=[io.Model.Output(tooltip="The model, its motion module attending within views; any sampler.")],
        )

    @classmethod
    def execute(cls, model, view_length, view_overlap, schedule, fuse_method, freenoise, closed_loop) -> io.NodeOutput:
        check_fuse_overlap(fuse_method, view_overlap, "view_overlap")
        views = {"length": view_length, "overlap": view_overlap, "schedule": schedule, "fuse_method": fuse_method,
                 "closed_loop": closed_loop, "freenoise": freenoise}
        return io.NodeOutput(host.with_views(model, views))


class ContextOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_ContextOptions",
            display_name=menu.title("Context Windows"),
            category=menu.LONG_VIDEO,
            description="Lets a video be longer than the motion module's window (16 frames as trained, at most "
                        "24 or 32): each step denoises overlapping windows of frames and averages them. Put it "
                        "between Apply Motion Module and the sampler.",
            inputs=[
                io.Model.Input("model", tooltip="A model with a motion module applied."),
                io.Int.Input("context_length", default=16, min=1, max=128,
                             tooltip="Frames per window: 16, what AnimateDiff was trained on, is best; at most the "
                                     "module's position encoding (32 for v2/v3/Lightning, 24 for v1)."),
                io.Int.Input("context_overlap", default=4, min=0, max=127,
                             tooltip="Frames shared by neighbouring windows; more overlap gives smoother "
                                     "transitions and costs more windows. Must be below context_length."),
                io.Combo.Input("schedule", options=list(context.SCHEDULES), default="standard_uniform",
                               tooltip=SCHEDULE_TOOLTIP),
                io.Combo.Input("fuse_method", options=list(context.FUSE_METHODS), default="pyramid",
                               tooltip=FUSE_TOOLTIP),
                io.Int.Input("windows_per_batch", default=1, min=0, max=64,
                             tooltip="Windows evaluated together in one UNet call: more is faster on a GPU with "
                                     "memory to spare and uses more memory; 0 fits as many as the free memory "
                                     "allows. The result is the same."),
                io.Boolean.Input("freenoise", default=False,
                                 tooltip="FreeNoise initial noise: frames after the first window reuse the first "
                                         "window's noise, shuffled window by window, for a more consistent video."),
                io.Boolean.Input("closed_loop", default=False,
                                 tooltip="With looped_uniform: windows also span the end and the start, so the "
                                         "video loops seamlessly. Ignored by the other schedules."),
            ],
            outputs=[io.Model.Output(tooltip="The model, sampled in context windows by any sampler.")],
        )

    @classmethod
    def execute(cls, model, context_length, context_overlap, schedule, fuse_method, windows_per_batch, freenoise,
                closed_loop) -> io.NodeOutput:
        check_context_options(model, context_length, context_overlap, fuse_method)
        handler = host.LightningContextHandler(schedule, fuse_method, context_length, context_overlap,
                                               closed_loop=closed_loop, windows_per_batch=windows_per_batch,
                                               freenoise=freenoise)
        return io.NodeOutput(host.with_context_windows(model, handler))


NODES = [ViewOptions, ContextOptions]
