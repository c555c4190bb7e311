"""Fixtures: the small oracle models (diffusers / transformers, test-only), their single-file checkpoint, our model."""
from __future__ import annotations

import pytest
import torch

from fixtures.sd15 import import_comfy
from sd15_oracles import SMALL_CLIP, SMALL_UNET, SMALL_VAE, ldm_unet_state_dict, ldm_vae_state_dict, seeded
from trainer.sd15.checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is fastest, and on a loaded machine several threads spin-wait
    (measured: a small UNet forward 0.08 s with one thread, 5-8 s with two at load 13 on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def comfy_maps():
    """The host's `comfy` package in-process (for its key maps); not the `comfy` server fixture."""
    return import_comfy()


@pytest.fixture(scope="session")
def diffusers_unet():
    from diffusers import UNet2DConditionModel

    return seeded(lambda: UNet2DConditionModel(**SMALL_UNET), 1)


@pytest.fixture(scope="session")
def diffusers_vae():
    from diffusers import AutoencoderKL

    return seeded(lambda: AutoencoderKL(**SMALL_VAE), 2)


@pytest.fixture(scope="session")
def transformers_clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**SMALL_CLIP)
    config._attn_implementation = "eager"
    return seeded(lambda: CLIPTextModel(config), 3)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory, comfy_maps, diffusers_unet, diffusers_vae, transformers_clip):
    """A single-file checkpoint of the three small oracle models, written as an SD1.5 file would be."""
    from safetensors.torch import save_file

    sd = {UNET_PREFIX + k: v for k, v in ldm_unet_state_dict(comfy_maps, diffusers_unet).items()}
    sd.update({VAE_PREFIX + k: v for k, v in ldm_vae_state_dict(comfy_maps, diffusers_vae).items()})
    sd.update({"cond_stage_model.transformer." + k: v for k, v in transformers_clip.state_dict().items()})
    assert any(k.startswith(CLIP_PREFIX) for k in sd)
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]  # as old files
    sd["alphas_cumprod"] = torch.linspace(1, 0, 1000)  # LDM schedule buffers are ignored
    path = tmp_path_factory.mktemp("sd15") / "small.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture(scope="session")
def small_base(small_checkpoint):
    """Our BaseModel read from that file (no tokenizer: the tests feed token ids)."""
    from trainer.sd15 import load_base_model

    return load_base_model(small_checkpoint, require_tokenizer=False)
