import pytest
import torch

from fixtures.motion_files import motion_module_shapes, random_motion_state_dict
from lightning_core import formats
from lightning_core.motion_module import MotionModule, MotionModuleConfig, MotionModuleSet

TINY = MotionModuleConfig(block_channels=(32, 64), down_layers=1, up_layers=2)


def random_set(config=TINY, seed=0, std=0.2):
    shapes = motion_module_shapes(config.block_channels, config.down_layers, config.up_layers,
                                  config.mid_block, config.position_encoding_length)
    return MotionModuleSet.from_state_dict(random_motion_state_dict(shapes, seed=seed, std=std))


@pytest.mark.parametrize("mid_block,pe_length", [(True, 32), (False, 24), (True, None)])
def test_full_size_parameter_names_and_shapes_are_the_official_ones(mid_block, pe_length):
    with torch.device("meta"):
        module = MotionModuleSet(MotionModuleConfig(mid_block=mid_block, position_encoding_length=pe_length))
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert ours == motion_module_shapes(mid_block=mid_block, pe_length=pe_length)
    if mid_block and pe_length == 32:  # the v2 / Lightning module: 453M parameters
        assert sum(v.numel() for v in module.parameters()) == pytest.approx(453e6, rel=0.01)


def test_config_is_read_back_from_a_state_dict():
    sd = random_set().state_dict()
    assert MotionModuleConfig.from_state_dict(sd) == TINY


def per_frame(norm, frames):
    """Makes a diffusers motion-module GroupNorm act per frame, as the original AnimateDiff's does."""
    class PerFrameGroupNorm(torch.nn.Module):
        def forward(self, x):  # (b, c, f, h, w)
            b, c, f, h, w = x.shape
            y = norm(x.transpose(1, 2).reshape(b * f, c, h, w))
            return y.reshape(b, f, c, h, w).transpose(1, 2)
    return PerFrameGroupNorm()


def test_matches_diffusers_transformer_with_per_frame_norm():
    diffusers = pytest.importorskip("diffusers")
    ours = random_set()
    adapter = diffusers.MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1,
                                      motion_mid_block_layers_per_block=1, motion_num_attention_heads=8,
                                      motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True)
    adapter.load_state_dict(formats.original_to_diffusers(ours.state_dict()), strict=True)
    x = torch.randn(2 * 16, 64, 5, 3, generator=torch.Generator().manual_seed(2))
    reference = adapter.up_blocks[0].motion_modules[1]
    stock = reference(x, num_frames=16)
    reference.norm = per_frame(reference.norm, 16)
    out = ours.up_blocks[0].motion_modules[1](x, 16)
    torch.testing.assert_close(out, reference(x, num_frames=16), rtol=1e-5, atol=1e-5)
    assert (out - stock).abs().max() > 1e-2  # the norm really differs from stock diffusers


def test_videos_in_a_batch_do_not_mix_and_frames_do():
    module = random_set().down_blocks[1].motion_modules[0]
    a, b = torch.randn(2, 8, 64, 4, 4).unbind(0)
    both = module(torch.cat([a, b]), 8)
    torch.testing.assert_close(both[:8], module(a, 8), rtol=1e-5, atol=1e-6)
    changed = a.clone()
    changed[0] += torch.randn_like(a[0])  # not a constant: the per-frame norm would remove that
    assert (module(changed, 8)[1:] - module(a, 8)[1:]).abs().max() > 1e-3  # frame 0 reaches the others


def test_effect_and_scale():
    module = random_set().down_blocks[0].motion_modules[0]
    x = torch.randn(16, 32, 2, 2)
    torch.testing.assert_close(module(x, 16, effect=0.0), x)
    half = module(x, 16, effect=0.5)
    torch.testing.assert_close(half, x + 0.5 * (module(x, 16) - x), rtol=1e-5, atol=1e-6)
    assert (module(x, 16, scale_multiplier=1.3) - module(x, 16)).abs().max() > 1e-4


def test_more_frames_than_the_position_encoding_is_a_clear_error():
    module = random_set().down_blocks[0].motion_modules[0]
    with pytest.raises(ValueError, match="is 33 frames but this motion module.s position encoding covers 32 frames"):
        module(torch.randn(33, 32, 2, 2), 33)


def test_zero_output_projection_is_the_identity():
    module = MotionModule(32, 8, 32)
    torch.nn.init.zeros_(module.temporal_transformer.proj_out.weight)
    torch.nn.init.zeros_(module.temporal_transformer.proj_out.bias)
    x = torch.randn(16, 32, 2, 2)
    torch.testing.assert_close(module(x, 16), x)
