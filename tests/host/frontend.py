"""Drive the real ComfyUI frontend that a ComfyServer serves, in headless Chromium via Playwright.

The browser is Debian's `chromium` (installed by scripts/setup.sh), never a Playwright download. Every
request that does not go to the server is aborted: the page talks to 127.0.0.1 only.
"""
from __future__ import annotations

import atexit
import base64
import os
from contextlib import contextmanager
from pathlib import Path

import requests
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM = Path(os.environ.get("ADL_CHROMIUM", "/usr/bin/chromium"))
APP_TIMEOUT_MS = 90_000  # the first start parses a few MB of JavaScript on a busy CPU

# Node definitions registered and the start-up graph loaded, so that it cannot replace ours later.
APP_READY = """() => window.app?.graph?.nodes.length > 0
    && "CheckpointLoaderSimple" in (window.LiteGraph?.registered_node_types ?? {})"""

# Server-side user settings that keep first-start dialogs and the minimap off the canvas.
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}

# The frontend hands the node types it could not find to every extension's afterConfigureGraph;
# this one keeps them for us, so the report is the frontend's own (what its missing-nodes dialog lists).
RECORD_MISSING_NODES = """() => {
    window.__adlMissingNodeTypes = null;
    app.registerExtension({
        name: "ADL.tests.missingNodeTypes",
        afterConfigureGraph(missing) {
            window.__adlMissingNodeTypes = missing.map((m) => (typeof m === "string" ? m : m.type));
        },
    });
}"""

LOAD = """async (workflow) => {
    window.__adlMissingNodeTypes = null;
    await app.loadGraphData(workflow);
    return window.__adlMissingNodeTypes;
}"""

# Nodes on the canvas whose type LiteGraph has no class for (the frontend draws them as red error boxes).
UNREGISTERED = """() => app.graph.nodes
    .filter((node) => !(node.type in LiteGraph.registered_node_types))
    .map((node) => node.type)"""

# Hands the app a file as a drop on the canvas does (app.handleFile), from base64 bytes.
HANDLE_FILE = """async ([name, type, data]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    await app.handleFile(new File([bytes], name, {type}));
}"""

# Title included: [x, y, width, height] in canvas coordinates.
NODE_BOXES = "() => Object.fromEntries(app.graph.nodes.map((node) => [node.id, [...node.boundingRect]]))"

# Native reroutes (points that long links pass through): [id, x, y].
REROUTES = "() => [...app.graph.reroutes.values()].map((reroute) => [reroute.id, ...reroute.pos])"

FIT_VIEW = """(margin) => {
    const boxes = app.graph.nodes.map((node) => node.boundingRect)
        .concat([...app.graph.reroutes.values()].map((reroute) => [reroute.pos[0] - 10, reroute.pos[1] - 10, 20, 20]));
    const left = Math.min(...boxes.map((b) => b[0])), top = Math.min(...boxes.map((b) => b[1]));
    const right = Math.max(...boxes.map((b) => b[0] + b[2])), bottom = Math.max(...boxes.map((b) => b[1] + b[3]));
    const canvas = app.canvas.canvas, ds = app.canvas.ds;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    ds.scale = Math.min((width - 2 * margin) / (right - left), (height - 2 * margin) / (bottom - top), 1.25);
    ds.offset[0] = width / 2 / ds.scale - (left + right) / 2;
    ds.offset[1] = height / 2 / ds.scale - (top + bottom) / 2;
    app.canvas.setDirty(true, true);
    const origin = canvas.getBoundingClientRect();
    return {x: origin.left + (left + ds.offset[0]) * ds.scale, y: origin.top + (top + ds.offset[1]) * ds.scale,
            width: (right - left) * ds.scale, height: (bottom - top) * ds.scale};
}"""


class FrontendError(RuntimeError):
    """The frontend did not start, or did not load a workflow."""


class Frontend:
    """One page of the ComfyUI frontend, with the app started."""

    def __init__(self, page: Page):
        self.page = page
        self.errors: list[str] = []  # uncaught page errors, for failure messages
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def load(self, workflow: dict) -> list[str]:
        """app.loadGraphData(workflow); returns the node types the frontend reported missing."""
        self.errors.clear()
        missing = self.page.evaluate(LOAD, workflow)
        if missing is None:  # loadGraphData returns early, after an error dialog, when configure() throws
            raise FrontendError(f"the frontend did not load the workflow; page errors: {self.errors}")
        return missing

    def drop_file(self, path: Path, mime_type: str) -> None:
        """Gives the frontend a file as if it were dropped on the canvas: a saved image or video with a workflow
        in it replaces the graph."""
        self.errors.clear()
        self.page.evaluate(HANDLE_FILE, [path.name, mime_type, base64.b64encode(path.read_bytes()).decode()])

    def graph_node_types(self) -> dict[str, str]:
        """{node id: type} of the graph on the canvas."""
        return self.page.evaluate("() => Object.fromEntries(app.graph.nodes.map((node) => [node.id, node.type]))")

    def unregistered_node_types(self) -> list[str]:
        return self.page.evaluate(UNREGISTERED)

    def graph_to_prompt(self) -> dict:
        """The API-format prompt the frontend itself would queue: app.graphToPrompt().output."""
        return self.page.evaluate("async () => (await app.graphToPrompt()).output")

    def node_boxes(self) -> dict[str, list[float]]:
        return self.page.evaluate(NODE_BOXES)

    def reroutes(self) -> list[list[float]]:
        return self.page.evaluate(REROUTES)

    def fit_view(self, margin: int = 40) -> dict:
        """Zooms and pans so that the whole graph fills the canvas; returns the graph's box on the page."""
        box = self.page.evaluate(FIT_VIEW, margin)
        self.page.wait_for_timeout(300)  # two animation frames and the DOM widgets catching up
        return box

    def focus_mode(self) -> None:
        """Hides the menus and side bars: only the canvas is left."""
        self.page.evaluate("() => app.extensionManager.command.execute('Workspace.ToggleFocusMode')")


_DRIVER = []


def _playwright():
    """The process's Playwright driver, started on first use and stopped at exit, so that several pages (one per
    server, e.g. the plain one and the one with the node packs) can be open at once."""
    if not _DRIVER:
        _DRIVER.append(sync_playwright().start())
        atexit.register(_DRIVER[0].stop)
    return _DRIVER[0]


@contextmanager
def open_frontend(server_url: str, viewport: tuple[int, int] = (1600, 900), scale: float = 1.0,
                  settings: dict = QUIET_SETTINGS):
    """Starts headless Chromium, opens the server's page and waits for `window.app`; yields a Frontend.

    `settings` are stored on the server first (they are per user there, not per page); `scale` is the
    device pixel ratio.
    """
    if not CHROMIUM.is_file():
        raise FrontendError(f"no Chromium at {CHROMIUM}: run `bash scripts/setup.sh` (apt-get install chromium)")
    for key, value in settings.items():
        requests.post(f"{server_url}/settings/{key}", json=value, timeout=30).raise_for_status()
    browser = _playwright().chromium.launch(executable_path=str(CHROMIUM))
    try:
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                      device_scale_factor=scale)
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server_url + "/")
                      else route.abort())
        context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        page = context.new_page()
        frontend = Frontend(page)
        page.goto(server_url + "/")
        try:
            page.wait_for_function(APP_READY, timeout=APP_TIMEOUT_MS)
        except PlaywrightTimeout as error:
            raise FrontendError(f"the frontend did not start at {server_url}: {error}; "
                                f"page errors: {frontend.errors}") from error
        page.evaluate(RECORD_MISSING_NODES)
        yield frontend
    finally:
        browser.close()
