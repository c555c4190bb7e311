"""Where our nodes sit in ComfyUI's menu and how they are named there.

Every display name ends in "(AnimateDiff-Lightning)", so that a search for "load video" or "canny" shows ours
beside the stock, AnimateDiff-Evolved, VideoHelperSuite and controlnet_aux nodes of the same job without any
two looking alike. Node ids (`ADL_*`) never change: saved workflows refer to them.
"""

PACK = "AnimateDiff-Lightning"
MOTION_MODULE = f"{PACK}/motion module"
SAMPLING = f"{PACK}/sampling"
LONG_VIDEO = f"{PACK}/long video"
VIDEO = f"{PACK}/video"
CONTROL = f"{PACK}/control"


def title(job):
    """The display name of a node doing `job`, e.g. 'Load Video (AnimateDiff-Lightning)'."""
    return f"{job} ({PACK})"
