"""Shared pytest fixtures.

The ComfyUI server is started lazily: only tests that ask for `comfy` (or
`comfy_base`) pay for it, so tests/lightning_core/ runs without a server.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Lets unit tests `import lightning_core` straight from the checkout.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from host import MODEL_DIRS, PACKAGE_DIR_NAME, THIRD_PARTY, link_node_packs, missing_node_packs  # noqa: E402
from host.comfy_server import ComfyServer  # noqa: E402

pytest_plugins = ["fixtures.comfy_models"]  # model-file fixtures shared by tests/nodes and tests/workflows


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory) -> Path:
    """A fresh ComfyUI --base-directory with this repo installed as a custom node."""
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    # A symlink, so the server runs the working tree as it is now.
    (base / "custom_nodes" / PACKAGE_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    return _with_own_folders(base)


def _with_own_folders(base: Path) -> Path:
    """Empty models/ (every folder a test writes to), input/ and output/ folders of a server base."""
    for name in MODEL_DIRS:
        (base / "models" / name).mkdir(parents=True)
    (base / "input").mkdir()
    (base / "output").mkdir()
    return base


@pytest.fixture(scope="session")
def comfy(comfy_base) -> ComfyServer:
    """One real ComfyUI server (CPU) for the whole session."""
    t0 = time.monotonic()
    server = ComfyServer.start(comfy_base)  # raises with the log tail if it fails
    print(f"\nComfyUI up on {server.url} in {time.monotonic() - t0:.1f}s; log: {server.log_path}")
    yield server
    server.stop()
    print(f"\nComfyUI stopped; log: {server.log_path}")


PACK_NODES = ("IPAdapterModelLoader", "ACN_AdvancedControlNetApply_v2")  # one node each, to prove they loaded


def _base_with_packs(base: Path) -> Path:
    """custom_nodes/ of a server base: this repo, the packs of ../shared/third_party and the test-only recorder
    node, all symlinked."""
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACKAGE_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    link_node_packs(base / "custom_nodes")
    probe = Path(__file__).resolve().parent / "fixtures" / "pack_probe"
    (base / "custom_nodes" / "adl_test_pack_probe").symlink_to(probe, target_is_directory=True)
    return base


@pytest.fixture(scope="session")
def comfy_packs_base(comfy_base, tmp_path_factory) -> Path:
    """A second --base-directory: this repo plus IPAdapter_plus and Advanced-ControlNet from ../shared/third_party
    (symlinks, nothing copied), sharing comfy_base's models folder so the model fixtures serve both servers."""
    missing = missing_node_packs()
    if missing:
        pytest.skip(f"{', '.join(missing)} not found in {THIRD_PARTY}: the tests with the real node packs need "
                    f"../shared/third_party beside the checkout, as CI lays it out")
    base = _base_with_packs(tmp_path_factory.mktemp("comfy_packs_base"))
    for name in ("ipadapter", "clip_vision"):  # the packs' folders; the plain server never lists them
        (comfy_base / "models" / name).mkdir(exist_ok=True)
    (base / "models").symlink_to(comfy_base / "models", target_is_directory=True)
    (base / "input").mkdir()
    (base / "output").mkdir()
    return base


@pytest.fixture(scope="session")
def comfy_packs(comfy_packs_base) -> ComfyServer:
    """A real ComfyUI server with the two packs installed beside this package (the plain `comfy` stays as it is)."""
    server = _start_with_nodes(comfy_packs_base, PACK_NODES, "IPAdapter_plus and Advanced-ControlNet")
    yield server
    server.stop()


def _start_with_nodes(base: Path, nodes, packs: str) -> ComfyServer:
    """A server on `base` whose node list has every one of `nodes` (else stopped, with its log tail)."""
    t0 = time.monotonic()
    server = ComfyServer.start(base)
    try:
        info = server.object_info()
        lost = [name for name in nodes if name not in info]
        assert not lost, f"{packs} did not load (no {lost}):\n{server.log_tail(120)}"
    except BaseException:
        server.stop()
        raise
    print(f"\nComfyUI with {packs} up on {server.url} in {time.monotonic() - t0:.1f}s; log: {server.log_path}")
    return server


ADE_ENV = "ADL_ANIMATEDIFF_EVOLVED"  # an AnimateDiff-Evolved checkout (tested: commit 90fb133), for one opt-in test
ADE_DIR_NAME = "ComfyUI-AnimateDiff-Evolved"


@pytest.fixture(scope="session")
def comfy_ade_base(tmp_path_factory) -> Path:
    """A third --base-directory: this repo, the two packs, the test probe and AnimateDiff-Evolved from
    $ADL_ANIMATEDIFF_EVOLVED (symlinks), with models and inputs of its own; the other servers never see ADE."""
    ade = os.environ.get(ADE_ENV)
    if not ade:
        pytest.skip(f"AnimateDiff-Evolved not given ({ADE_ENV}): Advanced-ControlNet's SparseCtrl loader needs it; "
                    f"../shared/third_party does not hold it")
    if not (Path(ade) / "animatediff" / "motion_module_ad.py").is_file():
        pytest.skip(f"{ADE_ENV}={ade} is not an AnimateDiff-Evolved checkout (no animatediff/motion_module_ad.py)")
    missing = missing_node_packs()
    if missing:
        pytest.skip(f"{', '.join(missing)} not found in {THIRD_PARTY}")
    base = _base_with_packs(tmp_path_factory.mktemp("comfy_ade_base"))
    (base / "custom_nodes" / ADE_DIR_NAME).symlink_to(Path(ade).resolve(), target_is_directory=True)
    return _with_own_folders(base)


@pytest.fixture(scope="session")
def comfy_ade(comfy_ade_base) -> ComfyServer:
    """A real ComfyUI server with the two packs and AnimateDiff-Evolved beside this package."""
    nodes = (*PACK_NODES, "ACN_SparseCtrlLoaderAdvanced", "ADE_AnimateDiffLoaderGen1", "ADLTest_RecordSparseCtrl")
    server = _start_with_nodes(comfy_ade_base, nodes, "IPAdapter_plus, Advanced-ControlNet and AnimateDiff-Evolved")
    yield server
    server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # A failing test that used the server gets the server's log tail in its report.
    report = yield
    funcargs = getattr(item, "funcargs", {})
    server = funcargs.get("comfy") or funcargs.get("comfy_packs") or funcargs.get("comfy_ade")
    if report.failed and isinstance(server, ComfyServer):
        report.sections.append((f"ComfyUI log tail ({server.log_path})", server.log_tail()))
    return report
