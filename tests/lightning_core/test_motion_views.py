"""Views: the motion module's temporal attention in windows of frames, fused per frame (FreeNoise's design).

Checked against a per-window loop written out here, against diffusers' FreeNoiseTransformerBlock on the same
weights, and bit for bit against no views when one view covers every frame.
"""
import pytest
import torch

from lightning_core import context, formats
from lightning_core.motion_module import MotionModuleConfig
from test_motion_module import per_frame, random_set

TINY = MotionModuleConfig(block_channels=(32, 64), down_layers=1, up_layers=2)


def by_hand(module, x, num_frames, windows, weights):
    """One temporal transformer with its attentions run window by window in a Python loop, fused per frame."""
    transformer = module.temporal_transformer
    block = transformer.transformer_blocks[0]
    bf, c, h, w = x.shape
    tokens = transformer.norm(x).view(bf // num_frames, num_frames, c, h * w).permute(0, 3, 1, 2)
    tokens = tokens.reshape(-1, num_frames, c)
    tokens = transformer.proj_in(tokens)
    fused, total = torch.zeros_like(tokens), torch.zeros(num_frames)
    for window, weight in zip(windows, weights):
        for frame, out, wt in zip(window, block.attend(tokens[:, window]).unbind(1), weight):
            fused[:, frame] += out * wt
            total[frame] += wt
    tokens = fused / total.view(1, -1, 1)
    tokens = block.ff(block.ff_norm(tokens)) + tokens
    tokens = transformer.proj_out(tokens)
    return x + tokens.view(bf // num_frames, h * w, num_frames, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)


@pytest.mark.parametrize("schedule,fuse,frames,length,overlap,step", [
    ("standard_static", "pyramid", 40, 16, 4, 0),
    ("standard_uniform", "relative", 37, 8, 3, 3),
    ("looped_uniform", "flat", 20, 6, 2, 1),
    ("batched", "flat", 21, 8, 0, 0),  # a shorter last view: its own group
])
def test_views_equal_a_per_window_loop(schedule, fuse, frames, length, overlap, step):
    module = random_set(TINY).down_blocks[1].motion_modules[0]
    x = torch.randn(2 * frames, 64, 3, 2, generator=torch.Generator().manual_seed(5))
    views = context.view_windows(schedule, fuse, frames, length, overlap, step,
                                 closed_loop=schedule == "looped_uniform")
    windows = [w for group in views[0] for w in group]
    assert len(windows) > 1 and max(map(len, windows)) == length
    with torch.no_grad():
        ours = module(x, frames, views=views)
        reference = by_hand(module, x, frames, windows, views[1])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_one_view_over_all_frames_is_no_views_bit_for_bit():
    module = random_set(TINY).up_blocks[0].motion_modules[1]
    x = torch.randn(2 * 12, 64, 3, 3, generator=torch.Generator().manual_seed(1))
    for length in (12, 16):  # the view as long as the video, and longer
        assert context.view_windows("standard_uniform", "pyramid", 12, length, 4) is None
    one_window = ([[list(range(12))]], [context.pyramid_weights(12)])
    with torch.no_grad():
        plain = module(x, 12)
        assert torch.equal(module(x, 12, views=None), plain)
        # Given explicitly, one weighted view differs from the plain result only by rounding (w * a / w).
        torch.testing.assert_close(module(x, 12, views=one_window), plain, rtol=1e-5, atol=1e-5)


def test_views_let_a_video_exceed_the_position_encoding():
    module = random_set(TINY).mid_block.motion_modules[0]
    x = torch.randn(48, 64, 2, 2)
    with pytest.raises(ValueError, match="or views"):
        module(x, 48)
    views = context.view_windows("standard_static", "pyramid", 48, 16, 4)
    with torch.no_grad():
        assert module(x, 48, views=views).shape == x.shape


def test_views_equal_diffusers_freenoise_block():
    diffusers = pytest.importorskip("diffusers")
    ours = random_set(TINY)
    adapter = diffusers.MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1,
                                      motion_mid_block_layers_per_block=1, motion_num_attention_heads=8,
                                      motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True)
    adapter.load_state_dict(formats.original_to_diffusers(ours.state_dict()), strict=True)
    reference = adapter.down_blocks[1].motion_modules[0]
    block = reference.transformer_blocks[0]
    freenoise = diffusers.models.attention.FreeNoiseTransformerBlock(
        dim=block.dim, num_attention_heads=block.num_attention_heads, attention_head_dim=block.attention_head_dim,
        cross_attention_dim=block.cross_attention_dim, activation_fn=block.activation_fn,
        attention_bias=block.attention_bias, double_self_attention=block.double_self_attention,
        positional_embeddings=block.positional_embeddings,
        num_positional_embeddings=block.num_positional_embeddings, context_length=16, context_stride=8)
    freenoise.load_state_dict(block.state_dict(), strict=True)
    reference.transformer_blocks[0] = freenoise
    reference.norm = per_frame(reference.norm, 48)
    x = torch.randn(48, 64, 3, 3, generator=torch.Generator().manual_seed(4))
    # diffusers' windows every context_stride frames are our static schedule with overlap = length - stride.
    views = context.view_windows("standard_static", "pyramid", 48, 16, 8)
    with torch.no_grad():
        ours_out = ours.down_blocks[1].motion_modules[0](x, 48, views=views)
        expected = reference(x, num_frames=48)
    torch.testing.assert_close(ours_out, expected, rtol=1e-5, atol=1e-5)
