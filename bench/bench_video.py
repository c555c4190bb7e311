"""Benchmark: loading a long 512x512 video to LATENT, streamed (ADL_LoadVideoLatent) against load-all paths.

Three paths over the same synthetic MP4 (written once with opencv):
  streamed   ADL_LoadVideoLatent: decode + encode 16 frames at a time into a preallocated LATENT
  load-all   ADL_LoadVideo (whole IMAGE, float32) + VAE Encode of that IMAGE
  stock      ComfyUI's LoadVideo -> GetVideoComponents (whole IMAGE) + VAE Encode
Peak memory is the sampled RSS above the level before each run, time is wall time; one process, paths
alternated, ComfyUI imported in-process and every run under torch.inference_mode() as ComfyUI runs nodes.

The loader table encodes with a stand-in (8x8 average pooling to 4 channels, ~free), so it shows what each
path itself holds and costs. The SD VAE (real architecture, random weights) is then timed on a few frames:
its time per frame and its activations per batch are the same on every path and add to every row.

    .venv/bin/python bench/bench_video.py [--frames 256 1024] [--size 512] [--vae-frames 2]
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_t2v import PeakMemory, import_host  # noqa: E402  (the same in-process host and RSS sampler)

MiB = 2 ** 20
NEEDS = {"streamed": 0.1, "load-all": 1.3, "stock": 2.1}  # expected peak in units of the float32 frames


def float_frames(frames, size):
    """MiB of `frames` float32 RGB frames: what an IMAGE of the whole video holds."""
    return frames * size * size * 3 * 4 / MiB


class PoolingEncoder:
    """Stands in for a VAE in the loader table: [n, H, W, 3] -> [n, 4, H/8, W/8], at almost no cost."""

    def encode(self, pixels, batch=16):
        """In batches, as ComfyUI's VAE.encode does, so its temporaries are one batch's, not the video's."""
        pooled = [torch.nn.functional.avg_pool2d(pixels[i:i + batch].movedim(-1, 1) * 2 - 1, 8)
                  for i in range(0, pixels.shape[0], batch)]
        return torch.cat([torch.cat([x, x.mean(1, keepdim=True)], 1) for x in pooled])


def write_video(path, frames, size, fps=24):
    """A moving colour gradient (compresses and decodes like real footage, unlike noise)."""
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    for i in range(frames):
        writer.write(np.roll(base, (3 * i, 5 * i), (0, 1)))
    writer.release()


def paths(adl_video, stock_video, encoder):
    """name -> run(file) for the three loading paths."""
    selection = dict(force_rate=0.0, force_width=0, force_height=0, frame_load_cap=0, skip_first_frames=0,
                     select_every_nth=1)

    def streamed(file):
        return adl_video.LoadVideoLatent.execute(file=file, vae=encoder, frames_per_chunk=16, **selection).result[0]

    def load_all(file):
        images = adl_video.LoadVideo.execute(file=file, **selection).result[0]
        return {"samples": encoder.encode(images)}  # what VAE Encode does with the IMAGE

    def stock(file):
        video = stock_video.LoadVideo.execute(file).result[0]
        images = stock_video.GetVideoComponents.execute(video).result[0]
        return {"samples": encoder.encode(images)}

    return {"streamed": streamed, "load-all": load_all, "stock": stock}


def measure(run, file):
    gc.collect()
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        latent = run(file)
        seconds = time.perf_counter() - t0
    frames = latent["samples"].shape[0]
    del latent
    gc.collect()
    return seconds, memory.mib, frames


def sd_vae(size, frames):
    """Times the SD VAE encoder (real architecture, random weights) on `frames` frames; returns s/frame, MiB."""
    import comfy.model_management
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    params = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                           "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                           "attn_resolutions": [], "dropout": 0.0}}
    torch.manual_seed(0)
    vae = comfy.sd.VAE(sd=AutoencoderKL(**params).state_dict(), config={"params": params})
    pixels = torch.rand(frames, size, size, 3)
    vae.encode(pixels[:1, :64, :64])  # warm-up
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        vae.encode(pixels)
        seconds = time.perf_counter() - t0
    per_frame_bytes = vae.memory_used_encode((1, 3, size, size), torch.float32)
    comfy_batch = max(1, int(comfy.model_management.get_free_memory(vae.device) / per_frame_bytes))
    return seconds / frames, memory.mib, comfy_batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--vae-frames", type=int, default=2, help="frames the SD VAE is timed on (0: skip)")
    args = parser.parse_args()
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # freed tensors must leave the RSS for peaks to mean anything
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"})

    import_host()
    import folder_paths
    from comfy_extras import nodes_video as stock_video

    import adl.nodes.video as adl_video

    folder = Path(tempfile.mkdtemp(prefix="adl_bench_video_"))
    folder_paths.set_input_directory(str(folder))
    runs = paths(adl_video, stock_video, PoolingEncoder())
    rows = []
    with torch.inference_mode():
        for frames in args.frames:
            file = f"synthetic_{frames}.mp4"
            t0 = time.perf_counter()
            write_video(folder / file, frames, args.size)
            print(f"wrote {file} ({frames} frames, {(folder / file).stat().st_size / MiB:.0f} MiB) "
                  f"in {time.perf_counter() - t0:.0f}s", flush=True)
            results = {}
            for name, run in runs.items():
                need = NEEDS[name] * float_frames(frames, args.size)
                available = psutil.virtual_memory().available / MiB
                if need > 0.6 * available:  # a shared machine: do not push others into the OOM killer
                    print(f"  {name:9s} skipped: needs about {need:.0f} MiB, {available:.0f} MiB available", flush=True)
                    continue
                results[name] = measure(run, file)
                print(f"  {name:9s} {results[name][0]:7.1f}s  peak +{results[name][1]:8.0f} MiB", flush=True)
            rows.append((frames, results))
            (folder / file).unlink()
        vae = sd_vae(args.size, args.vae_frames) if args.vae_frames else None

    print(f"\n{datetime.date.today()} | {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.size}x{args.size}, encoder: 8x8 pooling stand-in\n")
    print("| frames | path | time s | peak MiB above start | time / streamed | peak / streamed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for frames, results in rows:
        base_s, base_mib, _ = results["streamed"]
        for name, (seconds, mib, count) in results.items():
            assert count == frames, (name, count, frames)
            print(f"| {frames} | {name} | {seconds:.1f} | {mib:.0f} | {seconds / base_s:.2f} | {mib / base_mib:.1f} |")
    print("\nfloat32 frames alone: " + ", ".join(f"{n}: {float_frames(n, args.size):.0f} MiB" for n, _ in rows))
    if vae:
        per_frame, mib, comfy_batch = vae
        print(f"SD VAE encoder (real architecture, random weights), {args.vae_frames} frames at {args.size}x"
              f"{args.size}: {per_frame:.2f} s/frame, peak +{mib:.0f} MiB for the batch; ComfyUI's VAE Encode "
              f"would batch {comfy_batch} frames per call here (by free memory), our chunk is 16 (also capped "
              f"by free memory). Add frames x {per_frame:.2f} s to every row's time.")


if __name__ == "__main__":
    main()
