"""Reading single-file checkpoints (full SD1.5 key set on the meta device, tiny files on disk) and clear errors."""
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sd15_oracles import ldm_unet_state_dict, ldm_vae_state_dict
from fixtures.sd15 import FULL_UNET, VAE, comfy_dir
from lightning_core.motion_module import MotionModuleSet
from trainer.sd15 import (BaseModelError, ByteTokenizer, UNetConfig, base_model_from_state_dict, load_base_model,
                          tiny_motion_config, write_tiny_base_model)
from trainer.sd15.checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

TOKENIZER_DIR = comfy_dir() / "comfy" / "sd1_tokenizer"


@pytest.fixture(scope="module")
def full_state_dict(comfy_maps):
    """The full SD1.5 single-file key set and shapes, on the meta device, named by ComfyUI's maps from diffusers."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**FULL_UNET), AutoencoderKL(**VAE)
        clip = CLIPTextModel(CLIPTextConfig.from_json_file(str(comfy_dir() / "comfy" / "sd1_clip_config.json")))
    sd = {UNET_PREFIX + k: v for k, v in ldm_unet_state_dict(comfy_maps, unet).items()}
    sd.update({VAE_PREFIX + k: v for k, v in ldm_vae_state_dict(comfy_maps, vae).items()})
    sd.update({"cond_stage_model.transformer." + k: v for k, v in clip.state_dict().items()})
    sd[CLIP_PREFIX + "embeddings.position_ids"] = torch.empty(1, 77, device="meta")
    return sd


def test_full_sd15_key_set_and_shapes_load_strictly(full_state_dict):
    base = base_model_from_state_dict(full_state_dict, "sd15-meta", device="meta", tokenizer_dir=TOKENIZER_DIR)
    assert base.config == UNetConfig()  # SD1.5: 320 channels, (1, 2, 4, 4), 2 res blocks, attention on 3 levels
    assert base.vae.config.channel_mult == (1, 2, 4, 4) and base.vae.scale_factor == 8
    assert base.text_encoder.config.layers == 12 and base.text_encoder.config.num_heads == 12
    counts = [sum(p.numel() for p in m.parameters()) for m in (base.unet, base.vae, base.text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert base.tokenizer.vocab_size == 49408
    with torch.device("meta"):
        motion = MotionModuleSet(tiny_motion_config(base.config))
    assert len(base.unet.motion_layout(motion)) == 4 * 2 + 4 * 3 + 1


def test_full_sd15_without_a_tokenizer_is_a_clear_error(full_state_dict):
    with pytest.raises(BaseModelError, match="sd15-meta: .*vocab.json and merges.txt"):
        base_model_from_state_dict(full_state_dict, "sd15-meta", device="meta")


@pytest.mark.parametrize("change,message", [
    (lambda sd: sd.update({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(1)}),
     "is an SDXL checkpoint"),
    (lambda sd: sd.update({"cond_stage_model.model.ln_final.weight": torch.ones(1)}), "is an SD2.x checkpoint"),
    (lambda sd: [sd.__setitem__(k, torch.zeros(v.shape[0], 1024)) for k, v in list(sd.items())
                 if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))], "context_dim 1024"),
    (lambda sd: sd.pop(UNET_PREFIX + "middle_block.2.out_layers.3.bias"),
     r"is missing 1 'model.diffusion_model.' tensor.*middle_block\.2\.out_layers\.3\.bias"),
    (lambda sd: sd.update({VAE_PREFIX + "decoder.mid.block_1.conv1.bias": torch.zeros(7)}),
     r"misshapen .*decoder\.mid\.block_1\.conv1\.bias \(7,\)"),
    (lambda sd: sd.update({CLIP_PREFIX + "encoder.layers.0.mlp.fc3.bias": torch.zeros(128)}),
     r"unexpected 1 'cond_stage_model.transformer.text_model.' tensor.*mlp\.fc3\.bias"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith(VAE_PREFIX)], "has no 'first_stage_model.\\*' tensors"),
])
def test_wrong_checkpoints_are_refused_naming_the_file(tmp_path, change, message):
    sd = load_file(str(write_tiny_base_model(tmp_path / "tiny.safetensors")))
    change(sd)
    bad = tmp_path / "bad_model.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(BaseModelError, match="bad_model.safetensors.*" + message):
        load_base_model(bad)


def test_unreadable_or_foreign_files_are_refused_naming_the_file(tmp_path):
    with pytest.raises(BaseModelError, match="base model checkpoint .*nothing.safetensors not found"):
        load_base_model(tmp_path / "nothing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a model at all" * 10)
    with pytest.raises(BaseModelError, match="garbage.safetensors is not a readable checkpoint"):
        load_base_model(garbage)
    motion = tmp_path / "motion.safetensors"
    save_file(MotionModuleSet(tiny_motion_config(UNetConfig(model_channels=32, channel_mult=(1, 2),
                                                            num_res_blocks=1))).state_dict(), str(motion))
    with pytest.raises(BaseModelError, match="motion.safetensors is not an SD1.5-family single-file checkpoint"):
        load_base_model(motion)


def test_pickles_load_only_without_code(tmp_path):
    sd = load_file(str(write_tiny_base_model(tmp_path / "tiny.safetensors", seed=3)))
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": sd, "global_step": 470000}, ckpt)  # as original .ckpt files are wrapped
    a, b = load_base_model(tmp_path / "tiny.safetensors"), load_base_model(ckpt)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": sd, "x": Payload()}, protocol=2))
    with pytest.raises(BaseModelError, match="evil.ckpt is not a readable checkpoint.*refused"):
        load_base_model(evil)
    assert not marker.exists()


def test_tiny_base_models_are_deterministic_distinct_and_leave_the_rng_alone(tmp_path):
    state = torch.random.get_rng_state()
    paths = [write_tiny_base_model(tmp_path / f"{name}.safetensors", seed=seed, style=style)
             for name, seed, style in (("a", 0, 0), ("a_again", 0, 0), ("b", 1, 0), ("a_styled", 0, 1))]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files left
    a, a_again, b, styled = (load_file(str(p)) for p in paths)
    key = UNET_PREFIX + "input_blocks.1.0.in_layers.2.weight"
    assert all(torch.equal(a[k], a_again[k]) for k in a)
    assert (a[key] - b[key]).abs().mean() > 10 * (a[key] - styled[key]).abs().mean() > 0  # styles: fine-tune-like


def test_tiny_base_model_runs_end_to_end(tmp_path):
    base = load_base_model(write_tiny_base_model(tmp_path / "tiny.safetensors"), dtype=torch.bfloat16)
    assert isinstance(base.tokenizer, ByteTokenizer) and not base.training
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in base.parameters())
    prompts = base.encode_prompts(["a red ball", "a blue cube"])
    assert prompts.shape == (2, 77, base.config.context_dim)
    latents = base.encode_video(torch.rand(2, 3, 3, 32, 32) * 2 - 1)
    assert latents.shape == (2, 3, 4, 4, 4) and latents.dtype == torch.float32
    assert base.decode_video(latents).shape == (2, 3, 3, 32, 32)
    motion = MotionModuleSet(tiny_motion_config(base.config)).to(torch.bfloat16)
    x = latents.flatten(0, 1).to(torch.bfloat16)
    eps = base.unet(x, torch.full((6,), 999.0), prompts.repeat_interleave(3, 0), num_frames=3, motion=motion)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
