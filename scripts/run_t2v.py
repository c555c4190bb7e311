"""The main job: start a real ComfyUI with this package and run the 4-step text-to-video workflow.

    .venv/bin/python scripts/run_t2v.py [--models DIR] [--prompt TEXT] [--seed N] [--size PX]

Runs `workflows/api/animatediff_lightning_4step_t2v.json` as shipped (SD1.5 checkpoint
`v1-5-pruned-emaonly.safetensors` + `animatediff_lightning_4step_comfyui.safetensors`, 16 frames,
CFG 1, Euler at the trailing timesteps) and prints the paths of the WEBP and MP4 it wrote.

Model files are looked up in `--models` (a ComfyUI `models/` folder; default `.host/ComfyUI/models`,
or `$ADL_MODELS`). When the official files are not there, random-weight stand-ins with the exact
official key layouts and full SD1.5 shapes are generated once into `.host/standins/` (never into your
models folder) and the run says so loudly: the video is then noise, by design, and sampled at a
reduced size so that a CPU finishes in minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The real-server harness and the stand-in builders live in tests/; the repo root goes first so that
# `lightning_core` is the package, not the tests/lightning_core folder.
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from host import MODEL_DIRS, PACKAGE_DIR_NAME, output_files  # noqa: E402
from host.comfy_server import HOST_DIR, ComfyServer  # noqa: E402

WORKFLOW = REPO / "workflows" / "api" / "animatediff_lightning_4step_t2v.json"
RUN_DIR = REPO / ".host" / "run_t2v"  # the server's --base-directory: input/, output/, custom_nodes/
STANDIN_DIR = REPO / ".host" / "standins"
STANDIN_SIZE = 256
CHECKPOINT_NODE, MOTION_NODE, PROMPT_NODE, LATENT_NODE, SAMPLER_NODE = "1", "2", "4", "5", "6"


def banner(lines: list[str]) -> None:
    width = max(map(len, lines)) + 4
    print("\n" + "!" * width)
    for line in lines:
        print(f"! {line.ljust(width - 4)} !")
    print("!" * width + "\n", flush=True)


def find_motion_file(models: Path, name: str) -> str | None:
    """The workflow's Lightning file, or its `_diffusers` twin (the loader reads either naming)."""
    for candidate in (name, name.replace("_comfyui.", "_diffusers.")):
        if (models / "animatediff_models" / candidate).is_file():
            return candidate
    return None


def write_standins(checkpoint_name: str, motion_name: str) -> None:
    """Random-weight files with the official names, key layouts and full SD1.5 shapes (once, cached)."""
    from fixtures import sd15
    from lightning_core import formats

    checkpoint = STANDIN_DIR / "checkpoints" / checkpoint_name
    motion = STANDIN_DIR / "animatediff_models" / motion_name
    if not checkpoint.is_file():
        print(f"writing a random SD1.5 checkpoint stand-in (860M-parameter UNet, fp16, ~2.1 GB) to {checkpoint} ...",
              flush=True)
        sd15.write_checkpoint(checkpoint, *sd15.build_models("full")[:3])
    if not motion.is_file():
        print(f"writing a random AnimateDiff-Lightning motion module stand-in (fp16, ~0.9 GB) to {motion} ...",
              flush=True)
        motion.parent.mkdir(parents=True, exist_ok=True)
        weights = {k: v.half() for k, v in sd15.random_motion_state_dict("full").items()}
        formats.save_motion_module(motion, weights, layout="original")


