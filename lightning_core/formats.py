"""Reading, checking, converting and writing AnimateDiff motion modules and motion LoRAs.

Pure torch + safetensors: this module never imports ComfyUI or diffusers.

Canonical in-memory naming is the original AnimateDiff one (guoyww/AnimateDiff
animatediff/models/motion_module.py, unet_blocks.py), also used by ComfyUI-AnimateDiff-Evolved
and by ByteDance's animatediff_lightning_*_comfyui.safetensors. Per motion module at
{down_blocks.i|up_blocks.i|mid_block}.motion_modules.j:

    temporal_transformer.{norm,proj_in,proj_out}.*
    temporal_transformer.transformer_blocks.0.attention_blocks.{0,1}.{to_q,to_k,to_v}.weight
    temporal_transformer.transformer_blocks.0.attention_blocks.{0,1}.to_out.0.{weight,bias}
    temporal_transformer.transformer_blocks.0.attention_blocks.{0,1}.pos_encoder.pe  [1, L, C]
    temporal_transformer.transformer_blocks.0.{norms.{0,1},ff_norm}.{weight,bias}
    temporal_transformer.transformer_blocks.0.ff.net.0.proj.* [8C, C]  (GEGLU)  ff.net.2.* [C, 4C]

The diffusers naming (MotionAdapter, diffusers src/diffusers/models/unets/unet_motion_model.py and
scripts/convert_animatediff_motion_module_to_diffusers.py) drops "temporal_transformer.", renames
attention_blocks.{0,1} -> attn{1,2}, norms.{0,1} -> norm{1,2}, ff_norm -> norm3, and keeps ONE
persistent sinusoidal buffer per transformer block, transformer_blocks.0.pos_embed.pe, where the
original keeps one per attention block. Both original buffers hold the same fixed sinusoid, so
original -> diffusers keeps attention_blocks.0's copy (and refuses if the two differ) and
diffusers -> original copies it into both attention blocks; the maps are exact inverses.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .files import atomic_path
from .motion_module import sinusoidal_position_encoding

TORCH_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_EXTENSIONS = (".safetensors",)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
STEPS_METADATA_KEY = "animatediff_lightning_steps"
EXAMPLE_KEY = "down_blocks.0.motion_modules.0.temporal_transformer.*"
# AnimateLCM's training code (G-U-N/AnimateLCM animatelcm_sd15/animatelcm/models/motion_module.py)
# hard-codes a 64-frame sinusoid, and its released SD1.5 file stores no pos_encoder keys at all
# (ComfyUI-AnimateDiff-Evolved animatediff/motion_module_ad.py: is_animatelcm, "assumed to be 64").
ANIMATELCM_PE_LENGTH = 64
SDXL_CHANNELS = (320, 640, 1280)
_BLOCK = r"(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+"


class MotionFormatError(ValueError):
    """A file is not a usable SD1.5 AnimateDiff motion module or motion LoRA."""


@dataclass(frozen=True)
class MotionModuleInfo:
    """What detect() learned from keys, shapes, file name and metadata.

    family: "v1" (no mid block, PE 24), "v2" (mid block, PE 32), "v3" (no mid block, PE 32),
    "animatelcm" (mid block and no PE keys or PE 64), "lightning" (v2 architecture whose file
    name or metadata gives a distilled step count: official Lightning files cannot be told from
    v2 by keys). Other PE lengths fall back to "v2" with a mid block, "v1" without (as AD-Evolved).
    """

    layout: str
    family: str
    has_mid_block: bool
    position_encoding_length: int | None
    block_channels: tuple[int, ...]
    down_layers: int
    up_layers: int
    lightning_steps: int | None
    dtype: torch.dtype


# ----------------------------------------------------------------------------- reading files

def _sniff(path: str) -> str:
    """Say what the first bytes of a file look like."""
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, kind in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                        (b"GIF8", "a GIF image")):
        if head.startswith(magic):
            return kind
    # safetensors: u64 little-endian header size, then a JSON header (its first byte may be 0x80).
    if head[8:9] == b"{":
        return "a safetensors file"
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch zip archive"
    if head[:1] == b"\x80":
        return "a pickle"
    return "empty" if not head else "not a recognisable weights file"


def _clean(sd: dict, path: str) -> dict[str, torch.Tensor]:
    """Unwrap {'state_dict': ...}, strip a 'module.' prefix, drop non-tensor entries."""
    if not isinstance(sd, dict):
        raise MotionFormatError(f"{path} holds a {type(sd).__name__}, expected a dict of tensors")
    if isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    # Original .ckpt files may carry e.g. "animatediff_config" (guoyww load_weights pops it).
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict(path) -> dict[str, torch.Tensor]:
    """Load tensors from .safetensors or, without running pickled code, from .ckpt/.pt/.pth/.bin."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in SAFETENSORS_EXTENSIONS + TORCH_EXTENSIONS:
        raise MotionFormatError(f"{path} has an unsupported extension {ext!r}; expected one of "
                                f"{', '.join(SAFETENSORS_EXTENSIONS + TORCH_EXTENSIONS)}")
    if not os.path.isfile(path):
        raise MotionFormatError(f"{path} does not exist or is not a file")
    kind = _sniff(path)
    accepted = ("a safetensors file",) if ext in SAFETENSORS_EXTENSIONS else ("a PyTorch zip archive", "a pickle")
    if kind not in accepted:
        raise MotionFormatError(f"{path} is {kind}, expected {ext} model weights"
                                + (" (rename it to .safetensors)" if kind == "a safetensors file" else ""))
    if ext in SAFETENSORS_EXTENSIONS:
        try:
            return _clean(load_file(path, device="cpu"), path)
        except Exception as e:  # SafetensorError, OSError: truncated or corrupt
            raise MotionFormatError(f"{path} is a truncated or corrupt safetensors file: {e}") from e
    try:
        # weights_only=True refuses anything but tensors and plain containers: no code runs.
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise MotionFormatError(f"{path} is not a plain weights pickle (it asks to run code or "
                                f"build arbitrary objects) and was refused; convert it to "
                                f".safetensors with a trusted tool") from e
    except Exception as e:
        raise MotionFormatError(f"{path} could not be read as a PyTorch checkpoint "
                                f"(truncated or corrupt?): {e}") from e
    return _clean(sd, path)


