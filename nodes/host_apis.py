"""The ComfyUI APIs the nodes need, checked before any node module is imported.

Imports nothing from ComfyUI itself, so that on an older ComfyUI the pack logs one line saying what to update
and registers the nodes that can work, instead of a traceback that buries the other packs' messages.
"""

import importlib
import logging

TESTED_COMFYUI = "0.3.75"
EXTENSION_API = "comfy_api.latest"  # every node is a comfy_api.latest io.ComfyNode
# Node module (in nodes/) -> the host modules it needs besides EXTENSION_API.
NODE_MODULE_NEEDS = {
    "motion": ("comfy.context_windows",),  # via host.py: our context handler subclasses the host's
    "sampling": ("comfy.context_windows",),
    "context": ("comfy.context_windows",),
    "prompt": (),
    "vae": (),
    "video": (),
    "control": (),
}

log = logging.getLogger("animatediff_lightning")


def importable(module):
    """Whether `module` imports in this Python (a module that fails while importing counts as missing)."""
    try:
        importlib.import_module(module)
        return True
    except Exception:  # ImportError, or an older host module that breaks on import
        return False


def missing_apis():
    """The host modules (EXTENSION_API, then the others) this ComfyUI cannot import, in a stable order."""
    needed = dict.fromkeys([EXTENSION_API, *(m for needs in NODE_MODULE_NEEDS.values() for m in needs)])
    return [module for module in needed if not importable(module)]


def usable_node_modules(missing):
    """Node modules whose host needs are all met; none without the extension API."""
    if EXTENSION_API in missing:
        return []
    return [name for name, needs in NODE_MODULE_NEEDS.items() if not set(needs) & set(missing)]


def report(missing, skipped):
    """The one log line for an older ComfyUI: what is missing, which node modules are off, what to do."""
    return (f"AnimateDiff-Lightning: this ComfyUI lacks {', '.join(missing)}; "
            f"{'all' if skipped == list(NODE_MODULE_NEEDS) else ', '.join(skipped)} nodes are not registered. "
            f"Update ComfyUI (tested with {TESTED_COMFYUI}).")
