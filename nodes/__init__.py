"""ComfyUI nodes of AnimateDiff-Lightning: thin wrappers that parse inputs, call lightning_core, return."""

from comfy_api.latest import ComfyExtension

from .context import ContextOptions, ViewOptions
from .control import PREPROCESSORS
from .motion import ApplyMotionModule, LoadMotionModule, MotionLoraLoader
from .prompt import PromptSchedule
from .sampling import LightningKSampler, LightningSampler, LightningScheduler
from .vae import VAEDecodeChunked, VAEEncodeChunked
from .video import LoadVideo, LoadVideoLatent, SaveVideo

NODES = [
    LoadMotionModule, MotionLoraLoader, ApplyMotionModule,  # motion module
    LightningScheduler, LightningSampler, LightningKSampler,  # sampling
    ContextOptions, ViewOptions, PromptSchedule,  # long video
    LoadVideo, LoadVideoLatent, SaveVideo, VAEEncodeChunked, VAEDecodeChunked,  # video in and out
    *PREPROCESSORS,  # control images for ControlNet
]


class AnimateDiffLightningExtension(ComfyExtension):
    async def get_node_list(self):
        return NODES