def read_metadata(path) -> dict[str, str]:
    """Return the safetensors header metadata ({} for other files or no metadata)."""
    path = os.fspath(path)
    if not path.lower().endswith(".safetensors"):
        return {}
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise MotionFormatError(f"{path} is a truncated or corrupt safetensors file: {e}") from e


def lightning_steps(path, metadata: dict | None = None) -> int | None:
    """Distilled step count from our metadata key, else from names like *_lightning_4step_*."""
    value = (metadata or {}).get(STEPS_METADATA_KEY)
    if value is not None:
        try:
            return int(value)
        except ValueError:
            raise MotionFormatError(f"{path}: metadata {STEPS_METADATA_KEY}={value!r} is not an "
                                    f"integer") from None
    m = re.search(r"lightning[_-]?(\d+)[_-]?steps?", os.path.basename(os.fspath(path)), re.I)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------- key maps

_TO_DIFFUSERS = [  # applied in order to the part after "...motion_modules.j."
    (r"^temporal_transformer\.", ""),
    (r"\.attention_blocks\.(\d)\.pos_encoder\.pe$", r".pos_embed.pe"),
    (r"\.attention_blocks\.0\.", ".attn1."), (r"\.attention_blocks\.1\.", ".attn2."),
    (r"\.norms\.0\.", ".norm1."), (r"\.norms\.1\.", ".norm2."), (r"\.ff_norm\.", ".norm3."),
]
_TO_ORIGINAL = [
    (r"^", "temporal_transformer."),
    (r"\.attn1\.", ".attention_blocks.0."), (r"\.attn2\.", ".attention_blocks.1."),
    (r"\.norm1\.", ".norms.0."), (r"\.norm2\.", ".norms.1."), (r"\.norm3\.", ".ff_norm."),
]
_MODULE_RE = re.compile(rf"^({_BLOCK})\.(.+)$")


