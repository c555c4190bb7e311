"""ControlNet helpers: weight-free control preprocessors (IMAGE -> IMAGE) and the control frame-count rule.

The ControlNets themselves are ComfyUI's own (ControlNetLoader + ControlNetApplyAdvanced): they take any
IMAGE batch, so pose or depth maps from other node packs work as control input just like these.
"""

import comfy.utils
from comfy_api.latest import io

from ..lightning_core import control
from . import menu

IMAGE_TOOLTIP = "The source frames (e.g. from Load Video); one control frame comes out per frame."
FRAME_RULE = "the control image batch must have exactly as many frames as the latent batch, or 1 (used for every frame)"


def _run(preprocess, images, **kwargs):
    """Runs a per-frame preprocessor over the batch with a progress bar that advances per frame."""
    bar = comfy.utils.ProgressBar(images.shape[0])
    try:
        return io.NodeOutput(control.map_frames(preprocess, images, on_frame=lambda i: bar.update(1), **kwargs))
    except ValueError as e:  # bad thresholds or batch shape: the message names the parameter
        raise ValueError(str(e)) from None


class CannyPreprocessor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_CannyPreprocessor",
            display_name=menu.title("Canny Edge Map"),
            category=menu.CONTROL,
            description="Canny edge maps (white edges on black) for the canny ControlNet, e.g. control_v11p_sd15_canny.",
            inputs=[
                io.Image.Input("images", tooltip=IMAGE_TOOLTIP),
                io.Int.Input("low_threshold", default=100, min=0, max=255,
                             tooltip="Gradient strength (8-bit) below which a pixel is never an edge; lower keeps fainter edges."),
                io.Int.Input("high_threshold", default=200, min=0, max=255,
                             tooltip="Gradient strength (8-bit) above which a pixel always starts an edge; at least low_threshold."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, images, low_threshold, high_threshold) -> io.NodeOutput:
        return _run(control.canny, images, low_threshold=low_threshold, high_threshold=high_threshold)


class SoftEdgePreprocessor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_SoftEdgePreprocessor",
            display_name=menu.title("Soft Edge Map (Sobel)"),
            category=menu.CONTROL,
            description="Soft grey-level edges (Sobel gradient magnitude, HED-like) for softedge/lineart ControlNets; "
                        "a fixed scale per frame, so it does not flicker over a video.",
            inputs=[
                io.Image.Input("images", tooltip=IMAGE_TOOLTIP),
                io.Float.Input("blur_sigma", default=1.0, min=0.0, max=10.0, step=0.1,
                               tooltip="Gaussian blur (pixels) before the gradient: higher ignores texture and noise."),
                io.Float.Input("gain", default=4.0, min=0.1, max=50.0, step=0.1,
                               tooltip="Brightness of the edges: a slope of 1/gain (intensity change per pixel) or steeper is white."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, images, blur_sigma, gain) -> io.NodeOutput:
        return _run(control.soft_edges, images, blur_sigma=blur_sigma, gain=gain)


class GrayscalePreprocessor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_GrayscalePreprocessor",
            display_name=menu.title("Grayscale / Threshold Map"),
            category=menu.CONTROL,
            description="Grey image (luma), or black and white above a threshold, e.g. for scribble or recolor ControlNets.",
            inputs=[
                io.Image.Input("images", tooltip=IMAGE_TOOLTIP),
                io.Float.Input("threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="0 gives the grey image; above 0, pixels with luma at or above it are white, the rest black."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, images, threshold) -> io.NodeOutput:
        return _run(control.grayscale, images, threshold=threshold)


class TilePreprocessor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_TilePreprocessor",
            display_name=menu.title("Tile Blur Map"),
            category=menu.CONTROL,
            description="A blurry low-resolution copy of each frame, what the tile ControlNet (control_v11f1e_sd15_tile) expects.",
            inputs=[
                io.Image.Input("images", tooltip=IMAGE_TOOLTIP),
                io.Int.Input("downscale", default=4, min=1, max=64,
                             tooltip="Shrink by this factor (area average) and scale back up (cubic); 1 keeps the resolution."),
                io.Float.Input("blur_sigma", default=0.0, min=0.0, max=20.0, step=0.1,
                               tooltip="Extra Gaussian blur (pixels) after scaling back up; 0 for none."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, images, downscale, blur_sigma) -> io.NodeOutput:
        return _run(control.tile, images, downscale=downscale, blur_sigma=blur_sigma)


NODES = [CannyPreprocessor, SoftEdgePreprocessor, GrayscalePreprocessor, TilePreprocessor]


def control_hint_frames(conditioning):
    """Frame counts of every control image attached to a CONDITIONING (each ControlNet of each chain).

    Reads what ControlNetApply* stores on ComfyUI's ControlBase: `cond_hint_original` [n, 3, H, W] and the
    `previous_controlnet` link that chains several ControlNets.
    """
    counts, seen = [], set()
    for _, options in conditioning or ():
        net = options.get("control")
        while net is not None and id(net) not in seen:
            seen.add(id(net))
            hint = getattr(net, "cond_hint_original", None)
            if hint is not None:
                counts.append(int(hint.shape[0]))
            net = getattr(net, "previous_controlnet", None)
    return counts


def check_control_frames(frames, *conditionings):
    """Raises, stating the one rule and both counts, when a control image batch does not fit the latent batch."""
    for conditioning in conditionings:
        for count in control_hint_frames(conditioning):
            if count not in (1, frames):
                raise ValueError(f"{FRAME_RULE}: a ControlNet has {count} control frames and latent_image has "
                                 f"{frames} frames")
