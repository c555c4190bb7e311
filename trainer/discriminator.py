"""The flow-conditional video discriminator of AnimateDiff-Lightning 3.3 (Eqs. 11-12).

Backbone d: the UNet encoder + middle block of the AnimateDiff model (image base + motion module),
a trainable copy; the flow (base-model) index i is a learnable embedding added to the time embedding.
d(x_{t-ns}, t-ns, c, i) and, for the x_t-conditional D, d(x_t, t, c, i) run separately; their mid
features [b, C, f, h, w] are concatenated on channels and a head of 3D conv (kernel 4, stride 2) +
GroupNorm + SiLU blocks reduces them to one logit. sigmoid(logit) is D's probability of "teacher";
the losses take logits (lightning_core.losses).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from trainer.sd15.unet import timestep_embedding

FLOW_EMBEDDING_SCALE = 0.1
"""Flow embeddings start as random vectors of 0.1 x the time embedding's RMS: distinct per base from the first
step, so D can tell the flows apart within a stage (zero-initialised and moved by Adam at lr 5e-7, they
would stay ~1e-3 apart after 2000 steps), yet small enough to leave the pre-trained features nearly as they are."""


@torch.no_grad()
def time_embedding_rms(unet) -> float:
    """RMS of the backbone's time embedding over the 1000 training timesteps."""
    t = torch.arange(0, 1000, 8, device=unet.time_embed[0].weight.device)
    emb = unet.time_embed(timestep_embedding(t, unet.config.model_channels).to(unet.time_embed[0].weight.dtype))
    if emb.is_meta:  # shapes only (trainer/memory.py plans memory on the meta device): any scale will do
        return 1.0
    return float(emb.float().square().mean().sqrt())


def _group_channels(c: int) -> int:
    return max(32, (c // 32) * 32)


class Head(nn.Module):
    """3D conv (kernel 4, stride 2 on every axis longer than 1) + GroupNorm(32) + SiLU blocks down to 1x1x1, then one logit.

    The logit layer starts at zero: a D that has learned nothing scores every input 0 (p = 0.5) and gives the
    student no gradient, instead of a random slope that the first student steps would follow. Its first own
    step moves it only along features where real and fake differ (where they are equal, the loss's gradients
    on them cancel), so a student already equal to its teacher is never pushed (bench_adversarial, g = 0).
    """

    def __init__(self, in_channels: int, feature_shape: tuple[int, int, int]):
        super().__init__()
        hidden = max(256, _group_channels(in_channels // 4))  # >= 8 channels per GroupNorm group at 1x1x1
        blocks, shape, ch = [], list(feature_shape), in_channels
        while max(shape) > 1:
            kernel = tuple(4 if d > 1 else 1 for d in shape)
            stride = tuple(2 if d > 1 else 1 for d in shape)
            padding = tuple(1 if d > 1 else 0 for d in shape)
            blocks += [nn.Conv3d(ch, hidden, kernel, stride, padding), nn.GroupNorm(32, hidden), nn.SiLU()]
            shape = [d // 2 if d > 1 else 1 for d in shape]
            ch = hidden
        logit = nn.Conv3d(ch, 1, 1)
        nn.init.zeros_(logit.weight)
        nn.init.zeros_(logit.bias)
        self.net = nn.Sequential(*blocks, logit)

    def forward(self, h):
        return self.net(h).flatten(1).mean(1)  # [b]


class Discriminator(nn.Module):
    def __init__(self, unet, motion, num_flows: int, conditional: bool, feature_shape: tuple[int, int, int]):
        super().__init__()
        self.conditional = conditional
        self.unet = copy.deepcopy(unet)
        del self.unet.output_blocks, self.unet.out  # return_mid never reaches the decoder
        self.unet.output_blocks, self.unet.out = nn.ModuleList(), nn.Identity()
        self.motion = copy.deepcopy(motion)
        for block in self.motion.up_blocks:  # the decoder's motion modules are unused too
            block.motion_modules = nn.ModuleList()
        self.flow_embedding = nn.Embedding(num_flows, unet.config.time_embed_dim)
        nn.init.normal_(self.flow_embedding.weight, std=FLOW_EMBEDDING_SCALE * time_embedding_rms(unet))
        mid_channels = unet.config.block_channels[-1]
        self.head = Head(mid_channels * (2 if conditional else 1), feature_shape)
        self.train().requires_grad_(True)

    def features(self, x, t, context, flow):
        """d(x, t, c, i): mid-block features [b, C, f, h, w] of a [b, f, c, h, w] latent video."""
        b, f = x.shape[:2]
        extra = self.flow_embedding(flow).repeat_interleave(f, 0)
        h = self.unet(x.flatten(0, 1), t.clamp(min=0).repeat_interleave(f).to(x.dtype),
                      context.repeat_interleave(f, 0), num_frames=f, motion=self.motion,
                      time_emb_extra=extra, return_mid=True)
        return h.view(b, f, *h.shape[1:]).transpose(1, 2)

    def forward(self, x_next, t_next, context, flow, condition=None):
        """Logit of D(x_t, x_{t-ns}, t, t-ns, c, i); condition = features(x_t, t, c, i) for the conditional D."""
        h = self.features(x_next, t_next, context, flow)
        if self.conditional:
            if condition is None:
                raise ValueError("the x_t-conditional discriminator needs condition=features(x_t, t, c, i)")
            h = torch.cat([h, condition], dim=1)
        return self.head(h.float())
