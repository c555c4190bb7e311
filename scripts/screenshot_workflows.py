"""Writes docs/workflows/<family>.png: one workflow of each family as the real ComfyUI frontend draws it, legible at
the width a repository page shows a picture (about 880 px).

Starts the real ComfyUI server (.host/ComfyUI, built by scripts/setup.sh) with this repository as a custom
node and opens each family's workflow in headless Chromium. A graph wider than one strip is cut between its
columns into strips that are stacked top to bottom, each drawn at a zoom where node titles and widget values can
be read. A workflow with node types the frontend does not know is not photographed: the script names them and
exits non-zero. Workflows that use IPAdapter_plus or Advanced-ControlNet nodes need those packs, which the server
gets from ../shared/third_party (as the tests install them).

    .venv/bin/python scripts/screenshot_workflows.py [family ...]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from host import (PACKAGE_DIR_NAME, THIRD_PARTY, link_node_packs, missing_node_packs,  # noqa: E402
                  uses_node_packs)
from host.comfy_server import ComfyServer  # noqa: E402
from host.frontend import QUIET_SETTINGS, open_frontend  # noqa: E402

OUT_DIR = ROOT / "docs" / "workflows"
# One picture per family: the others of a family differ in a file name or a few widget values.
FAMILIES = {
    "t2v": "animatediff_lightning_4step_t2v.json",
    "long": "animatediff_lightning_4step_t2v_travel.json",
    "v2v": "animatediff_lightning_4step_v2v_canny.json",
    "v2v_long": "animatediff_lightning_4step_v2v_long.json",
    "ipadapter_long": "animatediff_lightning_4step_t2v_ipadapter_long.json",
}
# Only the graph: no fps counter, no zoom toolbar, no focus-mode menu button; and text drawn at any zoom
# (by default litegraph draws bare boxes once its font would be smaller than 8 px).
SETTINGS = {**QUIET_SETTINGS, "Comfy.Graph.CanvasInfo": False, "Comfy.Graph.CanvasMenu": False,
            "LiteGraph.Canvas.MinFontSizeForLOD": 0}
HIDE_MENU_BUTTON = ".comfy-menu-hamburger { display: none !important; }"
PAGE_WIDTH = 880  # CSS pixels a repository page gives a picture
MIN_ZOOM = 0.9  # litegraph's 14 px titles and 12 px widget text stay readable down to about this zoom
MARGIN = 16  # canvas units around each strip
TOP_MARGIN = 36  # room for the source badge litegraph draws above a node's title
GAP = 10  # pixels between stacked strips
MAX_KIB = 400  # what a README image should stay under

# Zoom and pan so that the canvas box [left, top, right, bottom] fills the view at `zoom`; returns its page box.
SHOW = """([left, top, right, bottom, zoom]) => {
    const canvas = app.canvas.canvas, ds = app.canvas.ds;
    ds.scale = zoom;
    ds.offset[0] = -left;
    ds.offset[1] = -top;
    app.canvas.setDirty(true, true);
    const origin = canvas.getBoundingClientRect();
    return {x: origin.left, y: origin.top, width: (right - left) * zoom, height: (bottom - top) * zoom};
}"""


def balanced_bands(spans, widest):
    """Consecutive columns (left, right) grouped into as few bands as keep each within `widest` (a wider column
    stands alone), the bands as even as that allows: [[left, right], ...]."""
    def width(i, j):  # columns i..j-1
        return spans[j - 1][1] - spans[i][0]

    count, i = 0, 0
    while i < len(spans):  # greedy: the fewest bands
        j = i + 1
        while j < len(spans) and width(i, j + 1) <= widest:
            j += 1
        count, i = count + 1, j
    # then the grouping into `count` bands whose widest band is narrowest
    best = {(len(spans), 0): (0.0, [])}
    for i in range(len(spans) - 1, -1, -1):
        for left in range(1, count + 1):
            options = [(max(width(i, j), best[(j, left - 1)][0]), [[spans[i][0], spans[j - 1][1]]] + best[(j, left - 1)][1])
                       for j in range(i + 1, len(spans) + 1) if (j, left - 1) in best]
            if options:
                best[(i, left)] = min(options, key=lambda option: option[0])
    return best[(0, count)][1]


def strips(boxes, reroutes):
    """The graph cut between columns into canvas boxes [left, top, right, bottom], each at most PAGE_WIDTH / MIN_ZOOM
    wide where a column allows."""
    columns = {}
    for x, y, w, h in boxes:
        columns.setdefault(round(x), []).append((x, y, w, h))
    spans = [(x, max(bx + bw for bx, _, bw, _ in columns[x])) for x in sorted(columns)]
    found = []
    for left, right in balanced_bands(spans, PAGE_WIDTH / MIN_ZOOM - 2 * MARGIN):
        inside = [(y, y + h) for x, y, w, h in boxes if left <= x < right]
        inside += [(y - 10, y + 10) for x, y in reroutes if left <= x <= right]
        found.append([left - MARGIN, min(a for a, _ in inside) - TOP_MARGIN, right + MARGIN,
                      max(b for _, b in inside) + MARGIN])
    return found


def photograph(frontend, scale):
    """The loaded graph as one PNG (bytes): its strips drawn one by one and stacked."""
    boxes = list(frontend.node_boxes().values())
    reroutes = [(x, y) for _, x, y in frontend.reroutes()]
    bands = strips(boxes, reroutes)
    zoom = min(PAGE_WIDTH / max(right - left for left, _, right, _ in bands), 1.25)  # one zoom for the picture
    shots = []
    for left, top, right, bottom in bands:
        frontend.page.set_viewport_size({"width": PAGE_WIDTH + 40, "height": int((bottom - top) * zoom) + 40})
        clip = frontend.page.evaluate(SHOW, [left, top, right, bottom, zoom])
        frontend.page.wait_for_timeout(300)  # two animation frames and the DOM widgets catching up
        shots.append(Image.open(io.BytesIO(frontend.page.screenshot(clip=clip))).convert("RGB"))
    width = max(shot.width for shot in shots)
    gap = round(GAP * scale)
    sheet = Image.new("RGB", (width, sum(shot.height for shot in shots) + gap * (len(shots) - 1)), (90, 90, 90))
    y = 0
    for shot in shots:
        sheet.paste(Image.new("RGB", (width, shot.height), shot.getpixel((1, 1))), (0, y))  # canvas colour
        sheet.paste(shot, (0, y))
        y += shot.height + gap
    out = io.BytesIO()
    sheet.quantize(256, method=Image.Quantize.FASTOCTREE).save(out, "PNG", optimize=True)  # flat colours: no loss to see
    return out.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("families", nargs="*", help="default: all of " + ", ".join(FAMILIES))
    parser.add_argument("--scale", type=float, default=1.5, help="device pixel ratio (sharper text on HiDPI screens)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for the PNG files")
    args = parser.parse_args()
    families = args.families or list(FAMILIES)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"no workflow family {unknown}; choose from {', '.join(FAMILIES)}")
    args.out.mkdir(parents=True, exist_ok=True)

    with_packs = any(uses_node_packs(ROOT / "workflows" / FAMILIES[family]) for family in families)
    if with_packs and missing_node_packs():
        sys.exit(f"{', '.join(missing_node_packs())} not found in {THIRD_PARTY}, which workflows with "
                 "IPAdapter_plus or Advanced-ControlNet nodes need")

    failed = []
    with tempfile.TemporaryDirectory(prefix="adl_screenshots_") as tmp:
        base = Path(tmp)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / PACKAGE_DIR_NAME).symlink_to(ROOT, target_is_directory=True)
        if with_packs:
            link_node_packs(base / "custom_nodes")
        server = ComfyServer.start(base)
        try:
            with open_frontend(server.url, viewport=(PAGE_WIDTH, 900), scale=args.scale, settings=SETTINGS) as frontend:
                frontend.focus_mode()
                frontend.page.add_style_tag(content=HIDE_MENU_BUTTON)
                for family in families:
                    path = ROOT / "workflows" / FAMILIES[family]
                    missing = frontend.load(json.loads(path.read_text()))
                    if missing:
                        failed.append(path.name)
                        print(f"{path.name}: the frontend does not know {sorted(set(missing))}; no screenshot")
                        continue
                    png = args.out / f"{family}.png"
                    png.write_bytes(photograph(frontend, args.scale))
                    kib = png.stat().st_size // 1024
                    print(f"wrote {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png} from {path.name} "
                          f"({kib} KB)" + (f"; over {MAX_KIB} KB, try a smaller --scale" if kib > MAX_KIB else ""))
        finally:
            server.stop()
    if failed:
        sys.exit(f"no screenshot for {', '.join(failed)}")


if __name__ == "__main__":
    main()
