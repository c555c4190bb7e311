"""The memory plan: weights counted from the real modules, activations measured on the meta device, and a run
whose plan exceeds the device (here run.memory_limit_gib) refused before it trains."""
import copy

from train_recipe import STAGES, recipe, restore_threads, tiny_assets, write_config  # noqa: F401
from trainer import memory
from trainer.__main__ import main
from trainer.config import Config, paper_stages
from trainer.models import load_motion
from trainer.sd15 import load_base_model

SD15_PARAMETERS = 859_520_964 + 83_653_863 + 123_060_480  # UNet + VAE + CLIP text (trainer/README.md)


def _rows(plan):
    return {name.split(" (")[0]: size for name, size in plan.rows}


def test_full_size_plan_counts_the_real_modules():
    cfg = Config()
    cfg.stages = paper_stages()[1:3]
    cfg.data.frames, cfg.data.size = 2, 64  # the weights do not depend on it; keeps the meta forward short
    rows = _rows(memory.full_size_plan(cfg))
    motion = rows["student motion module"]
    assert rows["base model"] == 2 * SD15_PARAMETERS  # bf16, built on the meta device from the SD1.5 config
    assert rows["student Adam states"] == 2 * motion and rows["student gradients"] == motion
    assert 1.6 < motion / 2 ** 30 < 1.8  # AnimateDiff v2: ~453M fp32 parameters
    assert rows["discriminator Adam states"] == 2 * rows["discriminator"]


def test_activations_shrink_with_checkpointing_and_grow_with_frames():
    from trainer.sd15.unet import UNetConfig
    from lightning_core.motion_module import MotionModuleConfig

    def act(frames, checkpointing):
        small = UNetConfig(model_channels=64)  # SD1.5's layout at a fifth of the width: the same rules, faster
        return memory.activation_bytes(small, MotionModuleConfig(block_channels=small.block_channels), batch=1, frames=frames, size=64,
                                       num_flows=2, conditional=True, adversarial=True, checkpointing=checkpointing,
                                       element_size=2)

    full, checkpointed, double = act(2, False), act(2, True), act(4, True)
    assert checkpointed["student"] < full["student"] / 2 and checkpointed["discriminator"] < full["discriminator"]
    assert 1.8 < double["student"] / checkpointed["student"] < 2.2


def test_plan_of_the_tiny_run_and_refusal(tiny_assets, tmp_path, capsys):
    base = load_base_model(tiny_assets / "base_a.safetensors")
    teacher = load_motion(tiny_assets / "teacher.safetensors", "cpu")
    data = recipe(tiny_assets, tmp_path / "run", stages=[dict(STAGES[0], iterations=1), STAGES[1]])
    from train_recipe import load

    cfg = load(copy.deepcopy(data))
    rows = _rows(memory.plan(base.unet, base.vae, base.text_encoder, teacher, cfg, 2, cuda_bf16=False))
    assert rows["student motion module"] == sum(p.numel() * 4 for p in teacher.parameters()) + \
        sum(b.numel() * b.element_size() for b in teacher.buffers())
    assert rows["base model"] == sum(t.numel() * 4 for m in (base.unet, base.vae, base.text_encoder)
                                     for t in [*m.parameters(), *m.buffers()])
    data["run"]["memory_limit_gib"] = 0.001
    code = main(["train", "--config", str(write_config(tmp_path / "config.toml", data))])
    captured = capsys.readouterr()
    assert code == 1 and "memory plan per GPU" in captured.out
    assert "the memory plan needs" in captured.err and "than the 0.00 GiB of run.memory_limit_gib" in captured.err
    assert "discriminator Adam states" in captured.err and not (tmp_path / "run" / "checkpoints").exists()
