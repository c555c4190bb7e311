"""Frozen SD1.5-family base models in pure PyTorch (original single-file layout): UNet, VAE, CLIP, tokenizer."""

from .checkpoint import (TINY_CLIP, TINY_UNET, TINY_VAE, BaseModel, BaseModelError, base_model_from_state_dict,
                         load_base_model, save_checkpoint, tiny_motion_config, write_tiny_base_model)
from .clip import CLIPConfig, CLIPTextEncoder
from .tokenizer import ByteTokenizer, CLIPTokenizer, TokenizerError
from .unet import UNet, UNetConfig
from .vae import SCALING_FACTOR, VAE, VAEConfig

__all__ = ["BaseModel", "BaseModelError", "ByteTokenizer", "CLIPConfig", "CLIPTextEncoder", "CLIPTokenizer",
           "SCALING_FACTOR", "TINY_CLIP", "TINY_UNET", "TINY_VAE", "TokenizerError", "UNet", "UNetConfig", "VAE",
           "VAEConfig", "base_model_from_state_dict", "load_base_model", "save_checkpoint", "tiny_motion_config",
           "write_tiny_base_model"]
