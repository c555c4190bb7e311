"""Optional packages, imported where they are used, so a missing one disables only what needs it.

opencv is not one of ComfyUI's own requirements: text to video and sampling work without it, and only the
video file reader, resizing and the control preprocessors ask for it, with a message saying what to install.
"""

import importlib

INSTALL_HINT = ("run `pip install -r requirements.txt` in this node pack's folder "
                "(custom_nodes/ComfyUI-AnimateDiff-Lightning) with ComfyUI's Python, then restart ComfyUI")


class MissingPackage(ImportError):
    """A package the requested feature needs is not installed; the message says what to install."""


def require(module, package, feature):
    """Imports `module` (e.g. 'cv2'), or raises MissingPackage naming `package` and the `feature` that needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPackage(f"{feature} needs {package}, which this Python cannot import ({error}): "
                             f"{INSTALL_HINT}") from None


def opencv(feature):
    """The cv2 module, or MissingPackage saying that `feature` needs opencv-python."""
    return require("cv2", "opencv-python", feature)
