"""CLIP score of decoded frames against their prompt (Hessel et al. 2021): 100 x max(cos(image, text), 0).

Reads a CLIP checkpoint in the transformers layout (`vision_model.*`, `text_model.*`, `visual_projection.weight`,
`text_projection.weight`; e.g. openai/clip-vit-large-patch14's model.safetensors). The text tower is the
SD1.x text transformer of trainer/sd15, pooled at the end-of-text token; the vision tower is a ViT built from
the same layers without the causal mask. Frames are resized (bicubic) to the tower's input size and
normalised with CLIP's mean and std.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from trainer.data import DataError
from trainer.sd15.clip import CLIPConfig, CLIPTextEncoder, Encoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisionEmbeddings(nn.Module):
    def __init__(self, width, patch, positions):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.patch_embedding = nn.Conv2d(3, width, patch, patch, bias=False)
        self.position_embedding = nn.Embedding(positions, width)

    def forward(self, images):
        patches = self.patch_embedding(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(len(images), 1, -1)
        return torch.cat([cls, patches], 1) + self.position_embedding.weight


class VisionTransformer(nn.Module):
    """images [b, 3, S, S] (normalised) -> pooled class token after post_layernorm [b, width]."""

    def __init__(self, cfg: CLIPConfig, patch: int, positions: int):
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg.width, patch, positions)
        self.pre_layrnorm = nn.LayerNorm(cfg.width)  # (sic) the checkpoint's name
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.width)
        self.image_size = patch * round((positions - 1) ** 0.5)

    def forward(self, images):
        return self.post_layernorm(self.encoder(self.pre_layrnorm(self.embeddings(images)))[:, 0])


class CLIPScorer(nn.Module):
    def __init__(self, sd: dict, tokenizer):
        super().__init__()
        text = {k[len("text_model."):]: v for k, v in sd.items() if k.startswith("text_model.")}
        vision = {k[len("vision_model."):]: v for k, v in sd.items() if k.startswith("vision_model.")}
        text_cfg = CLIPConfig.from_state_dict(text)
        width, _, patch, _ = vision["embeddings.patch_embedding.weight"].shape
        vision_cfg = replace(text_cfg, width=width, causal=False,
                             layers=len({k.split(".")[2] for k in vision if k.startswith("encoder.layers.")}),
                             intermediate=vision["encoder.layers.0.mlp.fc1.weight"].shape[0])
        self.text_model = CLIPTextEncoder(text_cfg)
        self.vision_model = VisionTransformer(vision_cfg, patch, vision["embeddings.position_embedding.weight"].shape[0])
        self.text_projection = nn.Linear(text_cfg.width, sd["text_projection.weight"].shape[0], bias=False)
        self.visual_projection = nn.Linear(width, sd["visual_projection.weight"].shape[0], bias=False)
        self.load_state_dict({k: v for k, v in sd.items() if not k.endswith(("position_ids", "logit_scale"))},
                             strict=True)
        self.tokenizer = tokenizer

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts).to(self.text_projection.weight.device)
        hidden = self.text_model(ids)
        pooled = hidden[torch.arange(len(ids)), ids.argmax(-1)]  # end-of-text: the largest id, first occurrence
        return self.text_projection(pooled)

    @torch.no_grad()
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [n, 3, H, W] in [-1, 1] -> [n, proj]."""
        size = self.vision_model.image_size
        x = F.interpolate((pixels.float() + 1) / 2, size=(size, size), mode="bicubic", align_corners=False)
        mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
        x = ((x.clamp(0, 1) - mean) / std).to(self.visual_projection.weight.device)
        return self.visual_projection(self.vision_model(x))

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, prompts: list[str], batch: int = 16) -> float:
        """Mean over clips and frames of 100 max(cos(frame, its clip's prompt), 0); pixels [b, f, 3, H, W]."""
        text = F.normalize(self.text_embeddings(prompts).float(), dim=-1)
        scores = []
        for clip, t in zip(pixels, text):
            image = torch.cat([self.image_embeddings(c) for c in clip.split(batch)]).float()
            scores.append((100 * (F.normalize(image, dim=-1) @ t.to(image.device)).clamp(min=0)).mean())
        return float(torch.stack(scores).mean())


def load_clip_scorer(path: str, device, tokenizer_dir: str | None) -> CLIPScorer:
    """A CLIPScorer from a transformers-layout CLIP checkpoint; the BPE tokenizer comes from tokenizer_dir."""
    from trainer.eval import load_state_dict
    from trainer.sd15.tokenizer import ByteTokenizer, CLIPTokenizer

    sd = load_state_dict(path, "clip")
    vocab = sd.get("text_model.embeddings.token_embedding.weight")
    if vocab is None or "vision_model.embeddings.patch_embedding.weight" not in sd:
        raise DataError(f"eval.clip: {path} is not a CLIP checkpoint in the transformers layout "
                        f"(text_model.*, vision_model.*, text_projection, visual_projection)")
    if len(vocab) == ByteTokenizer.vocab_size:
        tokenizer = ByteTokenizer()  # the tiny random test models
    elif tokenizer_dir:
        tokenizer = CLIPTokenizer(tokenizer_dir)
    else:
        raise DataError("eval.clip needs CLIP's tokenizer: set model.tokenizer_dir (vocab.json and merges.txt)")
    try:
        return CLIPScorer(sd, tokenizer).to(device).eval().requires_grad_(False)
    except (RuntimeError, KeyError) as e:
        raise DataError(f"eval.clip: {path} does not fit the CLIP layout: {str(e).splitlines()[0]}") from None
