"""The SD1.x VAE (AutoencoderKL) in the original LDM layout: the `first_stage_model.` keys of a checkpoint."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SCALING_FACTOR = 0.18215  # SD1.x latent scale: latents = posterior * 0.18215


@dataclass(frozen=True)
class VAEConfig:
    """Shape of an LDM AutoencoderKL; `from_state_dict` reads it off the checkpoint's tensors."""

    channels: int = 128
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    in_channels: int = 3
    out_channels: int = 3

    @property
    def scale_factor(self):
        """Pixels per latent along each side (8 for SD1.x: one halving per level but the last)."""
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def from_state_dict(cls, sd):
        """Infers the config from a VAE state dict (keys without the `first_stage_model.` prefix)."""
        channels = sd["encoder.conv_in.weight"].shape[0]
        levels = len({k.split(".")[2] for k in sd if k.startswith("encoder.down.")})
        mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // channels for i in range(levels))
        return cls(channels=channels, channel_mult=mult,
                   num_res_blocks=len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")}),
                   z_channels=sd["decoder.conv_in.weight"].shape[1], in_channels=sd["encoder.conv_in.weight"].shape[1],
                   out_channels=sd["decoder.conv_out.weight"].shape[0])


def group_norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Two GroupNorm-SiLU-conv stages and a (1x1-projected) skip; no time embedding."""

    def __init__(self, channels, out_channels):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections."""

    def __init__(self, channels):
        super().__init__()
        self.norm = group_norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).flatten(2).transpose(1, 2)[:, None] for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right and bottom by one (LDM's asymmetric padding)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 and a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """The ResnetBlocks of one resolution and the resampling that follows (`down.i` / `up.i`)."""

    def __init__(self, channels, out_channels, num_blocks, resample=None):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(channels if i == 0 else out_channels, out_channels)
                                    for i in range(num_blocks)])
        if resample is not None:
            setattr(self, "downsample" if resample is Downsample else "upsample", resample(out_channels))

    def forward(self, x):
        for block in self.block:
            x = block(x)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


class Encoder(nn.Module):
    """Pixels -> posterior moments (mean and log-variance, 2 * z_channels)."""

    def __init__(self, cfg):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.channels, 3, padding=1)
        self.down = nn.ModuleList([
            Level(([cfg.channels] + widths)[i], w, cfg.num_res_blocks, Downsample if i < len(widths) - 1 else None)
            for i, w in enumerate(widths)])
        self.mid = MidBlock(widths[-1])
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latents -> pixels; `up` is indexed by resolution level, so it runs from the last index down."""

    def __init__(self, cfg):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1])
        self.up = nn.ModuleList([
            Level((widths + [widths[-1]])[i + 1], w, cfg.num_res_blocks + 1, Upsample if i > 0 else None)
            for i, w in enumerate(widths)])
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAE(nn.Module):
    """AutoencoderKL: encode pixels in [-1, 1] to scaled latents and decode them back."""

    def __init__(self, config=VAEConfig(), scaling_factor=SCALING_FACTOR):
        super().__init__()
        self.config = config
        self.scaling_factor = scaling_factor
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)

    @property
    def scale_factor(self):
        return self.config.scale_factor

    def encode(self, pixels, generator=None):
        """pixels [n, 3, H, W] in [-1, 1] -> latents [n, 4, H/8, W/8] * 0.18215: posterior mean, or a sample."""
        mean, logvar = self.quant_conv(self.encoder(pixels)).chunk(2, dim=1)
        if generator is not None:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + std * noise
        return mean * self.scaling_factor

    def decode(self, latents):
        """Scaled latents [n, 4, h, w] -> pixels [n, 3, 8h, 8w], nominally in [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(latents / self.scaling_factor))
