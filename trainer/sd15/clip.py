"""CLIP ViT-L/14's text transformer (SD1.x's text encoder) under its `cond_stage_model.transformer.text_model.` keys."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ViT-L/14 text: width 768 in 12 heads. Shapes cannot tell the head count, so the width per head is fixed.
CLIP_HEAD_WIDTH = 64


@dataclass(frozen=True)
class CLIPConfig:
    """Shape of a CLIP text transformer; `from_state_dict` reads it off the checkpoint's tensors."""

    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    max_length: int = 77
    intermediate: int = 3072
    causal: bool = True
    """Text: each token sees itself and those before it; the vision tower (trainer/clip_score.py) sees all."""

    @property
    def num_heads(self):
        """Heads of 64 channels (one head for the tiny test models narrower than that)."""
        return max(1, self.width // CLIP_HEAD_WIDTH)

    @classmethod
    def from_state_dict(cls, sd):
        """Infers the config from a text_model state dict (keys after `...text_model.`)."""
        vocab, width = sd["embeddings.token_embedding.weight"].shape
        return cls(vocab_size=vocab, width=width,
                   layers=len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")}),
                   max_length=sd["embeddings.position_embedding.weight"].shape[0],
                   intermediate=sd["encoder.layers.0.mlp.fc1.weight"].shape[0])


def quick_gelu(x):
    """CLIP's GELU approximation x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class Embeddings(nn.Module):
    """Token embedding plus a learned position embedding."""

    def __init__(self, cfg):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.width)

    def forward(self, ids):
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]


class SelfAttention(nn.Module):
    """Multi-head self-attention, causal for text (each token sees itself and the tokens before it)."""

    def __init__(self, cfg):
        super().__init__()
        self.num_heads, self.causal = cfg.num_heads, cfg.causal
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(cfg.width, cfg.width) for _ in range(4))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (proj(x).view(b, n, self.num_heads, -1).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    """fc1, quick_gelu, fc2."""

    def __init__(self, cfg):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.intermediate)
        self.fc2 = nn.Linear(cfg.intermediate, cfg.width)

    def forward(self, x):
        return self.fc2(quick_gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and MLP, each with a residual."""

    def __init__(self, cfg):
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """The stack of encoder layers (`encoder.layers.N`)."""

    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.layers)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextEncoder(nn.Module):
    """token ids [b, 77] -> last hidden state after final_layer_norm [b, 77, width] (what SD1.x conditions on)."""

    def __init__(self, config=CLIPConfig()):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width)

    def forward(self, ids):
        return self.final_layer_norm(self.encoder(self.embeddings(ids)))
