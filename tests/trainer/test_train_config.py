"""trainer.config: TOML + --a.b overrides into one dataclass tree; bad keys and types named in the error."""
import pytest

from trainer.config import Config, ConfigError, dump_toml, load_config, paper_stages, to_dict

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


def test_toml_then_overrides_with_type_coercion(toml_file):
    cfg = load_config(["--config", str(toml_file), "--optim.lr", "1e-6", "--optim.grad_accum", "8",
                       "--stages.0.timesteps", "[250, 500]", "--run.compile=true", "--run.out_dir", "elsewhere",
                       "--data.datasets.d.path", "other"])
    assert isinstance(cfg, Config)
    assert cfg.optim.lr == 1e-6 and cfg.optim.grad_accum == 8 and cfg.run.compile is True
    assert cfg.stages[0].timesteps == [250, 500] and cfg.run.out_dir == "elsewhere"
    assert cfg.data.datasets["d"].path == "other" and cfg.ranks[0].base == "a.safetensors"
    assert cfg.optim.mse_lr == 1e-5  # untouched default


def test_round_trip_through_the_saved_toml(toml_file, tmp_path):
    cfg = load_config(["--config", str(toml_file), "--optim.batch_size", "2"])
    saved = tmp_path / "saved.toml"
    saved.write_text(dump_toml(to_dict(cfg)))
    assert to_dict(load_config(["--config", str(saved)])) == to_dict(cfg)


def test_default_stages_are_the_paper_schedule():
    names = [(s.teacher_steps, s.student_steps, s.loss, s.discriminator) for s in paper_stages()]
    assert names[0] == (128, 32, "mse", "conditional") and len(names) == 9
    assert [n[:2] for n in names[1::2]] == [(32, 8), (8, 4), (4, 2), (2, 1)]
    assert [n[3] for n in names[1:3]] == ["conditional", "unconditional"]


@pytest.mark.parametrize("args, message", [
    (["--optim.learning_rate", "1"], "optim.learning_rate"),
    (["--optim.grad_accum", "2.5"], "optim.grad_accum: expected an integer"),
    (["--run.compile", "yes"], "run.compile: expected true or false"),
    (["--stages.3.iterations", "1"], "stages.3"),
    (["--data.datasets.d.kind", "tarball"], "dataset kind"),
    (["--stages.0.student_steps", "5"], "multiple of student_steps"),
    (["--checkpoint.keep", "1"], "checkpoint.keep"),
    (["--optim.grad_accum"], "needs a value"),
])
def test_bad_overrides_are_named(toml_file, args, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_config(["--config", str(toml_file)] + args)


def test_unknown_key_and_bad_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TOML + "\n[optim]\nbeta1 = 0.0\n")
    with pytest.raises(ConfigError, match=r"'optim\.beta1'"):
        load_config(["--config", str(bad)])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(["--config", str(tmp_path / "missing.toml")])
    (tmp_path / "broken.toml").write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(["--config", str(tmp_path / "broken.toml")])
