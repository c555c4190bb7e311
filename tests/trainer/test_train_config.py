"""trainer.config: TOML + --a.b overrides into one dataclass tree; every problem named by its key, all at once."""
import subprocess
import sys

import pytest

from train_recipe import REPO_ROOT
from trainer.config import (Config, ConfigError, RankConfig, changed_keys, check, config_digest, dump_toml, load_config,
                            paper_stages, parse_command_line, read_and_check, read_config, to_dict)
from trainer.__main__ import main

TOML = """
[run]
out_dir = "runs/x"
[[ranks]]
base = "a.safetensors"
dataset = "d"
[data.datasets.d]
kind = "folder"
path = "videos"
[[stages]]
name = "mse"
loss = "mse"
teacher_steps = 128
student_steps = 32
iterations = 10
"""


@pytest.fixture
def toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TOML)
    return path


def parse(*argv, world_size=1):
    return load_config(list(argv), world_size=world_size, check_files=False)


def test_toml_then_overrides_with_type_coercion(toml_file):
    cfg = parse("--config", str(toml_file), "--optim.lr", "1e-6", "--optim.grad_accum", "8",
                "--stages.0.timesteps", "[250, 500]", "--run.compile=true", "--run.out_dir", "elsewhere",
                "--data.datasets.d.path", "other")
    assert isinstance(cfg, Config)
    assert cfg.optim.lr == 1e-6 and cfg.optim.grad_accum == 8 and cfg.run.compile is True
    assert cfg.stages[0].timesteps == [250, 500] and cfg.run.out_dir == "elsewhere"
    assert cfg.data.datasets["d"].path == "other" and cfg.ranks[0].base == "a.safetensors"
    assert cfg.optim.mse_lr == 1e-5  # untouched default


def test_round_trip_through_the_saved_toml(toml_file, tmp_path):
    cfg = parse("--config", str(toml_file), "--optim.batch_size", "2")
    saved = tmp_path / "saved.toml"
    saved.write_text(dump_toml(to_dict(cfg)))
    assert to_dict(parse("--config", str(saved))) == to_dict(cfg)


def test_default_stages_are_the_paper_schedule():
    names = [(s.teacher_steps, s.student_steps, s.loss, s.discriminator) for s in paper_stages()]
    assert names[0] == (128, 32, "mse", "conditional") and len(names) == 9
    assert [n[:2] for n in names[1::2]] == [(32, 8), (8, 4), (4, 2), (2, 1)]
    assert [n[3] for n in names[1:3]] == ["conditional", "unconditional"]


