"""Shared pytest fixtures.

The ComfyUI server is started lazily: only tests that ask for `comfy` (or
`comfy_base`) pay for it, so tests/lightning_core/ runs without a server.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Lets unit tests `import lightning_core` straight from the checkout.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from host import MODEL_DIRS, PACKAGE_DIR_NAME  # noqa: E402
from host.comfy_server import ComfyServer  # noqa: E402

pytest_plugins = ["fixtures.comfy_models"]  # model-file fixtures shared by tests/nodes and tests/workflows


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory) -> Path:
    """A fresh ComfyUI --base-directory with this repo installed as a custom node."""
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    # A symlink, so the server runs the working tree as it is now.
    (base / "custom_nodes" / PACKAGE_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # A failing test that used the server gets the server's log tail in its report.
    report = yield
    server = getattr(item, "funcargs", {}).get("comfy")
    if report.failed and isinstance(server, ComfyServer):
        report.sections.append((f"ComfyUI log tail ({server.log_path})", server.log_tail()))
    return report
