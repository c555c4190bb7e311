"""ComfyUI nodes of AnimateDiff-Lightning: thin wrappers that parse inputs, call lightning_core, return."""

from comfy_api.latest import ComfyExtension

from .motion import ApplyMotionModule, LoadMotionModule, MotionLoraLoader
from .sampling import LightningKSampler, LightningSampler, LightningScheduler

NODES = [LoadMotionModule, MotionLoraLoader, ApplyMotionModule, LightningScheduler, LightningSampler, LightningKSampler]


class AnimateDiffLightningExtension(ComfyExtension):
    async def get_node_list(self):
        return NODES
