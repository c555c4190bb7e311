"""The per-GPU memory plan of a training run, from the real module sizes, printed at start and checked.

Weights, gradients and Adam states are counted exactly from the modules (`numel x element size`). The
activations are measured: the student's UNet + motion module forward and the discriminator's forward run on
PyTorch's meta device (shapes only, no memory, no compute) at the run's batch, frames and size, with its
gradient checkpointing, and every tensor autograd saves for the backward is counted. Attention is counted as a
fused kernel keeps it on the GPU (q, k, v, output and the log-sum-exp, never the n x n score matrix), and
checkpointed blocks as they run (inputs of every block kept, one block's saved tensors at a time during its
recomputation). Not counted: the CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation and the
transient buffers of a single op; leave 2-4 GiB of head room for them.

    python -m trainer.memory          # the plan of the paper's setting on full-size SD1.5 (no weights needed)
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_core.motion_module import MotionModuleConfig, MotionModuleSet
from trainer.config import Config
from trainer.discriminator import Discriminator
from trainer.sd15.clip import CLIPConfig, CLIPTextEncoder
from trainer.sd15.unet import UNet, UNetConfig
from trainer.sd15.vae import VAE, VAEConfig

GIB = 1 << 30


class MemoryPlanError(RuntimeError):
    """The memory plan of this run exceeds the device's memory (or run.memory_limit_gib)."""


@dataclass
class MemoryPlan:
    rows: list[tuple[str, int]]
    """(what, bytes on the GPU), in the order they are printed."""

    @property
    def total(self) -> int:
        return sum(b for _, b in self.rows)

    def table(self) -> str:
        width = max(len(name) for name, _ in self.rows)
        lines = [f"  {name:<{width}}  {b / GIB:8.2f} GiB" for name, b in self.rows]
        return "\n".join(lines + [f"  {'total':<{width}}  {self.total / GIB:8.2f} GiB"])


def param_bytes(module: nn.Module, dtype: torch.dtype | None = None, trainable_only: bool = False) -> int:
    """Bytes of a module's parameters and buffers (at `dtype` if given; trainable parameters only if asked)."""
    tensors = [p for p in module.parameters() if p.requires_grad or not trainable_only]
    if not trainable_only:
        tensors += list(module.buffers())
    size = (lambda t: torch.empty((), dtype=dtype).element_size()) if dtype is not None else (lambda t: t.element_size())
    return sum(t.numel() * size(t) for t in tensors)


