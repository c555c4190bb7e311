"""Configs of small diffusers/transformers models (test-only oracles) and their single-file (LDM) state dicts.

The LDM key names come from ComfyUI's own conversion maps (comfy.utils.unet_to_diffusers,
comfy.diffusers_convert.convert_vae_state_dict), imported from the real host tree, so our key layout is
checked against a second source of truth rather than against itself.
"""
from __future__ import annotations

import torch

from fixtures.sd15 import comfy_unet_config

# A 3-level SD1.5 in miniature: 2 ResBlocks per level, attention on all but the last level, 8 heads,
# a context width (128, the small CLIP's) different from every channel width.
SMALL_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=128, attention_head_dim=8, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
SMALL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
)
SMALL_CLIP = dict(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu")


def seeded(build, seed):
    """build() under torch.manual_seed(seed), frozen and in eval mode; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval().requires_grad_(False)


def ldm_unet_state_dict(comfy, unet):
    """diffusers UNet -> `model.diffusion_model.`-less LDM state dict via ComfyUI's key map."""
    key_map = comfy.utils.unet_to_diffusers(comfy_unet_config(unet))
    sd = unet.state_dict()
    assert set(sd) <= set(key_map), sorted(set(sd) - set(key_map))[:5]
    return {key_map[k]: v for k, v in sd.items()}


def ldm_vae_state_dict(comfy, vae):
    return comfy.diffusers_convert.convert_vae_state_dict(vae.state_dict())
