"""Inflated Inception-V1 (I3D, Carreira & Zisserman 2017), the video network FVD (Unterthiner et al. 2018) reads.

Parameter names follow the widely shared PyTorch port of the Kinetics-400 RGB checkpoint
(`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_mean`, `logits.conv3d.bias`, ...), so such a
state dict loads strictly. Convolutions pad like TensorFlow's "SAME" (more on the far side when uneven),
batch norms use eps 1e-3. `features` returns the 400 Kinetics logits averaged over time, the vector FVD
compares.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 400
# (name, b0, b1a, b1b, b2a, b2b, b3b) output channels of each Inception block, in order
MIXED = {"Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
         "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
         "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
         "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
         "Mixed_5c": (384, 192, 384, 48, 128, 128)}


def same_padding(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """TensorFlow 'SAME' padding of a [b, c, t, h, w] tensor: output size ceil(in / stride)."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """'SAME'-padded Conv3d, then BatchNorm + ReLU (the logits layer: bias, no norm, no activation)."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), norm_and_relu=True):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=not norm_and_relu)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if norm_and_relu else None

    def forward(self, x):
        x = self.conv3d(same_padding(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.bn is not None else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        return F.max_pool3d(same_padding(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | 3x3 max-pool -> 1x1, concatenated on channels."""

    def __init__(self, cin, widths):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = Unit3D(cin, b0)
        self.b1a, self.b1b = Unit3D(cin, b1a), Unit3D(b1a, b1b, (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, b2a), Unit3D(b2a, b2b, (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, b3b)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        ch = 192
        for name, widths in MIXED.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
            setattr(self, name, Mixed(ch, widths))
            ch = getattr(self, name).out_channels
        self.logits = Unit3D(ch, num_classes, norm_and_relu=False)

    def forward(self, video):
        """video [b, 3, t, 224, 224] in [-1, 1] -> logits [b, classes, t'] (t' = t / 8)."""
        x = video
        for name, module in self.named_children():
            if name == "logits":
                break
            x = module(x)
        # The checkpoint's window: 2 frames x 7 x 7 (all of a 224 px input), stride 1; smaller inputs pool what is left.
        x = F.avg_pool3d(x, tuple(min(k, n) for k, n in zip((2, 7, 7), x.shape[2:])), stride=1)
        return self.logits(x).squeeze(-1).squeeze(-1)

    def features(self, video):
        """The FVD feature of each clip: Kinetics logits averaged over time, [b, classes]."""
        return self.forward(video).mean(-1)


def prepare_video(pixels: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Decoded frames [b, f, 3, H, W] in [-1, 1] -> I3D input [b, 3, f, size, size] (bilinear resize)."""
    b, f = pixels.shape[:2]
    x = F.interpolate(pixels.flatten(0, 1).float(), size=(size, size), mode="bilinear", align_corners=False)
    return x.unflatten(0, (b, f)).transpose(1, 2).clamp(-1, 1)
