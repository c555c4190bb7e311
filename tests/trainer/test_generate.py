"""Teacher clip generation: sampler and CFG checked against diffusers, kill -9 + resume == uninterrupted."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer import generate, shards
from trainer.config import Config, from_dict
from trainer.data import DataError, build_loader
from trainer.video_clips import read_frames

REPO = Path(__file__).resolve().parents[2]
NUM_CLIPS, PER_SHARD = 7, 2  # 4 shards, the last one short


def config(root: Path, out: str, **generate_kw) -> Config:
    return from_dict(Config, {
        "run": {"write_tiny_models": True, "device": "cpu"},
        "model": {"teacher": str(root / "teacher.safetensors")},
        "ranks": [{"base": str(root / "base.safetensors"), "dataset": "generated"}],
        "data": {"size": 16, "frames": 4,
                 "datasets": {"generated": {"kind": "latent_shards", "path": str(root / out)}}},
        "generate": {"prompts": str(root / "prompts.txt"), "num_clips": NUM_CLIPS, "clips_per_shard": PER_SHARD,
                     "batch_size": 2, "steps": 3, "seed": 5, **generate_kw}})


@pytest.fixture(scope="module")
def one_thread():
    """Bitwise comparisons across processes: every run computes with the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("generate")
    (root / "prompts.txt").write_text("a red car\n\na cat on a sofa\nwaves at sunset\n")
    generate.main(config(root, "reference", save_mp4=True))  # also writes the tiny base and teacher
    return root


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


def assert_consistent(folder: Path):
    """Manifests and shard files agree; no temporary files are left."""
    listed = shards.read_manifests(folder)
    assert sorted(listed) == sorted(shard_bytes(folder)) == [shards.shard_name("clips", s) for s in range(4)]
    for name, records in listed.items():
        assert shards.read_records(folder / name) == records
    assert [r["index"] for records in listed.values() for r in records] == list(range(NUM_CLIPS))
    assert not list(folder.glob(".*tmp*"))


def test_reference_run_writes_prompts_seeds_and_latents(root):
    folder = root / "reference"
    assert_consistent(folder)
    records = [r for rs in shards.read_manifests(folder).values() for r in rs]
    assert [r["prompt"] for r in records] == ["a red car", "a cat on a sofa", "waves at sunset"] * 2 + ["a red car"]
    assert len({r["seed"] for r in records}) == NUM_CLIPS and records[0]["seed"] == generate.clip_seed(5, 0)
    row = shards.read_row(folder / "clips-000003.safetensors", ("latents",), 0)["latents"]
    assert row.shape == (4, 4, 2, 2) and row.dtype == torch.float16 and row.isfinite().all()
    batch = next(build_loader(config(root, "reference").data, "generated", 0, 1, None, batch_size=3))
    assert batch.latents.shape == (3, 4, 4, 2, 2) and batch.text_embeddings is None
    mp4s = sorted((folder / "mp4").glob("*.mp4"))
    assert [p.name for p in mp4s] == [f"clip-{i:08d}.mp4" for i in range(NUM_CLIPS)]
    assert read_frames(mp4s[0], [0, 1, 2, 3]).shape == (4, 16, 16, 3)


def test_teacher_sampler_matches_diffusers_dpm_solver_with_cfg(root):
    diffusers = pytest.importorskip("diffusers")
    from trainer.models import load_motion
    from trainer.sd15 import load_base_model

    base = load_base_model(root / "base.safetensors")
    teacher = load_motion(root / "teacher.safetensors", "cpu")
    seed, steps, scale = generate.clip_seed(5, 1), 6, 7.5
    # 32 px (4 x 4 latents): at 16 px the tiny UNet's GroupNorms see 2 values each and amplify float noise.
    ours = generate.sample_clips(base, teacher, ["a cat on a sofa"], [seed], 4, 32, steps, scale)

    scheduler = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear", beta_start=0.00085, beta_end=0.012, algorithm_type="dpmsolver++", solver_order=2,
        timestep_spacing="trailing", use_karras_sigmas=False)
    scheduler.set_timesteps(steps)
    context = torch.cat([base.encode_prompts(["a cat on a sofa"] * 4), base.encode_prompts([""] * 4)])
    sigma_max = scheduler.sigmas[0].item()  # diffusers' sample is the variance-preserving x_ve / sqrt(1 + sigma^2)
    x = torch.randn((4, 4, 4, 4), generator=torch.Generator().manual_seed(seed)) * sigma_max / (1 + sigma_max**2) ** 0.5
    with torch.no_grad():
        for t in scheduler.timesteps:
            cond, uncond = base.unet(torch.cat([x, x]), t.float().expand(8), context, 4, motion=teacher).chunk(2)
            x = scheduler.step(uncond + scale * (cond - uncond), t, x).prev_sample
    assert (ours[0] - x).abs().max() <= 1e-5 * x.abs().max()


