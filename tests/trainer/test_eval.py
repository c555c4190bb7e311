"""`python -m trainer eval` (the paper's Table 2 protocol): the metrics' arithmetic against direct computations,
metric networks loaded from random weights in the official layouts, and the command end to end on tiny models."""
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

from train_recipe import load, recipe, restore_threads, run_trainer, tiny_assets, write_config  # noqa: F401
from trainer import eval as trainer_eval
from trainer.i3d import InceptionI3d, prepare_video


def _frechet_direct(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_matches_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 6, generator=g) @ torch.randn(6, 6, generator=g)
    b = torch.randn(30, 6, generator=g) * 0.5 + 1.0
    ours = trainer_eval.frechet_distance(a, b)
    assert ours == pytest.approx(_frechet_direct(a.double().numpy(), b.double().numpy()), rel=1e-6)
    assert trainer_eval.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fvd_with_random_i3d_weights_in_the_checkpoint_layout(tmp_path):
    """Random I3D weights saved under the shared PyTorch port's names load strictly; FVD = Frechet of the logits."""
    torch.manual_seed(0)
    net = InceptionI3d().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, as a trained checkpoint has
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    sd = net.state_dict()
    assert {"Conv3d_1a_7x7.conv3d.weight", "Mixed_5c.b3b.bn.running_var", "logits.conv3d.bias"} <= set(sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "i3d.safetensors"))
    torch.save(sd, tmp_path / "i3d.pt")
    for name in ("i3d.safetensors", "i3d.pt"):
        loaded = trainer_eval.load_i3d(str(tmp_path / name), "cpu")
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    g = torch.Generator().manual_seed(1)
    fake, real = (torch.rand(3, 4, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    feats = trainer_eval.i3d_features(loaded, fake, batch=2)
    with torch.no_grad():
        direct = net(prepare_video(fake)).mean(-1)
    assert feats.shape == (3, 400) and torch.allclose(feats, direct, atol=1e-5)
    fvd = trainer_eval.frechet_distance(feats, trainer_eval.i3d_features(loaded, real))
    with torch.no_grad():
        direct_real = net(prepare_video(real)).mean(-1)
    assert fvd == pytest.approx(_frechet_direct(direct.double().numpy(), direct_real.double().numpy()), rel=1e-5)
    with pytest.raises(trainer_eval.DataError, match="I3D"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
        trainer_eval.load_i3d(str(tmp_path / "bad.safetensors"), "cpu")


def test_clip_score_with_random_weights_equals_transformers_clip(tmp_path):
    """A random CLIP in the transformers layout: our towers give transformers' CLIPModel features, and the score is
    100 x the clipped cosine, averaged over frames and clips."""
    from transformers import CLIPConfig, CLIPModel

    from trainer.clip_score import load_clip_scorer
    from trainer.sd15 import ByteTokenizer

    config = CLIPConfig(text_config=dict(vocab_size=ByteTokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=1, max_position_embeddings=77,
                                         bos_token_id=256, eos_token_id=257, pad_token_id=257),
                        vision_config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=1, image_size=32, patch_size=8),
                        projection_dim=16)
    torch.manual_seed(0)
    reference = CLIPModel(config).eval()
    sd = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(sd, str(tmp_path / "clip.safetensors"))
    scorer = load_clip_scorer(str(tmp_path / "clip.safetensors"), "cpu", None)

    prompts = ["a red fox", "waves at sunset"]
    ids = ByteTokenizer()(prompts)
    g = torch.Generator().manual_seed(2)
    pixels = torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        text = reference.get_text_features(input_ids=ids)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        images = reference.get_image_features(pixel_values=(((pixels.flatten(0, 1) + 1) / 2) - mean) / std)
    assert torch.allclose(scorer.text_embeddings(prompts), text, atol=1e-5)
    assert torch.allclose(scorer.image_embeddings(pixels.flatten(0, 1)), images, atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(images.view(2, 3, -1), text[:, None], dim=-1)
    assert scorer.score(pixels, prompts) == pytest.approx(float((100 * cos.clamp(min=0)).mean()), rel=1e-5)


def test_eval_command_on_tiny_models(tiny_assets, tmp_path):
    """Seen and unseen bases, JSONL rows, grids, MP4s, cached reference; the student = the reference sampler
    (same module, steps and no CFG) has distance 0 and FVD 0, a 1-step student does not (no FVD without I3D)."""
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in InceptionI3d().state_dict().items()}, str(tmp_path / "i3d.safetensors"))
    data = recipe(tiny_assets, tmp_path / "run")
    data["eval"] = {"bases": [{"name": "tiny a", "path": str(tiny_assets / "base_a.safetensors"), "seen": True},
                              {"name": "tiny b", "path": str(tiny_assets / "base_b.safetensors"), "seen": False}],
                    "student": str(tiny_assets / "teacher.safetensors"), "student_steps": 2, "reference_steps": 2,
                    "reference_cfg": 1.0, "num_prompts": 3, "i3d": str(tmp_path / "i3d.safetensors")}
    config = write_config(tmp_path / "eval.toml", data)
    run_trainer(["eval", "--config", str(config)])
    out = tmp_path / "run" / "eval"
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [(r["base"], r["seen"], r["clips"]) for r in rows] == [("tiny a", True, 3), ("tiny b", False, 3)]
    for r in rows:
        assert r["latent_rmse"] == 0.0 and r["fvd"] == pytest.approx(0.0, abs=1e-6)
        assert r["frame_diff_student"] == r["frame_diff_reference"] > 0
    assert sorted(p.name for p in out.glob("*.png")) == ["tiny_a-2step.png", "tiny_b-2step.png"]
    assert len(list((out / "mp4").glob("*.mp4"))) == 6 and len(list((out / "reference").iterdir())) == 2

    run_trainer(["eval", "--config", str(config), "--eval.student_steps", "1", "--eval.i3d", '""'])
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["latent_rmse"] > 0 and "fvd" not in r for r in rows[2:])
    assert len(list((out / "reference").iterdir())) == 2  # the reference was rendered once per base

    proc = run_trainer(["eval", "--config", str(config), "--eval.student", str(tmp_path / "missing.safetensors")],
                       check=False)
    assert proc.returncode == 2 and "eval.student" in proc.stderr and "Traceback" not in proc.stderr
