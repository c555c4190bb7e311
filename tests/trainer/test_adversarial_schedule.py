"""optim.d_warmup_steps and optim.d_steps_per_g_step through train(): which optimizer steps, on which batches."""
import trainer.train as train_module
from train_recipe import load, recipe, restore_threads, tiny_assets  # noqa: F401
from trainer.distributed import DistInfo

STAGES = [
    dict(name="8to4_mse", loss="mse", teacher_steps=8, student_steps=4, iterations=1),
    dict(name="4to2_conditional", loss="adversarial", teacher_steps=4, student_steps=2, iterations=3, export=False),
]


def test_d_warmup_then_several_d_steps_per_student_step(tiny_assets, tmp_path, monkeypatch):
    steps, draws, stages = [], [], []
    step, draw = train_module._step, train_module.draw_micro_batches

    def record_draw(run, stage):
        draws.append(stage.config.name)
        stages[:] = [stage]
        return draw(run, stage)

    def record_step(optimizer, params, grad_clip):
        steps.append("g" if optimizer is stages[0].opt_g else "d")
        return step(optimizer, params, grad_clip)

    monkeypatch.setattr(train_module, "draw_micro_batches", record_draw)
    monkeypatch.setattr(train_module, "_step", record_step)
    data = recipe(tiny_assets, tmp_path / "run", stages=STAGES, optim={"d_warmup_steps": 1, "d_steps_per_g_step": 2})
    train_module.train(load(data), DistInfo())
    # MSE: one student step; adversarial: D alone twice (warm-up), then the student and D twice, twice
    assert steps == ["g", "d", "d", "g", "d", "d", "g", "d", "d"]
    assert draws == ["8to4_mse"] + ["4to2_conditional"] * 6  # each further D step on fresh micro-batches