RUNNER = """
import json, sys, time
import torch
torch.set_num_threads(1)
from trainer import generate, shards
from trainer.config import Config, from_dict
append = shards.append_manifest
def slow_append(*args, **kwargs):  # gives the test time to kill between shards
    append(*args, **kwargs)
    time.sleep(float(sys.argv[2]))
shards.append_manifest = slow_append
generate.main(from_dict(Config, json.loads(sys.argv[1])))
"""


def test_sigkill_mid_run_then_resume_gives_the_shards_of_an_uninterrupted_run(root):
    cfg = config(root, "killed")
    from trainer.config import to_dict
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(to_dict(cfg)), "1"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not shards.read_manifests(root / "killed") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    listed_at_kill = len(shards.read_manifests(root / "killed"))
    assert 1 <= listed_at_kill < 4
    generate.main(cfg)  # resume in this process
    assert_consistent(root / "killed")
    assert shard_bytes(root / "killed") == shard_bytes(root / "reference")


def fail_on_call(n, real, before_failing=None):
    """`real`, except that call n (1-based) runs `before_failing` and raises KeyboardInterrupt (a kill there)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) < n:
            return real(*args, **kwargs)
        if before_failing:
            before_failing(*args, **kwargs)
        raise KeyboardInterrupt
    return wrapper


def half_a_line(folder, rank, name, records, extra=None):
    with open(shards.manifest_path(folder, rank), "a") as f:
        f.write(json.dumps({"shard": name, "clips": records})[:40])


def test_failures_at_every_write_point_resume_exactly(root, monkeypatch):
    cfg, folder = config(root, "injected"), root / "injected"
    append, replace = shards.append_manifest, os.replace
    kills = [(shards, "append_manifest", fail_on_call(1, append, half_a_line)),  # torn manifest line (shard 0)
             (shards, "append_manifest", fail_on_call(2, append)),  # renamed but unlisted (shard 1)
             (shards.os, "replace", fail_on_call(1, replace))]  # temporary file never renamed (shard 2)
    for target, name, wrapper in kills:
        with monkeypatch.context() as m:
            m.setattr(target, name, wrapper)
            with pytest.raises(KeyboardInterrupt):
                generate.main(cfg)
    assert len(shards.read_manifests(folder)) == 2 and (folder / "clips-000001.safetensors").exists()
    assert list(folder.glob(".clips-000002.safetensors.*.tmp"))
    generate.main(cfg)
    assert_consistent(folder)
    assert shard_bytes(folder) == shard_bytes(root / "reference")
    lines = [json.loads(line) for m in folder.glob("manifest-*.jsonl") for line in m.read_text().splitlines()]
    assert sorted(entry["shard"] for entry in lines) == sorted(shard_bytes(folder))  # each shard listed once


def test_two_ranks_share_a_folder_round_robin(root):
    # Both ranks use the same base here, so the pooled folder must equal the one-rank reference.
    cfg = config(root, "pooled")
    cfg.ranks.append(cfg.ranks[0])
    for rank in (1, 0):
        generate.main(cfg, rank, 2)
    assert_consistent(root / "pooled")
    assert shard_bytes(root / "pooled") == shard_bytes(root / "reference")
    assert {json.loads(line)["shard"] for line in (root / "pooled/manifest-00001.jsonl").read_text().splitlines()} \
        == {"clips-000001.safetensors", "clips-000003.safetensors"}


def test_output_plan_and_prompt_files(tmp_path):
    cfg = from_dict(Config, {
        "ranks": [{"base": "sd15", "dataset": "webvid"}, {"base": "toon", "dataset": "anime"},
                  {"base": "toon2", "dataset": "anime"}],
        "data": {"datasets": {"webvid": {"kind": "webvid_csv", "path": "w.csv"},
                              "anime": {"kind": "latent_shards", "path": str(tmp_path / "anime")}}}})
    assert generate.output_plan(cfg, 0, 6) is None  # a WebVid rank renders nothing
    assert generate.output_plan(cfg, 4, 6) == (tmp_path / "anime", 2, 4)  # anime on ranks 1, 2, 4, 5
    cfg.generate.output = str(tmp_path / "all")
    assert generate.output_plan(cfg, 4, 6) == (tmp_path / "all", 4, 6)
    csv = tmp_path / "prompts.csv"
    csv.write_text('videoid,name\n1,"A dog, running"\n2,\n3,Sunset\n')
    assert generate.read_prompts(str(csv)) == ["A dog, running", "Sunset"]
    with pytest.raises(DataError, match="has no column 'caption'"):
        generate.read_prompts(str(csv), "caption")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="empty.txt holds no prompts"):
        generate.read_prompts(str(tmp_path / "empty.txt"))
