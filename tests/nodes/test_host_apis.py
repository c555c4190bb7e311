"""An older ComfyUI: the pack logs one line naming what is missing and registers only the nodes that can work.

The pack is imported the way ComfyUI imports a custom node, in a subprocess of the host's Python started in the
host folder, with tests/host/without_modules hiding one host module (as on a ComfyUI from before it existed).
"""

import json
import os
import subprocess

import pytest

from host import REPO_ROOT
from host.comfy_server import HOST_DIR, VENV_PYTHON
from test_install import WITHOUT_MODULES

IMPORT_AS_COMFYUI_DOES = f"""
import importlib.util, json, logging, sys
sys.path.insert(0, ".")
sys.argv = ["main.py", "--cpu"]  # read by comfy.cli_args, as when main.py starts
import comfy.options
comfy.options.enable_args_parsing()
records = []
logging.basicConfig(level=logging.WARNING)
logging.getLogger().addHandler(type("Keep", (logging.Handler,), {{"emit": lambda self, r: records.append(r)}})())
spec = importlib.util.spec_from_file_location("pack", {str(REPO_ROOT / "__init__.py")!r})
pack = importlib.util.module_from_spec(spec)
sys.modules["pack"] = pack
spec.loader.exec_module(pack)
print(json.dumps({{"nodes": sorted(node.__name__ for node in pack.NODES),
                   "entrypoint": hasattr(pack, "comfy_entrypoint"),
                   "errors": [r.getMessage() for r in records if r.levelno >= logging.ERROR]}}))
"""


def import_pack_without(module):
    env = {**os.environ, "PYTHONPATH": str(WITHOUT_MODULES), "ADL_WITHOUT_MODULES": module}
    done = subprocess.run([str(VENV_PYTHON), "-c", IMPORT_AS_COMFYUI_DOES], cwd=HOST_DIR, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module, registered", [
    ("comfy_api.latest", set()),
    ("comfy.context_windows", {"PromptSchedule", "VAEEncodeChunked", "VAEDecodeChunked", "LoadVideo",
                               "LoadVideoLatent", "SaveVideo", "CannyPreprocessor", "SoftEdgePreprocessor",
                               "GrayscalePreprocessor", "TilePreprocessor"}),
])
def test_an_older_host_gets_one_log_line_and_the_nodes_that_can_work(module, registered):
    loaded = import_pack_without(module)
    assert set(loaded["nodes"]) == registered
    assert loaded["entrypoint"] == bool(registered)  # without any node ComfyUI skips the pack with a warning
    [error] = loaded["errors"]
    assert module in error and "Update ComfyUI" in error