def model_paths_config(folders: list[Path]) -> Path:
    """An extra_model_paths.yaml pointing ComfyUI's model folders at `folders` (first match wins)."""
    lines = []
    for i, folder in enumerate(folders):
        lines.append(f"adl_run_{i}:")
        lines.append(f"  base_path: {json.dumps(str(folder))}")
        lines.extend(f"  {name}: {name}" for name in MODEL_DIRS)
    path = RUN_DIR / "extra_model_paths.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def follow(log_path: Path, stop: threading.Event) -> None:
    """Echoes the server log (ComfyUI's own progress bars included) while the prompt runs."""
    with open(log_path, errors="replace") as log:
        log.seek(0, os.SEEK_END)
        while not stop.is_set():
            chunk = log.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            stop.wait(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("ADL_MODELS", HOST_DIR / "models")),
                        help="a ComfyUI models/ folder holding checkpoints/ and animatediff_models/")
    parser.add_argument("--prompt", help="replaces the workflow's prompt")
    parser.add_argument("--seed", type=int, help="replaces the workflow's seed (42)")
    parser.add_argument("--size", type=int, help="width and height in pixels (workflow: 512; stand-ins: "
                        f"{STANDIN_SIZE})")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the video")
    args = parser.parse_args()

    prompt = json.loads(WORKFLOW.read_text())
    checkpoint_name = prompt[CHECKPOINT_NODE]["inputs"]["ckpt_name"]
    motion_name = prompt[MOTION_NODE]["inputs"]["model_name"]
    have_checkpoint = (args.models / "checkpoints" / checkpoint_name).is_file()
    have_motion = find_motion_file(args.models, motion_name)

    folders = [args.models]
    size = args.size
    if have_checkpoint and have_motion:
        prompt[MOTION_NODE]["inputs"]["model_name"] = have_motion
        print(f"official weights: {args.models}/checkpoints/{checkpoint_name} and "
              f"{args.models}/animatediff_models/{have_motion}")
    else:
        missing = [f"{args.models}/{sub}/{name}" for sub, name, found in
                   (("checkpoints", checkpoint_name, have_checkpoint), ("animatediff_models", motion_name, have_motion))
                   if not found]
        banner(["NO OFFICIAL WEIGHTS FOUND: USING RANDOM-WEIGHT STAND-INS.",
                *(f"missing: {m}" for m in missing),
                "The stand-ins have the official key layouts and full SD1.5 shapes, but random values:",
                "the pipeline runs for real, and the video it writes is NOISE, not a picture.",
                "Put the official files in the folders above (or pass --models DIR) for a real video."])
        write_standins(checkpoint_name, motion_name)
        folders = [STANDIN_DIR]  # both names must come from the stand-ins, never one real and one random
        size = size or STANDIN_SIZE
    if size:
        prompt[LATENT_NODE]["inputs"].update(width=size, height=size)
    if args.prompt:
        prompt[PROMPT_NODE]["inputs"]["text"] = args.prompt
    if args.seed is not None:
        prompt[SAMPLER_NODE]["inputs"]["seed"] = args.seed

    (RUN_DIR / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = RUN_DIR / "custom_nodes" / PACKAGE_DIR_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    config = model_paths_config(folders)

    t0 = time.monotonic()
    server = ComfyServer.start(RUN_DIR, extra_args=["--extra-model-paths-config", str(config)])
    print(f"ComfyUI up on {server.url} in {time.monotonic() - t0:.0f}s (log: {server.log_path})", flush=True)
    stop = threading.Event()
    echo = threading.Thread(target=follow, args=(server.log_path, stop), daemon=True)
    echo.start()
    try:
        t0 = time.monotonic()
        result = server.run(prompt, timeout=args.timeout)
        stop.set()
        echo.join()
        result.raise_for_error()
        seconds = time.monotonic() - t0
    finally:
        stop.set()
        server.stop()
    videos = [p for node in sorted(result.outputs) for p in output_files(RUN_DIR, result, node)]
    width, height = prompt[LATENT_NODE]["inputs"]["width"], prompt[LATENT_NODE]["inputs"]["height"]
    print(f"\n16 frames at {width}x{height} in {seconds:.0f}s"
          + ("" if have_checkpoint and have_motion else " (RANDOM STAND-IN WEIGHTS: the video is noise)"))
    for path in videos:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