class _FusedAttentionCount(TorchFunctionMode):
    """Runs scaled_dot_product_attention as a fused kernel would save it (no n x n matrix kept for the backward)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            return _FusedAttention.apply(q, k, v)
        return func(*args, **(kwargs or {}))


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        logsumexp = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad):  # never called: the meta forward only counts what is saved
        raise NotImplementedError


def saved_bytes(forward, element_size: int, checkpointed: list[nn.Module] = (), weights: list[nn.Module] = ()) -> int:
    """Bytes autograd keeps for the backward of `forward()` (meta tensors), at `element_size` bytes per element.

    Tensors that are (views of) parameters or buffers of `weights` cost nothing extra and are not counted.
    Blocks in `checkpointed` keep only their inputs, plus the largest block's own saved tensors while it is
    recomputed in the backward."""
    per_block: dict[int, int] = {}
    kept_inputs, outside, current = [0], [0], [None]
    weight_ids = {id(t) for m in weights for t in [*m.parameters(), *m.buffers()]}

    def pack(t):
        if id(t) in weight_ids or id(t._base) in weight_ids:
            return t
        n = t.numel() * (element_size if t.is_floating_point() else t.element_size())
        if current[0] is None:
            outside[0] += n
        else:
            per_block[current[0]] = per_block.get(current[0], 0) + n
        return t

    def enter(module, args):
        current[0] = id(module)
        kept_inputs[0] += sum(a.numel() * element_size for a in args if isinstance(a, torch.Tensor)
                              and a.is_floating_point() and a.dim() >= 3)

    def leave(module, args, output):
        current[0] = None

    hooks = [h for m in checkpointed for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _FusedAttentionCount():
            forward()
    finally:
        for h in hooks:
            h.remove()
    if not checkpointed:
        return outside[0] + sum(per_block.values())
    return outside[0] + kept_inputs[0] + max(per_block.values(), default=0)


@functools.lru_cache(maxsize=4)
def _meta_modules(unet_config: UNetConfig, motion_config: MotionModuleConfig) -> tuple[UNet, MotionModuleSet]:
    """A UNet and a motion module set of these shapes on the meta device (built once: construction is the slow part)."""
    with torch.device("meta"):
        return UNet(unet_config), MotionModuleSet(motion_config)


def _checkpointed_blocks(unet: UNet) -> list[nn.Module]:
    return [*unet.input_blocks, unet.middle_block, *unet.output_blocks]


def activation_bytes(unet_config: UNetConfig, motion_config: MotionModuleConfig, *, batch: int, frames: int,
                     size: int, num_flows: int, conditional: bool, adversarial: bool, checkpointing: bool,
                     element_size: int) -> dict[str, int]:
    """Saved-for-backward bytes of the G phase (student forward + D on its output) and the D phase (D on real and
    fake), measured on the meta device."""
    unet, student = _meta_modules(unet_config, motion_config)
    with torch.device("meta"):
        latent = size // 8
        x = torch.empty(batch * frames, unet_config.in_channels, latent, latent, requires_grad=True)
        t = torch.zeros(batch)
        context = torch.empty(batch, 77, unet_config.context_dim)
        blocks = _checkpointed_blocks(unet) if checkpointing else []
        student_act = saved_bytes(lambda: unet(x, t, context, num_frames=frames, motion=student), element_size,
                                  blocks, [unet, student])
        out = {"student": student_act}
        if adversarial:
            down = 2 ** (len(unet_config.channel_mult) - 1)
            feature = (frames, max(1, latent // down), max(1, latent // down))
            d = Discriminator(unet, student, num_flows, conditional, feature)
            video = torch.empty(batch, frames, unet_config.in_channels, latent, latent, requires_grad=True)
            flow = torch.zeros(batch, dtype=torch.long)
            cond = d.features(video, t, context, flow).detach() if conditional else None
            d_blocks = [*d.unet.input_blocks, d.unet.middle_block] if checkpointing else []
            one_d = saved_bytes(lambda: d(video, t, context, flow, cond), element_size, d_blocks, [d])
            out["discriminator"] = one_d
    return out


def plan(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, teacher: MotionModuleSet, cfg: Config,
         num_flows: int, cuda_bf16: bool) -> MemoryPlan:
    """The per-GPU plan of `cfg` for one rank holding these modules (real ones, or meta-device stand-ins)."""
    base_dtype = torch.bfloat16 if cuda_bf16 else torch.float32
    base = sum(param_bytes(m, base_dtype) for m in (unet, vae, text_encoder))
    motion = param_bytes(teacher, torch.float32)
    distilled_teachers = any(s.teacher_steps in {p.student_steps for p in cfg.stages[:i]}
                             for i, s in enumerate(cfg.stages))
    adversarial = [s for s in cfg.stages if s.loss == "adversarial"]
    conditional = any(s.discriminator == "conditional" for s in adversarial)
    d_bytes = 0
    if adversarial:
        with torch.device("meta"):
            d = Discriminator(*_meta_modules(unet.config, teacher.config), num_flows, conditional,
                              (cfg.data.frames, 1, 1))
        d_bytes = param_bytes(d, torch.float32)
    act = activation_bytes(unet.config, teacher.config, batch=cfg.optim.batch_size, frames=cfg.data.frames,
                           size=cfg.data.size, num_flows=num_flows, conditional=conditional,
                           adversarial=bool(adversarial), checkpointing=cfg.run.gradient_checkpointing,
                           element_size=2 if cuda_bf16 else 4)
    # Offloaded, the teachers visit the GPU only for their no-grad forwards, before the activations peak.
    offload = cfg.run.teacher_offload and cuda_bf16
    teacher, where = (0, ", offloaded to CPU") if offload else (motion, "")
    rows = [(f"base model ({'bf16' if cuda_bf16 else 'fp32'}: UNet, VAE, CLIP text)", base),
            (f"teacher motion module (fp32{where})", teacher)]
    if distilled_teachers:
        rows.append((f"distilled teacher of later stages (fp32{where})", teacher))
    rows += [("student motion module (fp32)", motion), ("student gradients (fp32)", motion),
             ("student Adam states (2 x fp32)", 2 * motion)]
    if adversarial:
        rows += [("discriminator (fp32)", d_bytes), ("discriminator gradients (fp32)", d_bytes),
                 ("discriminator Adam states (2 x fp32)", 2 * d_bytes)]
    peak = act["student"] + act.get("discriminator", 0)  # G phase: student and D on its output
    peak = max(peak, 2 * act.get("discriminator", 0))  # D phase: D on real and on fake
    rows.append((f"activations, batch {cfg.optim.batch_size} x {cfg.data.frames} frames x {cfg.data.size}^2"
                 f"{', checkpointed' if cfg.run.gradient_checkpointing else ''}", peak))
    return MemoryPlan(rows)


def check(memory_plan: MemoryPlan, limit_bytes: int, where: str) -> None:
    """MemoryPlanError when the plan exceeds limit_bytes (0: no limit known)."""
    if limit_bytes and memory_plan.total > limit_bytes:
        raise MemoryPlanError(
            f"the memory plan needs {memory_plan.total / GIB:.2f} GiB per GPU, more than the {limit_bytes / GIB:.2f} "
            f"GiB of {where}:\n{memory_plan.table()}\nLower data.size, data.frames or optim.batch_size, set "
            f"run.gradient_checkpointing = true or run.teacher_offload = true, or use a larger GPU")


def device_limit(cfg: Config, device: torch.device) -> tuple[int, str]:
    """(bytes the plan must fit, what they are): run.memory_limit_gib, else the GPU's memory, else (0, '')."""
    if cfg.run.memory_limit_gib:
        return int(cfg.run.memory_limit_gib * GIB), "run.memory_limit_gib"
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, torch.cuda.get_device_name(device)
    return 0, ""


def full_size_plan(cfg: Config | None = None) -> MemoryPlan:
    """The plan for full-size SD1.5 + AnimateDiff v2 (built on the meta device), bf16 on a GPU."""
    cfg = cfg or Config()
    unet, motion = _meta_modules(UNetConfig(), MotionModuleConfig())
    with torch.device("meta"):
        vae, text_encoder = VAE(VAEConfig()), CLIPTextEncoder(CLIPConfig())
    return plan(unet, vae, text_encoder, motion, cfg, num_flows=len({r.base for r in cfg.ranks}) or 6, cuda_bf16=True)


if __name__ == "__main__":
    import sys

    from trainer.config import load_config, paper_stages

    config = load_config(sys.argv[1:], check_files=False) if len(sys.argv) > 1 else Config()
    for label, stages in (("MSE stage (128 -> 32)", paper_stages()[:1]), ("adversarial stages", paper_stages()[1:])):
        run_cfg = copy.deepcopy(config)
        run_cfg.stages = stages
        print(f"{label}, run.gradient_checkpointing = {str(run_cfg.run.gradient_checkpointing).lower()}, "
              f"run.teacher_offload = {str(run_cfg.run.teacher_offload).lower()}:")
        print(full_size_plan(run_cfg).table())
