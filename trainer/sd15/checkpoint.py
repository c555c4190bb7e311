"""Reading SD1.x-family single-file checkpoints into a frozen BaseModel, and writing tiny random ones.

A single-file checkpoint (original LDM layout) holds three models under three prefixes; everything
else in it (EMA copies, schedule buffers, CLIP's position_ids, ...) is ignored. Architectures are
inferred from tensor shapes and every part loads strictly.
"""

import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lightning_core.files import atomic_path
from lightning_core.formats import MotionFormatError, load_state_dict
from lightning_core.motion_module import MotionModuleConfig

from .clip import CLIPConfig, CLIPTextEncoder
from .tokenizer import ByteTokenizer, CLIPTokenizer, TokenizerError
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
# Present in many SD1.x files (transformers' CLIP buffer, sometimes corrupted to non-integers by merges, which
# ComfyUI rounds): positions are always 0..76, so it is ignored.
IGNORED_CLIP_KEYS = ("embeddings.position_ids",)

TINY_UNET = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(True, True),
                       context_dim=32)
TINY_VAE = VAEConfig(channels=32, channel_mult=(1, 1, 1, 1), num_res_blocks=1)  # 4 levels: still 8x downscale
TINY_CLIP = CLIPConfig(vocab_size=ByteTokenizer.vocab_size, width=32, layers=2, intermediate=128)


class BaseModelError(ValueError):
    """A file is not a usable SD1.x-family base model checkpoint."""


class BaseModel(nn.Module):
    """A frozen image base model: UNet, VAE, CLIP text encoder and tokenizer."""

    def __init__(self, unet, vae, text_encoder, tokenizer, path=None):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer = tokenizer
        self.path = path

    @property
    def config(self):
        return self.unet.config

    @property
    def vae_scale_factor(self):
        return self.vae.scale_factor

    @torch.no_grad()
    def encode_prompts(self, prompts):
        """list of prompts -> CLIP last hidden states [b, 77, context_dim]."""
        if self.tokenizer is None:
            raise BaseModelError(f"{self.path} was loaded without a tokenizer: give a tokenizer directory with "
                                 f"CLIP's vocab.json and merges.txt to encode prompts")
        ids = self.tokenizer(list(prompts)).to(self.text_encoder.final_layer_norm.weight.device)
        return self.text_encoder(ids)

    @torch.no_grad()
    def encode_video(self, pixels, generator=None, chunk=16):
        """pixels [b, f, 3, H, W] in [-1, 1] -> float32 latents [b, f, 4, H/8, W/8] (* 0.18215, posterior mean)."""
        b, f = pixels.shape[:2]
        weight = self.vae.quant_conv.weight
        frames = pixels.flatten(0, 1).to(weight.device, weight.dtype)
        latents = torch.cat([self.vae.encode(c, generator) for c in frames.split(chunk)])
        return latents.float().unflatten(0, (b, f))

    @torch.no_grad()
    def decode_video(self, latents, chunk=16):
        """float latents [b, f, 4, h, w] -> float32 pixels [b, f, 3, 8h, 8w], nominally [-1, 1]."""
        b, f = latents.shape[:2]
        weight = self.vae.post_quant_conv.weight
        frames = latents.flatten(0, 1).to(weight.device, weight.dtype)
        return torch.cat([self.vae.decode(c) for c in frames.split(chunk)]).float().unflatten(0, (b, f))


# ----------------------------------------------------------------------------- reading

