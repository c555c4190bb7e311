"""ComfyUI entry point: registers the model folders and hands ComfyUI the node extension.

On a ComfyUI without the extension API (comfy_api.latest) nodes/__init__.py has logged why, and no
`comfy_entrypoint` is defined: ComfyUI then skips the pack with a warning instead of a traceback.
"""

import os

import folder_paths

from .nodes import NODE_MODULES, NODES, extension


def _register_model_folder(name):
    """Adds models/<name> (shared with AnimateDiff-Evolved users) with the usual weight-file extensions."""
    path = os.path.join(folder_paths.models_dir, name)
    os.makedirs(path, exist_ok=True)
    # extra_model_paths.yaml may have created the entry already (with no extensions, i.e. any file).
    _, extensions = folder_paths.folder_names_and_paths.setdefault(name, ([], set()))
    extensions.update(folder_paths.supported_pt_extensions)
    folder_paths.add_model_folder_path(name, path)


if "motion" in NODE_MODULES:
    from .nodes.motion import LORA_FOLDER, MOTION_FOLDER

    _register_model_folder(MOTION_FOLDER)
    _register_model_folder(LORA_FOLDER)

if NODES:
    async def comfy_entrypoint():
        return extension()
