"""One optimizer step of every stage type (MSE + CFG, conditional D, unconditional D with multi-timestep and
x0 re-noising): finite losses, and gradients reach only the student (G phase) and the discriminator (D phase)."""
import json
import math

import torch

import trainer.train as train_module
from train_recipe import STAGES, load, recipe, restore_threads, tiny_assets  # noqa: F401
from trainer.distributed import DistInfo


def test_one_step_of_every_stage_type(tiny_assets, tmp_path, monkeypatch):
    held, phases = {}, []
    load_models = train_module.load_rank_models

    def capture_models(*args, **kwargs):
        held["models"] = load_models(*args, **kwargs)
        return held["models"]

    original_build_d = train_module.build_discriminator

    def capture_d(*args, **kwargs):
        held["d"] = original_build_d(*args, **kwargs)
        held["d_untrained"] = True
        return held["d"]

    step = train_module._step

    def checked_step(optimizer, params, grad_clip):
        models = held["models"]
        student = list(models.student.parameters())
        is_g = params[0] is student[0]
        frozen = list(models.base.parameters()) + list(models.teacher.parameters())
        assert all(p.grad is None and not p.requires_grad for p in frozen), "a frozen model got gradients"
        other = list(held["d"].parameters()) if is_g and "d" in held else ([] if is_g else student)
        assert all(p.grad is None for p in other), "G phase touched D or D phase touched the student"
        grads = [p.grad for p in params if p.grad is not None]
        assert len(grads) == len(params) and all(torch.isfinite(g).all() for g in grads)
        if is_g and held.pop("d_untrained", False):  # D's logit layer starts at zero: no opinion, no push
            assert not any(g.abs().sum() > 0 for g in grads)
        else:
            assert any(g.abs().sum() > 0 for g in grads)
        phases.append("G" if is_g else "D")
        return step(optimizer, params, grad_clip)

    monkeypatch.setattr(train_module, "load_rank_models", capture_models)
    monkeypatch.setattr(train_module, "build_discriminator", capture_d)
    monkeypatch.setattr(train_module, "_step", checked_step)
    stages = [dict(s, iterations=1 if s["loss"] == "mse" else 2) for s in STAGES]
    cfg = load(recipe(tiny_assets, tmp_path / "run", stages=stages))
    train_module.train(cfg, DistInfo())

    assert phases == ["G"] + ["G", "D"] * 4  # MSE: G only; adversarial: G then D, twice per stage
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [s["name"] for s in stages for _ in range(s["iterations"])]
    for row in rows:
        assert math.isfinite(row["loss_g"])
    assert all(math.isfinite(r["loss_d"]) and 0 <= r["d_accuracy"] <= 1 for r in rows[1:])
    exports = sorted(p.name for p in (tmp_path / "run" / "exports").iterdir())
    assert exports == [f"animatediff_lightning_{n}step_{k}.safetensors" for n in (1, 4) for k in ("comfyui", "diffusers")]


def test_non_finite_loss_names_stage_and_step(tiny_assets, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module.losses, "mse_distillation_loss", lambda a, b: (a - b).pow(2).mean() * float("nan"))
    cfg = load(recipe(tiny_assets, tmp_path / "run", stages=[dict(STAGES[0], iterations=1)]))
    try:
        train_module.train(cfg, DistInfo())
    except train_module.NonFiniteLossError as e:
        assert "stage 'mse' at iteration 0" in str(e) and "loss_g=nan" in str(e)
    else:
        raise AssertionError("a NaN loss did not stop the run")