def _map_key(key: str, rules) -> str:
    """Rewrite the per-module part of one key with regex rules; keys outside modules pass through."""
    m = _MODULE_RE.match(key)
    if not m:
        return key
    rest = m.group(2)
    for pattern, repl in rules:
        rest = re.sub(pattern, repl, rest)
    return f"{m.group(1)}.{rest}"


def original_to_diffusers(sd: dict) -> dict:
    """Canonical (original) names -> diffusers MotionAdapter names; one PE buffer per block."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".attention_blocks.1.pos_encoder.pe"):
            twin = sd.get(key.replace(".attention_blocks.1.", ".attention_blocks.0."))
            if twin is None or not torch.equal(twin, value):
                raise ValueError(f"{key} differs from attention_blocks.0's encoding; the diffusers "
                                 f"layout keeps one per transformer block and would lose it")
            continue
        out[_map_key(key, _TO_DIFFUSERS)] = value
    return out


def diffusers_to_original(sd: dict) -> dict:
    """Diffusers MotionAdapter names -> canonical names; the PE buffer goes to both attentions."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".pos_embed.pe"):
            base = _map_key(key[: -len("pos_embed.pe")] + "x", _TO_ORIGINAL)[:-1]
            out[base + "attention_blocks.0.pos_encoder.pe"] = value
            out[base + "attention_blocks.1.pos_encoder.pe"] = value.clone()  # no shared storage
            continue
        out[_map_key(key, _TO_ORIGINAL)] = value
    return out


# ----------------------------------------------------------------------------- detection

def module_shapes(channels: int, pe_length: int | None) -> dict[str, tuple[int, ...]]:
    """Expected canonical key suffixes and shapes of one motion module with C channels."""
    c, t, b = channels, "temporal_transformer.", "temporal_transformer.transformer_blocks.0."
    shapes = {f"{t}norm.weight": (c,), f"{t}norm.bias": (c,), f"{t}proj_in.weight": (c, c),
              f"{t}proj_in.bias": (c,), f"{t}proj_out.weight": (c, c), f"{t}proj_out.bias": (c,),
              f"{b}ff.net.0.proj.weight": (8 * c, c), f"{b}ff.net.0.proj.bias": (8 * c,),
              f"{b}ff.net.2.weight": (c, 4 * c), f"{b}ff.net.2.bias": (c,),
              f"{b}ff_norm.weight": (c,), f"{b}ff_norm.bias": (c,)}
    for a in (0, 1):
        att = f"{b}attention_blocks.{a}."
        shapes.update({f"{att}{p}.weight": (c, c) for p in ("to_q", "to_k", "to_v", "to_out.0")})
        shapes.update({f"{att}to_out.0.bias": (c,), f"{b}norms.{a}.weight": (c,), f"{b}norms.{a}.bias": (c,)})
        if pe_length is not None:
            shapes[f"{att}pos_encoder.pe"] = (1, pe_length, c)
    return shapes


def expected_shapes(info: MotionModuleInfo, with_pe: bool = True) -> dict[str, tuple[int, ...]]:
    """Every canonical key and shape a module described by info must have."""
    pe = info.position_encoding_length if with_pe else None
    layout = [(f"down_blocks.{i}", c, info.down_layers) for i, c in enumerate(info.block_channels)]
    layout += [(f"up_blocks.{i}", c, info.up_layers) for i, c in enumerate(info.block_channels[::-1])]
    if info.has_mid_block:
        layout.append(("mid_block", info.block_channels[-1], 1))
    out = {}
    for block, channels, layers in layout:
        for j in range(layers):
            for suffix, shape in module_shapes(channels, pe).items():
                out[f"{block}.motion_modules.{j}.{suffix}"] = shape
    return out


