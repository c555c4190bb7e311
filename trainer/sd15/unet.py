"""The SD1.5 UNet in the original (LDM `openaimodel.py`) layout, with AnimateDiff motion modules slotted in.

Parameter names are those under `model.diffusion_model.` in a single-file checkpoint, so the state dict
loads with strict=True. Motion modules are placed by `MotionModuleSet.layout` (lightning_core), the rule the
ComfyUI nodes use too (nodes/host.py `motion_placements`): at the end of every down block (after its ResBlock and attention), before the Upsample
of every up block, and in the middle block after its attention, before its second ResBlock.
"""

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_core.motion_module import FeedForward

SD15_NUM_HEADS = 8  # fixed by SD1.x's config (num_heads=8); shapes cannot tell heads from head width


@dataclass(frozen=True)
class UNetConfig:
    """Shape of an SD1.x-style UNet; `from_state_dict` reads it off the checkpoint's tensors."""

    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple = (True, True, True, False)
    transformer_depth: int = 1
    context_dim: int = 768
    num_heads: int = SD15_NUM_HEADS
    in_channels: int = 4
    out_channels: int = 4
    use_linear_projection: bool = False

    @property
    def time_embed_dim(self):
        return self.model_channels * 4

    @property
    def block_channels(self):
        return tuple(self.model_channels * m for m in self.channel_mult)

    @classmethod
    def from_state_dict(cls, sd):
        """Infers the config from a UNet state dict (keys without the `model.diffusion_model.` prefix)."""
        conv_in = sd["input_blocks.0.0.weight"]
        model_channels = conv_in.shape[0]
        levels, n = [[]], 1  # input block indices of the ResBlocks of each level; Downsamples separate levels
        while f"input_blocks.{n}.0.op.weight" in sd or f"input_blocks.{n}.0.in_layers.2.weight" in sd:
            if f"input_blocks.{n}.0.op.weight" in sd:
                levels.append([])
            else:
                levels[-1].append(n)
            n += 1
        num_res_blocks = len(levels[0])
        channel_mult = tuple(sd[f"input_blocks.{b[0]}.0.in_layers.2.weight"].shape[0] // model_channels
                             for b in levels)
        attention = tuple(f"input_blocks.{b[0]}.1.proj_in.weight" in sd for b in levels)
        depth = len({k.split(".")[3] for k in sd if k.startswith("middle_block.1.transformer_blocks.")})
        context = next(v for k, v in sd.items() if k.endswith("attn2.to_k.weight")).shape[1]
        return cls(model_channels=model_channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                   attention_levels=attention, transformer_depth=depth, context_dim=context,
                   in_channels=conv_in.shape[1], out_channels=sd["out.2.weight"].shape[0],
                   use_linear_projection=sd["middle_block.1.proj_in.weight"].ndim == 2)


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal timestep features, cosines first (LDM; diffusers' flip_sin_to_cos=True, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def per_frame(tensor, batch, num_frames, name):
    """Repeats a single or per-video tensor over the frames of a [(b f), ...] batch."""
    n = tensor.shape[0]
    if n == batch:
        return tensor
    if n not in (1, batch // num_frames):
        raise ValueError(f"{name} has {n} entries, expected 1, {batch // num_frames} (one per video) "
                         f"or {batch} (one per frame)")
    return tensor.repeat_interleave(batch // n, dim=0)


class ResBlock(nn.Module):
    """Two 3x3 convs with the time embedding added in between, plus a (1x1-projected) skip."""

    def __init__(self, channels, out_channels, emb_dim):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None].to(x.dtype)
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """Multi-head attention of x over `context` (itself when None), via scaled_dot_product_attention."""

    def __init__(self, query_dim, context_dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        b, n, c = x.shape
        q = self.to_q(x).view(b, -1, self.num_heads, c // self.num_heads).transpose(1, 2)
        k, v = (proj(context).view(b, -1, self.num_heads, c // self.num_heads).transpose(1, 2)
                for proj in (self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text, GEGLU feed-forward; each residual."""

    def __init__(self, channels, context_dim, num_heads):
        super().__init__()
        self.attn1 = CrossAttention(channels, channels, num_heads)
        self.ff = FeedForward(channels)
        self.attn2 = CrossAttention(channels, context_dim, num_heads)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(channels) for _ in range(3))

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm, project in, transformer blocks over the h*w tokens, project out, residual."""

    def __init__(self, channels, context_dim, num_heads, depth, use_linear):
        super().__init__()
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels) if use_linear else nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, context_dim, num_heads) for _ in range(depth)])
        self.proj_out = nn.Linear(channels, channels) if use_linear else nn.Conv2d(channels, channels, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        tokens = self.norm(x)
        if not self.use_linear:
            tokens = self.proj_in(tokens)
        tokens = tokens.flatten(2).transpose(1, 2)
        if self.use_linear:
            tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        if self.use_linear:
            tokens = self.proj_out(tokens)
        tokens = tokens.transpose(1, 2).reshape(b, c, h, w)
        if not self.use_linear:
            tokens = self.proj_out(tokens)
        return tokens + x


class Downsample(nn.Module):
    """Strided 3x3 conv halving the resolution."""

    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 (or to the skip's size, for odd sizes) and a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        return self.conv(F.interpolate(x, size=size, scale_factor=None if size else 2.0, mode="nearest"))


class UNetBlock(nn.Sequential):
    """One `input_blocks.N` / `middle_block` / `output_blocks.N`: layers called with what each needs.

    `motion_slot` is the layer index before which this block's motion module runs (host.py's rule).
    """

    def __init__(self, *layers, motion_slot=None):
        super().__init__(*layers)
        self.motion_slot = len(layers) if motion_slot is None else motion_slot

    def forward(self, x, emb, context, upsample_size=None, motion=None, num_frames=1):
        for i, layer in enumerate(self):
            if motion is not None and i == self.motion_slot:
                x = motion(x, num_frames)
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        if motion is not None and self.motion_slot == len(self):
            x = motion(x, num_frames)
        return x


class UNet(nn.Module):
    """SD1.x UNet: eps = unet(x, t, context), optionally with a MotionModuleSet for video."""

    def __init__(self, config=UNetConfig()):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        mc, emb_dim = config.model_channels, config.time_embed_dim
        attention = partial(SpatialTransformer, context_dim=config.context_dim, num_heads=config.num_heads,
                            depth=config.transformer_depth, use_linear=config.use_linear_projection)
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([UNetBlock(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_channels, ch = [mc], mc
        for level, out_ch in enumerate(config.block_channels):
            for _ in range(config.num_res_blocks):
                layers = [ResBlock(ch, out_ch, emb_dim)]
                if config.attention_levels[level]:
                    layers.append(attention(out_ch))
                self.input_blocks.append(UNetBlock(*layers))
                ch = out_ch
                skip_channels.append(ch)
            if level < len(config.block_channels) - 1:
                self.input_blocks.append(UNetBlock(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = UNetBlock(ResBlock(ch, ch, emb_dim), attention(ch), ResBlock(ch, ch, emb_dim),
                                      motion_slot=2)

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(config.block_channels))):
            out_ch = config.block_channels[level]
            for j in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), out_ch, emb_dim)]
                ch = out_ch
                if config.attention_levels[level]:
                    layers.append(attention(ch))
                slot = len(layers)
                if level > 0 and j == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(UNetBlock(*layers, motion_slot=slot))

        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1))

    def motion_layout(self, motion):
        """Maps input/middle/output block names to their motion modules (the rule the ComfyUI nodes use)."""
        return motion.layout(self.config.block_channels, self.config.num_res_blocks)

    def _run(self, block, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x, t, context, num_frames=1, motion=None, time_emb_extra=None, return_mid=False):
        """x [(b f), c, h, w] -> eps [(b f), c, h, w], or with return_mid the middle block's output.

        t (scalar, [b] or [(b f)]), context ([b or (b f), n, d]) and time_emb_extra ([b or (b f), time_embed_dim])
        given per video are repeated over its frames.
        """
        layout = self.motion_layout(motion) if motion is not None else {}
        t = per_frame(torch.as_tensor(t, device=x.device).reshape(-1), x.shape[0], num_frames, "t")
        context = per_frame(context, x.shape[0], num_frames, "context")
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        if time_emb_extra is not None:
            emb = emb + per_frame(time_emb_extra, x.shape[0], num_frames, "time_emb_extra").to(emb.dtype)
        skips, h = [], x
        for n, block in enumerate(self.input_blocks):
            h = self._run(block, h, emb, context, None, layout.get(f"input_blocks.{n}"), num_frames)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, context, None, layout.get("middle_block"), num_frames)
        if return_mid:
            return h
        for n, block in enumerate(self.output_blocks):
            h = torch.cat([h, skips.pop()], dim=1)
            size = tuple(skips[-1].shape[-2:]) if skips else None
            h = self._run(block, h, emb, context, size, layout.get(f"output_blocks.{n}"), num_frames)
        return self.out(h)
