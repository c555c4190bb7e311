"""Writes docs/workflows/<name>.png: each UI workflow as the real ComfyUI frontend draws it.

Starts the real ComfyUI server (.host/ComfyUI, built by scripts/setup.sh) with this repository as a custom
node, opens every workflows/*.json (or the files given) in headless Chromium, fits the graph to the view and
saves a screenshot. A workflow with node types the frontend does not know is not photographed: the script
names them and exits non-zero.

    .venv/bin/python scripts/screenshot_workflows.py [workflows/x.json ...] [--size 1600x900]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from host import PACKAGE_DIR_NAME  # noqa: E402
from host.comfy_server import ComfyServer  # noqa: E402
from host.frontend import QUIET_SETTINGS, open_frontend  # noqa: E402

OUT_DIR = ROOT / "docs" / "workflows"
# Only the graph: no fps counter, no zoom toolbar, no focus-mode menu button; and text drawn at any zoom
# (by default litegraph draws bare boxes once its font would be smaller than 8 px).
SETTINGS = {**QUIET_SETTINGS, "Comfy.Graph.CanvasInfo": False, "Comfy.Graph.CanvasMenu": False,
            "LiteGraph.Canvas.MinFontSizeForLOD": 0}
HIDE_MENU_BUTTON = ".comfy-menu-hamburger { display: none !important; }"
MARGIN = 24  # CSS pixels around the graph
MAX_KIB = 300  # what a README image should stay under


def parse_size(text):
    width, height = text.lower().split("x")
    return int(width), int(height)


def crop(box, size):
    """The graph's box on the page plus a margin, within the page."""
    left, top = max(0, box["x"] - MARGIN), max(0, box["y"] - MARGIN)
    right = min(size[0], box["x"] + box["width"] + MARGIN)
    bottom = min(size[1], box["y"] + box["height"] + MARGIN)
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workflows", nargs="*", type=Path, help="UI-format files (default: workflows/*.json)")
    parser.add_argument("--size", type=parse_size, default=(1600, 900),
                        help="page size in CSS pixels, WIDTHxHEIGHT; the PNG is cropped to the graph")
    parser.add_argument("--scale", type=float, default=1.5, help="device pixel ratio (sharper text)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for the PNG files")
    args = parser.parse_args()
    files = args.workflows or sorted((ROOT / "workflows").glob("*.json"))
    args.out.mkdir(parents=True, exist_ok=True)

    failed = []
    with tempfile.TemporaryDirectory(prefix="adl_screenshots_") as tmp:
        base = Path(tmp)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / PACKAGE_DIR_NAME).symlink_to(ROOT, target_is_directory=True)
        server = ComfyServer.start(base)
        try:
            with open_frontend(server.url, viewport=args.size, scale=args.scale, settings=SETTINGS) as frontend:
                frontend.focus_mode()
                frontend.page.add_style_tag(content=HIDE_MENU_BUTTON)
                for path in files:
                    missing = frontend.load(json.loads(path.read_text()))
                    if missing:
                        failed.append(path.name)
                        print(f"{path.name}: the frontend does not know {sorted(set(missing))}; no screenshot")
                        continue
                    box = frontend.fit_view(MARGIN)
                    png = args.out / f"{path.stem}.png"
                    frontend.page.screenshot(path=png, clip=crop(box, args.size))
                    kib = png.stat().st_size // 1024
                    print(f"wrote {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png} ({kib} KB)"
                          + (f"; over {MAX_KIB} KB, try a smaller --scale" if kib > MAX_KIB else ""))
        finally:
            server.stop()
    if failed:
        sys.exit(f"no screenshot for {', '.join(failed)}")


if __name__ == "__main__":
    main()
