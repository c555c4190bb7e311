"""The AnimateDiff motion module: temporal transformers placed after the spatial layers of an SD1.5 UNet.

Follows guoyww/AnimateDiff `animatediff/models/motion_module.py`. Parameter names are the original
ones, so `MotionModuleSet.load_state_dict` takes an official (or Lightning `_comfyui`) file as is.
One deliberate detail: the input GroupNorm is applied per frame, on `(b f) c h w`, as in the original
(diffusers' `AnimateDiffTransformer3D` normalises over all frames of a clip at once).

Every layer with weights is built from an `operations` namespace (`Linear`, `GroupNorm`, `LayerNorm`), as
ComfyUI's own models are: `torch.nn` by default (the trainer), the host's `comfy.ops` classes in ComfyUI, so
that low-VRAM partial loading, fp8 weight storage and manual casting reach the temporal layers too.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .context import check_frames, fuse_windows


@dataclass(frozen=True)
class MotionModuleConfig:
    """Shape of a motion-module set; `from_state_dict` reads it off a canonical state dict."""

    block_channels: tuple = (320, 640, 1280, 1280)
    down_layers: int = 2
    up_layers: int = 3
    mid_block: bool = True
    position_encoding_length: int | None = 32
    num_heads: int = 8

    @classmethod
    def from_state_dict(cls, sd):
        """Infers the config from the keys and shapes of a canonical (original-naming) state dict."""
        def count(prefix):
            return len({k.split(".")[3] for k in sd if k.startswith(prefix)})

        levels = len({k.split(".")[1] for k in sd if k.startswith("down_blocks.")})
        channels = tuple(sd[f"down_blocks.{i}.motion_modules.0.temporal_transformer.proj_in.weight"].shape[0]
                         for i in range(levels))
        pe = [v for k, v in sd.items() if k.endswith("pos_encoder.pe")]
        return cls(block_channels=channels, down_layers=count("down_blocks.0.motion_modules."),
                   up_layers=count("up_blocks.0.motion_modules."),
                   mid_block=any(k.startswith("mid_block.") for k in sd),
                   position_encoding_length=pe[0].shape[1] if pe else None)


def sinusoidal_position_encoding(length, channels):
    """Returns the [1, length, channels] sin/cos table of Vaswani et al. (2017)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, length, channels)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


def temporal_attention_bytes(batch, height, width, max_frames, num_heads=8, dtype_size=4):
    """Upper bound on the attention-score memory of one temporal layer at the UNet's finest level.

    A batch of `batch` latents of `height` x `width` splits into clips of f <= max_frames frames; each pixel of
    each clip attends over f frames per head: batch / f * h * w * heads * f * f scores = batch * h * w * heads * f.
    """
    return batch * height * width * num_heads * min(batch, max_frames) * dtype_size


class PositionalEncoding(nn.Module):
    """Adds a (loaded, not recomputed) position table along the frame axis."""

    def __init__(self, channels, length):
        super().__init__()
        self.register_buffer("pe", sinusoidal_position_encoding(length, channels))

    def forward(self, x):
        frames = x.shape[1]
        check_frames("the batch size (frame count)", frames, self.pe.shape[1],
                     "lower it, or use context windows or views")
        return x + self.pe[:, :frames].to(device=x.device, dtype=x.dtype)


class TemporalAttention(nn.Module):
    """Self-attention across frames, one sequence per spatial position (AnimateDiff's VersatileAttention)."""

    def __init__(self, channels, num_heads, position_encoding_length, operations=nn):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = operations.Linear(channels, channels, bias=False)
        self.to_k = operations.Linear(channels, channels, bias=False)
        self.to_v = operations.Linear(channels, channels, bias=False)
        self.to_out = nn.ModuleList([operations.Linear(channels, channels)])
        self.pos_encoder = (PositionalEncoding(channels, position_encoding_length)
                            if position_encoding_length else None)

    def forward(self, x, scale_multiplier=1.0):
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        b, f, c = x.shape
        q, k, v = (proj(x).view(b, f, self.num_heads, -1).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        scale = scale_multiplier / math.sqrt(c // self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return self.to_out[0](out.transpose(1, 2).reshape(b, f, c))


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020)."""

    def __init__(self, dim_in, dim_out, operations=nn):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4x inner width; `net.1` is the (parameter-free) dropout slot."""

    def __init__(self, channels, mult=4, operations=nn):
        super().__init__()
        self.net = nn.Sequential(GEGLU(channels, channels * mult, operations), nn.Identity(),
                                 operations.Linear(channels * mult, channels))

    def forward(self, x):
        return self.net(x)


class TemporalTransformerBlock(nn.Module):
    """Two pre-norm temporal self-attentions and a feed-forward, each with a residual."""

    def __init__(self, channels, num_heads, position_encoding_length, operations=nn):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(channels, num_heads, position_encoding_length, operations) for _ in range(2)])
        self.norms = nn.ModuleList([operations.LayerNorm(channels) for _ in range(2)])
        self.ff = FeedForward(channels, operations=operations)
        self.ff_norm = operations.LayerNorm(channels)

    def attend(self, x, scale_multiplier=1.0):
        """The two attentions with their residuals: the only part of the block that mixes frames."""
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), scale_multiplier) + x
        return x

    def forward(self, x, scale_multiplier=1.0, views=None):
        """`views` (window groups, weights; see `context.view_windows`): the attentions see each view's frames
        alone and their outputs are averaged per frame before the per-frame feed-forward (FreeNoise's order)."""
        if views is None:
            x = self.attend(x, scale_multiplier)
        else:
            x = fuse_windows(lambda frames: self.attend(frames, scale_multiplier), x, *views, dim=1)
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    """Per-frame GroupNorm, project in, temporal blocks over (b h w) sequences of f tokens, project out."""

    def __init__(self, channels, num_heads, position_encoding_length, operations=nn):
        super().__init__()
        self.norm = operations.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = operations.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, num_heads, position_encoding_length, operations)])
        self.proj_out = operations.Linear(channels, channels)

    def forward(self, x, num_frames, scale_multiplier=1.0, views=None):
        bf, c, h, w = x.shape
        b = bf // num_frames
        # Norm, projections and feed-forward act per token, so one rearrange up front serves them all.
        tokens = self.norm(x).view(b, num_frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, num_frames, c)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, scale_multiplier, views)
        tokens = self.proj_out(tokens)
        return tokens.view(b, h * w, num_frames, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)