def _refuse_foreign(sd: dict, path: str) -> None:
    """Raise a helpful error for dicts that are clearly something other than an SD1.5 motion module."""
    keys = list(sd)
    if not keys:
        raise MotionFormatError(f"{path} contains no tensors; expected an AnimateDiff motion module "
                                f"with keys like {EXAMPLE_KEY}")
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys):
        raise MotionFormatError(f"{path} is a Stable Diffusion checkpoint (keys like model.diffusion_model.*), "
                                f"not an AnimateDiff motion module; expected keys like {EXAMPLE_KEY}")
    if any("lora" in k.lower() for k in keys):
        raise MotionFormatError(f"{path} is a LoRA (keys like {next(k for k in keys if 'lora' in k.lower())}), "
                                f"not a motion module; load it as a motion LoRA instead")
    if any(".temporal_attentions." in k or "positional_encoding" in k for k in keys):
        raise MotionFormatError(f"{path} is a HotshotXL (SDXL) motion module, which is not supported: "
                                f"SD1.5 AnimateDiff motion modules only")
    if not any(".motion_modules." in k for k in keys):
        raise MotionFormatError(f"{path} is not an AnimateDiff motion module (first key {keys[0]}); "
                                f"expected keys like {EXAMPLE_KEY}")


def _count(keys, pattern: str) -> int:
    """1 + the largest integer captured by pattern over keys (0 if none match)."""
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def _canonical(sd: dict, path: str) -> tuple[str, dict]:
    """Return (layout, sd in canonical naming) without copying tensors."""
    original = any(".temporal_transformer." in k for k in sd)
    diffusers = any(re.match(rf"^{_BLOCK}\.(?:transformer_blocks|proj_in|norm)\.", k) for k in sd)
    if original and diffusers:
        raise MotionFormatError(f"{path} mixes original (temporal_transformer.*) and diffusers "
                                f"(motion_modules.N.transformer_blocks.*) key names")
    return ("diffusers", diffusers_to_original(sd)) if diffusers else ("original", sd)


def _channels(sd: dict, block: str, path: str) -> int:
    """Channel count of one block, read from its first module's norm weight."""
    key = f"{block}.motion_modules.0.temporal_transformer.norm.weight"
    if key not in sd:
        raise MotionFormatError(f"{path} is missing {key}; expected a complete motion module")
    return int(sd[key].shape[0])


def detect(state_dict: dict, path, metadata: dict | None = None) -> MotionModuleInfo:
    """Describe a motion module from its keys and shapes (name/metadata only for Lightning steps)."""
    path = os.fspath(path)
    _refuse_foreign(state_dict, path)
    layout, sd = _canonical(state_dict, path)
    keys = list(sd)
    n_down, n_up = _count(keys, r"^down_blocks\.(\d+)\."), _count(keys, r"^up_blocks\.(\d+)\.")
    if n_down == 0 or n_up != n_down:
        raise MotionFormatError(f"{path} has {n_down} down and {n_up} up blocks; an SD1.5 AnimateDiff "
                                f"motion module has 4 of each")
    channels = tuple(_channels(sd, f"down_blocks.{i}", path) for i in range(n_down))
    up_channels = tuple(_channels(sd, f"up_blocks.{i}", path) for i in range(n_up))
    if channels == SDXL_CHANNELS:  # same naming, 3 blocks (AD-Evolved get_down_block_max == 2)
        raise MotionFormatError(f"{path} is an SDXL motion module (3 down blocks, channels {channels}), "
                                f"which is not supported: SD1.5 AnimateDiff motion modules only")
    if up_channels != channels[::-1]:
        raise MotionFormatError(f"{path} has inconsistent shapes: up-block channels {up_channels} "
                                f"are not the down-block channels {channels} reversed")
    has_mid = any(k.startswith("mid_block.") for k in keys)
    pe_lengths = {int(v.shape[1]) for k, v in sd.items() if k.endswith("pos_encoder.pe")}
    pe_lengths |= {int(v.shape[1]) for k, v in sd.items() if k.endswith("pos_encoder.pos_encoding")}
    if len(pe_lengths) > 1:
        raise MotionFormatError(f"{path} has inconsistent position encoding lengths {sorted(pe_lengths)}")
    pe = pe_lengths.pop() if pe_lengths else None
    steps = lightning_steps(path, metadata)
    if pe is None or (has_mid and pe == ANIMATELCM_PE_LENGTH):
        family, pe = "animatelcm", ANIMATELCM_PE_LENGTH
    elif has_mid:
        family = "lightning" if steps is not None and pe == 32 else "v2"
    else:
        family = "v3" if pe == 32 else "v1"
    info = MotionModuleInfo(
        layout=layout, family=family, has_mid_block=has_mid, position_encoding_length=pe,
        block_channels=channels, down_layers=_count(keys, r"^down_blocks\.0\.motion_modules\.(\d+)\."),
        up_layers=_count(keys, r"^up_blocks\.0\.motion_modules\.(\d+)\."), lightning_steps=steps,
        dtype=sd["down_blocks.0.motion_modules.0.temporal_transformer.norm.weight"].dtype)
    _check(sd, info, path)
    return info


