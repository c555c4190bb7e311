"""`python -m trainer` fails early with a message naming what is wrong: config, files, architecture, data, resume."""
import pytest

from lightning_core import formats
from lightning_core.motion_module import MotionModuleConfig, MotionModuleSet
from train_recipe import STAGES, recipe, restore_threads, tiny_assets, write_config  # noqa: F401
from trainer import checkpoint
from trainer.__main__ import main

ONE_STEP = [dict(STAGES[0], iterations=1)]


def run_main(tmp_path, data, capsys, *extra):
    config = write_config(tmp_path / "config.toml", data)
    code = main(["train", "--config", str(config), *extra])
    return code, capsys.readouterr().err


def test_bad_config_key(tiny_assets, tmp_path, capsys):
    code, err = run_main(tmp_path, recipe(tiny_assets, tmp_path / "run"), capsys, "--optim.momentum", "0.9")
    assert code == 2 and "unknown config key 'optim.momentum'" in err


def test_missing_base_and_teacher_files(tiny_assets, tmp_path, capsys):
    data = recipe(tiny_assets, tmp_path / "run", stages=ONE_STEP, run={"write_tiny_models": False})
    data["ranks"][0]["base"] = str(tmp_path / "nowhere.safetensors")
    data["model"]["teacher"] = str(tmp_path / "no_teacher.safetensors")
    code, err = run_main(tmp_path, data, capsys)  # both named at once, before any model loads
    assert code == 2 and "Traceback" not in err
    assert f"ranks.0.base: '{tmp_path / 'nowhere.safetensors'}' is not an existing file" in err
    assert f"model.teacher: '{tmp_path / 'no_teacher.safetensors'}' is not an existing file" in err


def test_more_frames_than_the_teacher_covers(tiny_assets, tmp_path, capsys):
    data = recipe(tiny_assets, tmp_path / "run", stages=ONE_STEP)
    data["data"]["frames"] = 33  # the sampler nodes' rule, from lightning_core.context.check_frames
    code, err = run_main(tmp_path, data, capsys)
    assert code == 1 and "data.frames is 33 frames but this motion module's position encoding covers 32" in err


def test_wrong_base_architecture(tiny_assets, tmp_path, capsys):
    teacher = tmp_path / "wide_teacher.safetensors"  # a motion module for a UNet with other channels
    formats.save_motion_module(teacher, MotionModuleSet(MotionModuleConfig(block_channels=(64, 128), down_layers=1,
                                                                           up_layers=2)).state_dict())
    data = recipe(tiny_assets, tmp_path / "run", stages=ONE_STEP, model={"teacher": str(teacher)})
    code, err = run_main(tmp_path, data, capsys)
    assert code == 1 and "does not fit the teacher motion module" in err and "(64, 128)" in err
    data = recipe(tiny_assets, tmp_path / "run", stages=ONE_STEP)
    data["ranks"][0]["base"] = str(tiny_assets / "teacher.safetensors")  # a motion module is no base model
    code, err = run_main(tmp_path, data, capsys)
    assert code == 1 and "teacher.safetensors" in err and "model.diffusion_model" in err


def test_empty_dataset(tiny_assets, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    data = recipe(tiny_assets, tmp_path / "run", stages=ONE_STEP)
    data["data"]["datasets"]["synthetic"] = {"kind": "folder", "path": str(tmp_path / "empty")}
    code, err = run_main(tmp_path, data, capsys)
    assert code == 1 and "has no usable samples" in err


def test_resume_refuses_another_rank_table_and_incomplete_folders(tiny_assets, tmp_path, capsys):
    data = recipe(tiny_assets, tmp_path / "run", stages=ONE_STEP)
    assert run_main(tmp_path, data, capsys)[0] == 0
    data["ranks"] = data["ranks"][::-1]
    code, err = run_main(tmp_path, data, capsys)
    assert code == 1 and "another ranks table" in err
    broken = tmp_path / "run" / "checkpoints" / "step-00000009"
    broken.mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="not a complete checkpoint"):
        checkpoint.load(broken, 0)
    assert checkpoint.latest(tmp_path / "run" / "checkpoints").name == "step-00000001"