class MotionModule(nn.Module):
    """One temporal layer: `x + effect * temporal_transformer(x)`; effect 1 and scale 1 are as trained.

    `scale_multiplier` multiplies the attention logits (lower: calmer motion, higher: livelier). `views`
    windows the temporal attention over the frames of each video (see `TemporalTransformerBlock.forward`), so a
    video may be longer than the position encoding.
    """

    def __init__(self, channels, num_heads, position_encoding_length, operations=nn):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, num_heads, position_encoding_length, operations)

    def forward(self, x, num_frames, effect=1.0, scale_multiplier=1.0, views=None):
        if x.shape[0] % num_frames:
            raise ValueError(f"batch of {x.shape[0]} latents is not a whole number of {num_frames}-frame videos")
        delta = self.temporal_transformer(x, num_frames, scale_multiplier, views)
        return x + delta if effect == 1.0 else x + effect * delta


class MotionBlock(nn.Module):
    """The motion modules of one UNet resolution level (AnimateDiff's `*_blocks.i.motion_modules`)."""

    def __init__(self, channels, layers, num_heads, position_encoding_length, operations=nn):
        super().__init__()
        self.motion_modules = nn.ModuleList(
            [MotionModule(channels, num_heads, position_encoding_length, operations) for _ in range(layers)])


class MotionModuleSet(nn.Module):
    """Every motion module of a UNet: down_blocks, up_blocks and the optional mid_block."""

    def __init__(self, config=MotionModuleConfig(), operations=nn):
        super().__init__()
        self.config = config
        args = (config.num_heads, config.position_encoding_length, operations)
        self.down_blocks = nn.ModuleList([MotionBlock(c, config.down_layers, *args) for c in config.block_channels])
        self.up_blocks = nn.ModuleList(
            [MotionBlock(c, config.up_layers, *args) for c in reversed(config.block_channels)])
        self.mid_block = MotionBlock(config.block_channels[-1], 1, *args) if config.mid_block else None

    @classmethod
    def from_state_dict(cls, sd, dtype=None, operations=nn):
        """Builds the set matching a canonical state dict and loads it strictly; `dtype` is the weight storage dtype."""
        with torch.device("meta"):
            module = cls(MotionModuleConfig.from_state_dict(sd), operations)
        module.load_state_dict(sd, strict=True, assign=True)
        if dtype is not None:
            # Weights only: the position table stays exact (fp8 would ruin it) and is cast to the activations' dtype.
            for p in module.parameters():
                p.data = p.data.to(dtype)
        return module

    def layout(self, block_channels, num_res_blocks) -> dict[str, MotionModule]:
        """UNet block name ('input_blocks.N', 'middle_block', 'output_blocks.N') -> the motion module that runs in it.

        Down blocks run theirs after their layers, up blocks before their Upsample, the middle block between its
        attention and its second ResBlock. `num_res_blocks` is an int or one per level; ValueError names both
        shapes when the UNet does not fit the set (SD1.5-family UNets only).
        """
        cfg = self.config
        res_blocks = {num_res_blocks} if isinstance(num_res_blocks, int) else set(num_res_blocks)
        if (tuple(block_channels) != tuple(cfg.block_channels) or res_blocks != {cfg.down_layers}
                or cfg.up_layers != cfg.down_layers + 1):
            raise ValueError(
                f"this motion module fits a UNet with block channels {tuple(cfg.block_channels)} and "
                f"{cfg.down_layers} layers per block (SD1.5 family); the model has {tuple(block_channels)} and "
                f"{sorted(res_blocks)} (SDXL and other families are not supported)")
        stride = cfg.down_layers + 1  # each level: its res blocks, then a Downsample (input) / Upsample (output)
        layout = {}
        for i in range(len(cfg.block_channels)):
            for j, module in enumerate(self.down_blocks[i].motion_modules):
                layout[f"input_blocks.{1 + i * stride + j}"] = module
            for j, module in enumerate(self.up_blocks[i].motion_modules):
                layout[f"output_blocks.{i * stride + j}"] = module
        if self.mid_block is not None:
            layout["middle_block"] = self.mid_block.motion_modules[0]
        return layout
