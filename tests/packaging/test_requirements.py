"""What users install is what the nodes import: pyproject.toml (Comfy Registry) and requirements.txt
(ComfyUI-Manager, `pip install -r`) declare every third-party import of the code ComfyUI loads, as ranges."""

import ast
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
LOADED_BY_COMFYUI = [REPO / "__init__.py", *sorted((REPO / "lightning_core").rglob("*.py")),
                     *sorted((REPO / "nodes").rglob("*.py"))]
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "node_helpers", "server"}
TORCH = "torch"  # declared in pyproject only: requirements.txt never asks pip to replace ComfyUI's CUDA build
DISTRIBUTION = {"cv2": "opencv-python", "PIL": "pillow"}  # import name -> distribution, where they differ


def _imported_by_name(call):
    """The module a call imports by name: importlib.import_module("x") or our requirements.require("x", ...)."""
    name = getattr(call.func, "attr", None) or getattr(call.func, "id", None)
    if name in ("import_module", "require") and call.args and isinstance(call.args[0], ast.Constant):
        return call.args[0].value
    return None


def imported_top_level_modules(path):
    """Top-level names of every absolute import in a file, those inside functions and by name included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(_imported_by_name(node), str):
            names.add(_imported_by_name(node).split(".")[0])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def third_party_imports():
    found = set().union(*(imported_top_level_modules(path) for path in LOADED_BY_COMFYUI))
    return found - set(sys.stdlib_module_names) - HOST_MODULES - {"__future__"}


def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_names(lines):
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


def test_every_third_party_import_is_declared_and_every_declaration_imported():
    declared = requirement_names(pyproject()["project"]["dependencies"])
    needed = {DISTRIBUTION.get(module, module).lower() for module in third_party_imports()}
    assert needed == set(declared), "declare each import in pyproject.toml and requirements.txt (and DISTRIBUTION)"
    for name, requirement in declared.items():
        assert str(requirement.specifier).startswith(">="), f"{name}: a lower bound users can satisfy, not a pin"


def test_requirements_txt_is_pyproject_without_torch():
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    listed = requirement_names([line for line in lines if line and not line.startswith("#")])
    declared = requirement_names(pyproject()["project"]["dependencies"])
    assert {name: str(r) for name, r in listed.items()} == {
        name: str(r) for name, r in declared.items() if name != TORCH}


def test_pyproject_has_what_the_comfy_registry_asks_for():
    project, comfy = pyproject()["project"], pyproject()["tool"]["comfy"]
    assert project["name"] and project["version"].count(".") == 2 and project["description"]
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].startswith("https://")
    assert comfy["requires-comfyui"].startswith(">=")
    icon = comfy["Icon"].split("/main/")[-1]
    assert (REPO / icon).is_file(), f"the Icon URL points at {icon}, which the repository must hold"
