"""`python -m trainer generate`: the teacher's training clips (AnimateDiff-Lightning 3.1).

Each rank renders prompts with its own base model plus the AnimateDiff v2 teacher (`model.teacher`):
DPM-Solver++(2M), 32 trailing steps on the AnimateDiff schedule, CFG 7.5 against the empty prompt, 16
frames. The output folder is `generate.output` when set (every rank writes there); otherwise it is the
path of the rank's dataset when that is of kind "latent_shards", so the ranks table pools the clips per
style as in the paper's Table 1, and ranks on other kinds of data have nothing to generate.

Clip i of a folder uses prompt i mod len(prompts) and the seed `clip_seed(seed, i)`; shard s holds clips
[s * K, (s + 1) * K) and the ranks writing one folder take the shards round robin. A clip depends only on
its prompt, seed, base model and teacher, and a shard is always computed in the same batches, so after a
kill the rerun keeps listed shards, adopts complete unlisted ones and recomputes the rest: the folder ends
exactly as an uninterrupted run leaves it (see trainer/shards.py for the atomic writes).
"""
from __future__ import annotations

import contextlib
import csv
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from lightning_core import sampling, schedule
from lightning_core.files import atomic_path
from trainer import shards
from trainer.shards import DTYPES
from trainer.config import Config, check, rank_config
from trainer.data import DataError

log = logging.getLogger("trainer.generate")

SHARD_PREFIX = "clips"