def _check(sd: dict, info: MotionModuleInfo, path: str) -> None:
    """Raise unless sd has exactly the expected keys and shapes (PE keys may be absent together)."""
    sd = {k.replace("pos_encoder.pos_encoding", "pos_encoder.pe"): v for k, v in sd.items()}
    has_pe = any(k.endswith("pos_encoder.pe") for k in sd)
    expected = expected_shapes(info, with_pe=has_pe)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        names = " (keys in original naming)" if info.layout == "diffusers" else ""
        raise MotionFormatError(f"{path} does not match an SD1.5 AnimateDiff {info.family} motion module"
                                f"{names}: {len(missing)} missing key(s) {missing[:3]}, "
                                f"{len(unexpected)} unexpected key(s) {unexpected[:3]}")
    for key, shape in expected.items():
        if tuple(sd[key].shape) != shape:
            raise MotionFormatError(f"{path} has inconsistent shapes: {key} is {list(sd[key].shape)}, "
                                    f"expected {list(shape)}")
        if sd[key].dtype not in FLOAT_DTYPES:
            raise MotionFormatError(f"{path}: {key} has dtype {sd[key].dtype}; expected float32, "
                                    f"float16 or bfloat16")


# ----------------------------------------------------------------------------- load / save

def load_motion_module(path) -> tuple[dict[str, torch.Tensor], MotionModuleInfo]:
    """Load, detect and check a motion module; return it in canonical naming with complete PEs."""
    path = os.fspath(path)
    raw = load_state_dict(path)
    info = detect(raw, path, read_metadata(path))
    _, sd = _canonical(raw, path)
    sd = {k.replace("pos_encoder.pos_encoding", "pos_encoder.pe"): v for k, v in sd.items()}
    # AnimateLCM stores no PE; the sinusoid is fixed, so fill it in and every family has the same keys.
    for key, shape in expected_shapes(info).items():
        if key not in sd:
            sd[key] = sinusoidal_position_encoding(shape[1], shape[2]).to(info.dtype)
    return sd, info


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor that owns its whole storage (safetensors refuses shared or strided ones)."""
    t = t.detach().to("cpu").contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset():
        t = t.clone()
    return t


def save_motion_module(path, sd: dict, layout: str = "original", metadata: dict | None = None) -> None:
    """Atomically write a canonical state dict as safetensors in the original or diffusers naming."""
    path = os.fspath(path)
    if layout not in ("original", "diffusers"):
        raise ValueError(f"layout must be 'original' or 'diffusers', not {layout!r}")
    if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("safetensors metadata keys and values must be strings")
    tensors = original_to_diffusers(sd) if layout == "diffusers" else dict(sd)
    seen, out = set(), {}
    for key, value in tensors.items():
        value = _own_storage(value)
        if value.untyped_storage().data_ptr() in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    with atomic_path(path) as tmp:
        save_file(out, str(tmp), metadata=metadata)


# ----------------------------------------------------------------------------- motion LoRA

# Original AnimateDiff v2 LoRAs (diffusers LoRAAttnProcessor, applied by guoyww/AnimateDiff
# animatediff/utils/convert_lora_safetensor_to_diffusers.py load_diffusers_lora):
#   ...attention_blocks.0.processor.to_q_lora.down.weight [r, C], ...to_q_lora.up.weight [C, r]
# diffusers scripts/convert_animatediff_motion_lora_to_diffusers.py writes the same suffixes on
# diffusers module names with a "unet." prefix; PEFT-style to_q.lora_A/lora_B is accepted too.
_LORA_SUFFIX = [
    (re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$"), None),
    (re.compile(r"\.(to_q|to_k|to_v|to_out)(?:\.0)?\.lora\.(down|up)\.weight$"), None),
    (re.compile(r"\.(to_q|to_k|to_v|to_out)(?:\.0)?\.lora_(A|B)\.weight$"), {"A": "down", "B": "up"}),
]


def _lora_target(key: str) -> tuple[str, str] | None:
    """(canonical weight key, 'down'|'up') for one LoRA key, or None if it is not a motion LoRA key."""
    key = key[len("unet."):] if key.startswith("unet.") else key
    for pattern, rename in _LORA_SUFFIX:
        m = pattern.search(key)
        if m:
            proj = "to_out.0" if m.group(1) == "to_out" else m.group(1)
            side = rename[m.group(2)] if rename else m.group(2)
            target = f"{key[: m.start()]}.{proj}.weight"
            if ".temporal_transformer." not in target:
                target = _map_key(target, _TO_ORIGINAL)
            return (target, side) if _MODULE_RE.match(target) else None
    return None


def load_motion_lora(path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load a motion LoRA as {canonical weight key: (down [r, in], up [out, r])}."""
    path = os.fspath(path)
    sd = load_state_dict(path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        target = _lora_target(key)
        if target is None:
            if key.startswith(("lora_unet_", "lora_te")) or "motion_modules" not in key:
                raise MotionFormatError(f"{path} is not a motion LoRA (key {key}); expected keys like "
                                        f"{EXAMPLE_KEY}...attention_blocks.0.processor.to_q_lora.down.weight")
            raise MotionFormatError(f"{path} has a key this loader does not understand: {key}")
        pairs.setdefault(target[0], {})[target[1]] = value
    if not pairs:
        raise MotionFormatError(f"{path} contains no tensors; expected a motion LoRA")
    lora = {}
    for key, pair in pairs.items():
        if set(pair) != {"down", "up"}:
            raise MotionFormatError(f"{path} has only the {'/'.join(pair)} half of the LoRA for {key}")
        down, up = pair["down"], pair["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise MotionFormatError(f"{path}: LoRA for {key} has down {list(down.shape)} and up "
                                    f"{list(up.shape)}, which do not multiply")
        lora[key] = (down, up)
    return lora


def apply_motion_lora(sd: dict, lora: dict, strength: float, lora_path) -> dict:
    """Return a new state dict with W + strength * (up @ down) (in float32) on every LoRA target."""
    lora_path = os.fspath(lora_path)
    for key, (down, up) in lora.items():  # check everything before changing anything
        if key not in sd:
            raise MotionFormatError(f"{lora_path} does not fit this motion module: it patches {key}, "
                                    f"which the module does not have (LoRA for another architecture?)")
        delta_shape = [up.shape[0], down.shape[1]]
        if list(sd[key].shape) != delta_shape:
            raise MotionFormatError(f"{lora_path} does not fit this motion module: {key} is "
                                    f"{list(sd[key].shape)} in the module but {delta_shape} in the LoRA")
    out = dict(sd)
    for key, (down, up) in lora.items():
        w = sd[key]
        delta = up.to(w.device, torch.float32) @ down.to(w.device, torch.float32)
        out[key] = (w.float() + strength * delta).to(w.dtype)
    return out
