"""Our UNet against diffusers' UNet2DConditionModel / UNetMotionModel on the same random weights."""
import copy

import pytest
import torch

from sd15_oracles import SMALL_UNET
from fixtures.motion_files import motion_module_shapes, random_motion_state_dict
from fixtures.oracle import build_adapter, build_motion_unet, patch_per_frame_norm
from lightning_core import formats
from lightning_core.motion_module import MotionModuleConfig, MotionModuleSet
from trainer.sd15 import UNetConfig, tiny_motion_config

ATOL = 1e-4  # float32, outputs of std ~0.3-1; measured differences are ~1e-6


def inputs(batch, h, w, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, h, w, generator=gen)
    context = torch.randn(batch, 77, SMALL_UNET["cross_attention_dim"], generator=gen)
    t = torch.linspace(999.0, 1.5, batch)
    return x, t, context


def small_motion(seed=5):
    config = MotionModuleConfig(block_channels=(32, 64, 64), down_layers=2, up_layers=3)
    shapes = motion_module_shapes(config.block_channels, 2, 3, True, 32)
    return MotionModuleSet.from_state_dict(random_motion_state_dict(shapes, seed=seed, std=0.1))


def test_config_is_inferred_from_the_checkpoint(small_base):
    assert small_base.config == UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                                           attention_levels=(True, True, False), context_dim=128)


@pytest.mark.parametrize("h,w", [(8, 8), (10, 6)])  # 10x6 -> 5x3 -> 3x2: odd sizes need the skips' sizes
def test_unet_equals_diffusers(small_base, diffusers_unet, h, w):
    x, t, context = inputs(2, h, w)
    with torch.no_grad():
        ours = small_base.unet(x, t, context)
        ref = diffusers_unet(x, t, encoder_hidden_states=context).sample
    assert ref.std() > 0.1
    assert (ours - ref).abs().max() < ATOL


def test_time_emb_extra_equals_diffusers_identity_class_embedding(small_base, diffusers_unet):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        with_class = UNet2DConditionModel(**SMALL_UNET, class_embed_type="identity")
    with_class.load_state_dict(diffusers_unet.state_dict(), strict=True, assign=True)
    x, t, context = inputs(2, 8, 8)
    extra = torch.randn(2, small_base.config.time_embed_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = small_base.unet(x, t, context, time_emb_extra=extra)
        ref = with_class(x, t, encoder_hidden_states=context, class_labels=extra).sample
        plain = small_base.unet(x, t, context)
    assert (ours - ref).abs().max() < ATOL
    assert (ours - plain).abs().max() > 1e-2


def test_return_mid_equals_diffusers_mid_block_output(small_base, diffusers_unet):
    x, t, context = inputs(2, 8, 8)
    captured = []
    hook = diffusers_unet.mid_block.register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        with torch.no_grad():
            diffusers_unet(x, t, encoder_hidden_states=context)
            ours = small_base.unet(x, t, context, return_mid=True)
    finally:
        hook.remove()
    assert ours.shape == (2, 64, 2, 2)
    assert (ours - captured[0]).abs().max() < ATOL


def test_unet_with_motion_equals_diffusers_unet_motion_model(small_base, diffusers_unet):
    """Oracle: UNetMotionModel.from_unet2d on the same weights, its motion norms made per-frame as in AnimateDiff."""
    motion = small_motion()
    adapter = build_adapter(formats.original_to_diffusers(motion.state_dict()), dict(
        block_out_channels=(32, 64, 64), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True))
    motion_unet = build_motion_unet(diffusers_unet, adapter)
    assert patch_per_frame_norm(motion_unet) == 3 * 2 + 3 * 3 + 1
    b, f, h, w = 2, 5, 8, 8
    x, _, _ = inputs(b * f, h, w, seed=7)
    _, _, context = inputs(b, h, w, seed=8)
    t = torch.tensor([999.0, 250.0])
    context = context.repeat_interleave(f, 0)  # per frame, as AnimateDiffPipeline passes it
    with torch.no_grad():
        ref = motion_unet(x.unflatten(0, (b, f)).transpose(1, 2), t, encoder_hidden_states=context).sample
        ref = ref.transpose(1, 2).flatten(0, 1)
        ours = small_base.unet(x, t.repeat_interleave(f), context, num_frames=f, motion=motion)
        image_only = small_base.unet(x, t.repeat_interleave(f), context)
    assert (ours - ref).abs().max() < ATOL
    assert (ours - image_only).abs().max() > 1e-2  # the motion modules really act


def test_gradient_checkpointing_gives_the_same_output_and_gradients(small_base):
    unet = copy.deepcopy(small_base.unet)
    motion = small_motion().requires_grad_(True)
    x, t, context = inputs(4, 8, 8)
    results = []
    for checkpointing in (False, True):
        unet.gradient_checkpointing = checkpointing
        motion.zero_grad(set_to_none=True)
        out = unet(x, t, context, num_frames=4, motion=motion)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in motion.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads_a, grads_b))
    assert all(p.grad is None for p in unet.parameters())  # the frozen base gets no gradient


def test_a_motion_module_for_another_unet_is_a_clear_error(small_base):
    other = MotionModuleSet(MotionModuleConfig(block_channels=(32, 64), down_layers=1, up_layers=2))
    x, t, context = inputs(2, 8, 8)
    with pytest.raises(ValueError, match=r"block channels \(32, 64\).*\(32, 64, 64\)"):
        small_base.unet(x, t, context, num_frames=2, motion=other)


def test_motion_config_for_the_full_unet_is_animatediff_v2():
    assert tiny_motion_config(UNetConfig()) == MotionModuleConfig()


def test_per_video_timesteps_and_context_are_repeated_over_frames(small_base):
    x, t, context = inputs(6, 8, 8)
    with torch.no_grad():
        per_video = small_base.unet(x, t[[0, 3]], context[[0, 3]], num_frames=3)
        per_frame = small_base.unet(x, t[[0, 3]].repeat_interleave(3), context[[0, 3]].repeat_interleave(3, 0),
                                    num_frames=3)
    assert torch.equal(per_video, per_frame)
    with pytest.raises(ValueError, match=r"t has 4 entries, expected 1, 2 \(one per video\) or 6 \(one per frame\)"):
        small_base.unet(x, t[:4], context, num_frames=3)