def clip_seed(seed: int, index: int) -> int:
    """The noise seed of clip `index` (independent of ranks, batches and restarts)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def read_prompts(path: str, column: str = "name") -> list[str]:
    """Prompts from a .txt (one per line, blank lines skipped) or .csv (`column`) file."""
    file = Path(path)
    if not path or not file.is_file():
        raise DataError(f"generate.prompts: {path!r} is not an existing .txt or .csv file")
    if file.suffix.lower() == ".csv":
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise DataError(f"generate.prompts: {file} has no column {column!r} (generate.prompt_column)")
            prompts = [(row[column] or "").strip() for row in reader]
    else:
        prompts = file.read_text(encoding="utf-8").splitlines()
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise DataError(f"generate.prompts: {file} holds no prompts")
    return prompts


def output_plan(cfg: Config, rank: int, world_size: int) -> tuple[Path, int, int] | None:
    """(output folder, this rank's position among its writers, number of writers), or None: nothing to do."""
    if cfg.generate.output:
        return Path(cfg.generate.output), rank, world_size
    name = rank_config(cfg, rank).dataset
    ds = cfg.data.datasets.get(name)
    if ds is None:
        raise DataError(f"rank {rank}'s dataset {name!r} is not defined in [data.datasets]")
    if ds.kind != "latent_shards":
        return None
    if not ds.path:
        raise DataError(f"data.datasets.{name}.path is empty: generate needs a folder to write to")
    writers = [r for r in range(world_size) if rank_config(cfg, r).dataset == name]
    return Path(ds.path), writers.index(rank), len(writers)


def shard_records(cfg: Config, prompts: list[str], number: int, num_clips: int, base_name: str, teacher_name: str):
    """The records (what to render) of shard `number`."""
    g = cfg.generate
    first = number * g.clips_per_shard
    return [{"index": i, "prompt": prompts[i % len(prompts)], "seed": clip_seed(g.seed, i), "base": base_name,
             "teacher": teacher_name, "steps": g.steps, "cfg_scale": g.cfg_scale, "sampler": "dpmpp_2m"}
            for i in range(first, min(first + g.clips_per_shard, num_clips))]


@torch.no_grad()
def sample_clips(base, teacher, prompts: list[str], seeds: list[int], frames: int, size: int, steps: int,
                 cfg_scale: float, negative_prompt: str = "") -> torch.Tensor:
    """Teacher latents [b, frames, 4, size/8, size/8]: DPM-Solver++(2M) with classifier-free guidance."""
    device = base.vae.quant_conv.weight.device
    h = size // 8
    noise = torch.stack([torch.randn((frames, 4, h, h), generator=torch.Generator().manual_seed(s)) for s in seeds])
    b = len(prompts)
    context = torch.cat([base.encode_prompts(prompts), base.encode_prompts([negative_prompt]).expand(b, -1, -1)])
    context = context.repeat_interleave(frames, dim=0)  # [(2 b f), 77, d]: cond clips first, then uncond

    def eps(x, t):
        e_cond, e_uncond = base.unet(torch.cat([x, x]), torch.cat([t, t]), context, frames, motion=teacher).chunk(2)
        return e_uncond + cfg_scale * (e_cond - e_uncond)

    # The sigmas sit on training timesteps; rounding drops float noise so the teacher sees the integer it knows.
    to_t = lambda sigma: schedule.sigma_to_timestep(sigma.cpu()).round().float().to(device)  # noqa: E731
    sigmas = schedule.get_sigmas_trailing(steps, device)
    x = noise.to(device).flatten(0, 1) * sigmas[0]
    latents = sampling.sample_dpmpp_2m(sampling.EpsDenoiser(eps, to_t), x, sigmas, disable=True)
    return latents.unflatten(0, (b, frames))


def write_mp4(path: Path, pixels: torch.Tensor, fps: int) -> None:
    """float pixels [f, 3, H, W] in [-1, 1] -> an mp4v file, written under a temporary name and renamed."""
    frames = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    with atomic_path(path, keep_suffix=True) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()


def _adoptable(path: Path, records: list[dict]) -> bool:
    """A complete shard file left unlisted by a kill between its rename and the manifest append."""
    try:
        return path.is_file() and shards.read_records(path) == records
    except Exception:  # an unreadable leftover is simply recomputed
        return False


def _device(cfg: Config) -> torch.device:
    if cfg.run.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def _autocast(cfg: Config, device):
    """bf16 autocast on CUDA when run.mixed_precision says so (as in training); CPU runs float32."""
    if device.type == "cuda" and cfg.run.mixed_precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def main(cfg: Config, rank: int = 0, world_size: int = 1) -> None:
    """Renders this rank's shards of its output folder (see the module docstring)."""
    from trainer import distributed
    from trainer.models import load_motion, write_tiny_models
    from trainer.sd15 import load_base_model

    check(cfg, "generate", world_size)
    g = cfg.generate
    if cfg.run.write_tiny_models:  # before any early return: it ends with a barrier every rank must reach
        write_tiny_models(cfg, rank)
    plan = output_plan(cfg, rank, world_size)
    if plan is None:
        log.info("generate: rank %d trains on dataset %r, which is not of kind latent_shards: nothing to render",
                 rank, rank_config(cfg, rank).dataset)
        distributed.barrier()
        return
    out, writer, writers = plan
    prompts = read_prompts(g.prompts, g.prompt_column)
    num_clips = g.num_clips or len(prompts)
    frames, size = g.frames or cfg.data.frames, g.size or cfg.data.size
    entry = rank_config(cfg, rank)
    done = shards.read_manifests(out) if out.is_dir() else {}
    sizes = {s: min(g.clips_per_shard, num_clips - s * g.clips_per_shard)
             for s in range(-(-num_clips // g.clips_per_shard)) if s % writers == writer}
    todo = [s for s in sizes if shards.shard_name(SHARD_PREFIX, s) not in done]
    total = sum(sizes.values())
    bar = tqdm(total=total, initial=total - sum(sizes[s] for s in todo), unit="clip", desc=f"generate {out.name}",
               disable=writer != 0, dynamic_ncols=True)
    if not todo:
        bar.close()
        distributed.barrier()
        return
    device = _device(cfg)
    base = load_base_model(entry.base, device=device, tokenizer_dir=cfg.model.tokenizer_dir or None)
    teacher = load_motion(cfg.model.teacher, device).requires_grad_(False).eval()
    base.unet.motion_layout(teacher)
    started, rendered, adopted = time.perf_counter(), 0, 0
    for number in todo:
        name = shards.shard_name(SHARD_PREFIX, number)
        for stale in out.glob(f".{name}.*.tmp"):  # a write cut short by a kill; this rank owns the shard now
            stale.unlink(missing_ok=True)
        records = shard_records(cfg, prompts, number, num_clips, Path(entry.base).name, Path(cfg.model.teacher).name)
        if not _adoptable(out / name, records):
            with _autocast(cfg, device):
                latents = torch.cat([
                    sample_clips(base, teacher, [r["prompt"] for r in records[j:j + g.batch_size]],
                                 [r["seed"] for r in records[j:j + g.batch_size]], frames, size, g.steps,
                                 g.cfg_scale, g.negative_prompt)
                    for j in range(0, len(records), g.batch_size)]).float()
            if g.save_mp4:
                for record, clip in zip(records, base.decode_video(latents)):
                    write_mp4(out / "mp4" / f"clip-{record['index']:08d}.mp4", clip, g.fps)
            shards.write_shard(out, name, {"latents": latents.to(DTYPES[g.latent_dtype])}, records)
            rendered += len(records)
        else:
            adopted += len(records)
        shards.append_manifest(out, rank, name, records)
        bar.update(len(records))
    bar.close()
    seconds = time.perf_counter() - started
    log.info("generate: rank %d wrote %d clips to %s in %.1f s (%.3f clips/s), adopted %d", rank, rendered, out,
             seconds, rendered / max(seconds, 1e-9), adopted)
    distributed.barrier()