@pytest.mark.parametrize("args, message", [
    (["--optim.learning_rate", "1"], "optim.learning_rate: unknown config key"),
    (["--optim.grad_accum", "2.5"], "optim.grad_accum: expected an integer"),
    (["--optim.grad_accum", "-2"], "optim.grad_accum: must be >= 1"),
    (["--run.compile", "yes"], "run.compile: expected true or false"),
    (["--run.device", "gpu0"], "run.device: must be one of 'auto', 'cpu', 'cuda'"),
    (["--stages.3.iterations", "1"], "stages.3"),
    (["--data.datasets.d.kind", "tarball"], "data.datasets.d.kind: must be one of 'webvid_csv'"),
    (["--stages.0.student_steps", "5"], "stages.0.teacher_steps: 128 must be a multiple of student_steps 5"),
    (["--checkpoint.keep", "1"], "checkpoint.keep: must be >= 2"),
    (["--checkpoint.export_dtype", "int8"], "checkpoint.export_dtype: must be one of 'float16'"),
    (["--run.on_nonfinite", "ignore"], "run.on_nonfinite: must be one of 'stop', 'skip'"),
    (["--ranks.0.dataset", "webvid"], "ranks.0.dataset: 'webvid' is not defined"),
    (["--optim.grad_accum"], "needs a value"),
    (["--optim.d_steps_per_g_step", "0"], "optim.d_steps_per_g_step: must be >= 1"),
    (["--optim.d_warmup_steps", "-1"], "optim.d_warmup_steps: must be >= 0"),
    (["--stages.0.loss", "adversarial", "--optim.d_warmup_steps", "10"],
     "optim.d_warmup_steps: must be < every adversarial stage's iterations"),
])
def test_bad_values_are_named(toml_file, args, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse("--config", str(toml_file), *args)


def test_every_problem_at_once_with_files_and_world_size(toml_file):
    """One pass reports type errors, range errors, missing files and a rank table that does not fit, in key order."""
    line = parse_command_line(["--config", str(toml_file), "--optim.grad_accum", "-1", "--data.size", "100",
                               "--run.seed", "x", "--stages.0.d_noise_timesteps", "[10]", "--optim.typo", "1"])
    with pytest.raises(ConfigError) as e:
        read_and_check(line, "train", world_size=3)
    keys = [p.split(":")[0] for p in e.value.problems]
    assert keys == ["run.seed", "optim.typo",  # types (run.seed once, though its default would pass)
                    "model.teacher", "ranks.0.base", "stages.0.d_noise_timesteps", "optim.grad_accum",
                    "data.size", "data.datasets.d.path"], e.value.problems
    cfg = read_config(parse_command_line(["--config", str(toml_file)]))
    assert check(cfg, "train", world_size=3, check_files=False) is cfg
    cfg.ranks.append(RankConfig("b.safetensors", "d"))
    with pytest.raises(ConfigError, match="ranks: 2 entries do not fit 3 ranks"):
        check(cfg, "train", world_size=3, check_files=False)
    assert check(cfg, "train", world_size=1, check_files=False) is cfg  # one process: ranks[0] alone


def test_command_line_exits_2_listing_every_problem(toml_file, tmp_path, capsys):
    code = main(["train", "--config", str(toml_file), "--optim.grad_accum", "-1", "--run.device", "tpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "optim.grad_accum: must be >= 1" in err and "run.device: must be one of" in err
    assert "ranks.0.base: 'a.safetensors' is not an existing file" in err
    proc = subprocess.run([sys.executable, "-m", "trainer.config", "--config", str(toml_file), "--optim.lr", "-1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "optim.lr: must be > 0" in proc.stderr and "Traceback" not in proc.stderr
    for name in ("a.safetensors", "teacher.ckpt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "videos").mkdir()
    proc = subprocess.run([sys.executable, "-m", "trainer.config", "--config", str(toml_file),
                           "--ranks.0.base", str(tmp_path / "a.safetensors"), "--data.datasets.d.path",
                           str(tmp_path / "videos"), "--model.teacher", str(tmp_path / "teacher.ckpt")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[optim]\n" in proc.stdout and "grad_accum = 4" in proc.stdout  # the resolved config, defaults included


def test_allow_changed_and_config_digest(toml_file):
    line = parse_command_line(["--config", str(toml_file), "--resume.allow_changed", "optim.lr", "stages.0.iterations",
                               "--optim.lr", "1e-6"])
    assert line.allow_changed == ["optim.lr", "stages.0.iterations"] and line.overrides == [("optim.lr", 1e-6)]
    a, b = parse("--config", str(toml_file)), parse("--config", str(toml_file), "--optim.lr", "1e-6",
                                                      "--run.max_steps", "7", "--stages.0.timesteps", "[500]")
    assert changed_keys(a, b) == ["optim.lr", "stages.0.timesteps"]  # run.max_steps may change on any resume
    assert config_digest(a) != config_digest(b)
    assert config_digest(a) == config_digest(parse("--config", str(toml_file), "--run.max_steps", "7"))


def test_unknown_key_and_bad_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TOML + "\n[optim]\nbeta1 = 0.0\n")
    with pytest.raises(ConfigError, match=r"'optim\.beta1'"):
        parse("--config", str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        parse("--config", str(tmp_path / "missing.toml"))
    (tmp_path / "broken.toml").write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("--config", str(tmp_path / "broken.toml"))
