"""Skip-level teacher (SDXL-Lightning 3.4), separate G/D learning rates and the stage-end evaluation, on the
tiny recipe; and their config checks."""
import json

import pytest
import torch

import trainer.train as train_module
from train_recipe import load, recipe, restore_threads, tiny_assets  # noqa: F401
from trainer.config import ConfigError, check, paper_stages, teacher_steps
from trainer.distributed import DistInfo
from trainer.models import load_motion

STAGES = [
    dict(name="16to8_mse", loss="mse", teacher_steps=16, student_steps=8, iterations=1),
    dict(name="8to4_conditional", loss="adversarial", teacher_steps=8, student_steps=4, iterations=1, export=False),
    dict(name="4to2_unconditional", loss="adversarial", teacher_steps=4, student_steps=2, iterations=1,
         discriminator="unconditional", timesteps=[250, 500, 750, 1000], skip_level_teacher=True, export=False),
]


def test_skip_level_teacher_lrs_and_stage_end_eval(tiny_assets, tmp_path, monkeypatch):
    seen = {"plans": [], "teachers": [], "lrs": []}
    plan_timesteps, start_stage = train_module.distill.plan_timesteps, train_module.start_stage

    def record_plan(u0, teacher, student):
        seen["plans"].append((teacher, student))
        return plan_timesteps(u0, teacher, student)

    def record_stage(*args, **kwargs):
        stage = start_stage(*args, **kwargs)
        seen["teachers"].append({k: v.clone() for k, v in stage.teacher.state_dict().items()})
        seen["lrs"].append((stage.opt_g.param_groups[0]["lr"], stage.opt_d and stage.opt_d.param_groups[0]["lr"]))
        return stage

    monkeypatch.setattr(train_module.distill, "plan_timesteps", record_plan)
    monkeypatch.setattr(train_module, "start_stage", record_stage)
    data = recipe(tiny_assets, tmp_path / "run", stages=STAGES, optim={"g_lr": 2e-4, "d_lr": 3e-4})
    data["eval"] = {"every_stage": True, "num_prompts": 1, "reference_steps": 2, "save_mp4": False}
    train_module.train(load(data), DistInfo())

    # 4 -> 2 learns from the 8-step model (the 16 -> 8 student), 4 teacher steps per student step
    assert seen["plans"][-2:] == [(8, 2), (8, 2)]
    eight_step = load_motion(tmp_path / "run" / "exports" / "animatediff_lightning_8step_comfyui.safetensors", "cpu")
    assert all(torch.equal(seen["teachers"][2][k], v) for k, v in eight_step.state_dict().items())
    assert seen["lrs"] == [(1e-3, None), (2e-4, 3e-4), (2e-4, 3e-4)]
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval" / "eval.jsonl").read_text().splitlines()]
    assert [(r["label"], r["base"], r["student_steps"]) for r in rows] == [
        (s["name"], base, s["student_steps"]) for s in STAGES for base in ("a", "b")]
    assert all(r["latent_rmse"] > 0 for r in rows)


def test_skip_level_and_lr_checks(tiny_assets, tmp_path):
    assert [teacher_steps(paper_stages(), i) for i in range(9)] == [128, 32, 32, 8, 8, 4, 8, 2, 4]
    bad = [dict(STAGES[0], skip_level_teacher=True), dict(STAGES[1], skip_level_teacher=True),
           dict(STAGES[2], name="2to1_unconditional", teacher_steps=2, student_steps=1)]
    data = recipe(tiny_assets, tmp_path / "run", stages=bad, optim={"g_lr": -1.0})
    with pytest.raises(ConfigError) as e:
        check(load(data))
    text = str(e.value)
    assert "stages.0.skip_level_teacher: only for unconditional" in text
    assert "stages.1.skip_level_teacher: only for unconditional" in text
    assert "stages.2.skip_level_teacher: no earlier stage distils 2 steps" in text
    assert "optim.g_lr: must be > 0" in text
