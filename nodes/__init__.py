"""ComfyUI nodes of AnimateDiff-Lightning: thin wrappers that parse inputs, call lightning_core, return.

Node modules are imported only where this ComfyUI has the APIs they need (host_apis.py), so an older host
gets one log line and the nodes that can work.
"""

import importlib

from ..lightning_core import requirements
from . import host_apis

MISSING_APIS = host_apis.missing_apis()
NODE_MODULES = host_apis.usable_node_modules(MISSING_APIS)
if MISSING_APIS:
    skipped = [name for name in host_apis.NODE_MODULE_NEEDS if name not in NODE_MODULES]
    host_apis.log.error(host_apis.report(MISSING_APIS, skipped))

if not host_apis.importable("cv2"):
    host_apis.log.warning("AnimateDiff-Lightning: opencv is not installed, so loading video files and the control "
                          "maps will fail until you %s; text to video works without it", requirements.INSTALL_HINT)

NODES = [node for name in NODE_MODULES for node in importlib.import_module(f".{name}", __name__).NODES]


def extension():
    """The ComfyExtension handing ComfyUI our nodes (only called where comfy_api.latest exists)."""
    from comfy_api.latest import ComfyExtension

    class AnimateDiffLightningExtension(ComfyExtension):
        async def get_node_list(self):
            return NODES

    return AnimateDiffLightningExtension()