def _part(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _refuse_other_families(sd, path):
    """Names the family of a checkpoint that is clearly not SD1.x (SDXL, SD2, not a single-file model)."""
    if any(k.startswith("conditioner.embedders.") for k in sd) or UNET_PREFIX + "label_emb.0.0.weight" in sd:
        raise BaseModelError(f"{path} is an SDXL checkpoint; the trainer needs an SD1.5-family base model")
    if any(k.startswith("cond_stage_model.model.") for k in sd):
        raise BaseModelError(f"{path} is an SD2.x checkpoint (OpenCLIP text encoder); the trainer needs an "
                             f"SD1.5-family base model")
    if UNET_PREFIX + "input_blocks.0.0.weight" not in sd:
        example = next(iter(sd), "(no tensors)")
        raise BaseModelError(f"{path} is not an SD1.5-family single-file checkpoint: it has no "
                             f"'{UNET_PREFIX}input_blocks.0.0.weight' (first key: {example!r}); a motion module, "
                             f"LoRA, diffusers folder or UNet-only file cannot be used as a base model")


def _infer(config_cls, part, name, path):
    try:
        return config_cls.from_state_dict(part)
    except (KeyError, StopIteration, IndexError) as e:
        raise BaseModelError(f"{path}: the {name} weights are incomplete or not SD1.5-shaped (missing {e})") from e


def _load_strict(module, part, prefix, path, ignored=()):
    """Loads `part` into a meta-device `module` by assignment, refusing missing, unexpected or misshapen tensors."""
    expected = module.state_dict()
    part = {k: v for k, v in part.items() if k not in ignored}
    missing = sorted(set(expected) - set(part))
    unexpected = sorted(set(part) - set(expected))
    misshapen = [f"{k} {tuple(part[k].shape)} (expected {tuple(v.shape)})"
                 for k, v in expected.items() if k in part and part[k].shape != v.shape]
    for problem, keys in (("is missing", missing), ("has unexpected", unexpected), ("has misshapen", misshapen)):
        if keys:
            raise BaseModelError(f"{path} {problem} {len(keys)} '{prefix}' tensor(s), e.g. "
                                 + ", ".join(prefix + k for k in keys[:3]))
    module.load_state_dict(part, strict=True, assign=True)
    return module


def _tokenizer(clip_config, tokenizer_dir, path, required):
    if tokenizer_dir:
        try:
            tokenizer = CLIPTokenizer(tokenizer_dir)
        except TokenizerError as e:
            raise BaseModelError(f"{path}: {e}") from e
        if tokenizer.vocab_size > clip_config.vocab_size:
            raise BaseModelError(f"{path}: tokenizer {tokenizer_dir} has {tokenizer.vocab_size} tokens, the text "
                                 f"encoder only {clip_config.vocab_size}")
        return tokenizer
    if clip_config.vocab_size == ByteTokenizer.vocab_size:
        return ByteTokenizer()
    if not required:
        return None
    raise BaseModelError(f"{path}: its CLIP text encoder needs the CLIP tokenizer; give a tokenizer directory "
                         f"holding vocab.json and merges.txt (openai/clip-vit-large-patch14's)")


def load_base_model(path, device="cpu", dtype=torch.float32, tokenizer_dir=None, require_tokenizer=True):
    """Reads an SD1.x-family single-file checkpoint (.safetensors, or .ckpt read with weights_only=True).

    Returns a frozen (requires_grad False, eval) BaseModel on `device` in `dtype`. `tokenizer_dir` holds
    CLIP's vocab.json + merges.txt; without it only the tiny byte-vocabulary models have a tokenizer, and
    loading fails unless `require_tokenizer=False` (e.g. with cached text embeddings: tokenizer None).
    """
    path = Path(path)
    if not path.is_file():
        raise BaseModelError(f"base model checkpoint {path} not found")
    try:
        sd = load_state_dict(path)
    except MotionFormatError as e:
        raise BaseModelError(f"{path} is not a readable checkpoint: {e}") from e
    return base_model_from_state_dict(sd, path, device, dtype, tokenizer_dir, require_tokenizer)


def base_model_from_state_dict(sd, path, device="cpu", dtype=torch.float32, tokenizer_dir=None,
                               require_tokenizer=True):
    """load_base_model on an in-memory single-file state dict; `path` names its source in errors."""
    _refuse_other_families(sd, path)
    parts = {prefix: _part(sd, prefix) for prefix in (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)}
    for prefix, part in parts.items():
        if not part:
            raise BaseModelError(f"{path} has no '{prefix}*' tensors: a single-file SD1.5 checkpoint holds the "
                                 f"UNet, VAE and CLIP text encoder")
    unet_cfg = _infer(UNetConfig, parts[UNET_PREFIX], "UNet", path)
    if unet_cfg.context_dim in (1024, 2048):
        raise BaseModelError(f"{path} has a UNet with context_dim {unet_cfg.context_dim} (SD2.x / SDXL); the "
                             f"trainer needs an SD1.5-family base model (context_dim 768)")
    if unet_cfg.in_channels != 4:
        raise BaseModelError(f"{path} has a UNet with {unet_cfg.in_channels} input channels (an inpainting or "
                             f"other conditioned model); the trainer needs a plain 4-channel SD1.5 UNet")
    vae_cfg = _infer(VAEConfig, parts[VAE_PREFIX], "VAE", path)
    clip_cfg = _infer(CLIPConfig, parts[CLIP_PREFIX], "CLIP text encoder", path)
    if clip_cfg.width != unet_cfg.context_dim:
        raise BaseModelError(f"{path}: the text encoder width {clip_cfg.width} does not match the UNet's "
                             f"context_dim {unet_cfg.context_dim}")
    with torch.device("meta"):
        unet, vae, clip = UNet(unet_cfg), VAE(vae_cfg), CLIPTextEncoder(clip_cfg)
    _load_strict(unet, parts[UNET_PREFIX], UNET_PREFIX, path)
    _load_strict(vae, parts[VAE_PREFIX], VAE_PREFIX, path)
    _load_strict(clip, parts[CLIP_PREFIX], CLIP_PREFIX, path, ignored=IGNORED_CLIP_KEYS)
    del parts
    model = BaseModel(unet, vae, clip, _tokenizer(clip_cfg, tokenizer_dir, path, require_tokenizer), path=path)
    return model.to(device=device, dtype=dtype).requires_grad_(False).eval()


# ----------------------------------------------------------------------------- writing

def checkpoint_state_dict(unet, vae, text_encoder):
    """The single-file (LDM) state dict of our three modules."""
    sd = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    sd.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
    sd.update({CLIP_PREFIX + k: v for k, v in text_encoder.state_dict().items()})
    return sd


def save_checkpoint(path, state_dict, metadata=None):
    """Writes a safetensors file atomically: a temporary file in the same folder, then os.replace."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, str(tmp), metadata=metadata)
    return path


def write_tiny_base_model(path, seed=0, style=0):
    """Writes a tiny random SD1.x-layout checkpoint (float32, ~1 MB); returns its path.

    `seed` draws the weights; `style` (0 = none) adds a small seeded delta on top, so different styles of
    one seed relate like fine-tunes of one base (e.g. RealisticVision and SD1.5). The global RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae, clip = UNet(TINY_UNET), VAE(TINY_VAE), CLIPTextEncoder(TINY_CLIP)
        sd = checkpoint_state_dict(unet, vae, clip)
        if style:
            gen = torch.Generator().manual_seed(1_000_003 * style + seed)
            sd = {k: v + 0.1 * v.std().nan_to_num(0.0) * torch.randn(v.shape, generator=gen) if v.numel() > 1 else v
                  for k, v in sd.items()}
    return save_checkpoint(path, sd, metadata={"adl_tiny_base_model": f"seed={seed} style={style}"})


def tiny_motion_config(unet_config):
    """The AnimateDiff (v2 layout) MotionModuleConfig that fits a UNet config: full SD1.5 or the tiny one."""
    return MotionModuleConfig(block_channels=unet_config.block_channels, down_layers=unet_config.num_res_blocks,
                              up_layers=unet_config.num_res_blocks + 1, mid_block=True, position_encoding_length=32)
