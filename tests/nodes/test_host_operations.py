"""The inserted temporal layers use the host's operations, are counted in the model's size and memory estimate."""

import pytest
import torch

from fixtures import inprocess


@pytest.fixture(scope="module")
def adl():
    return inprocess.import_package()


def load(adl, comfy_base, checkpoint, dtype):
    import comfy.sd

    path = comfy_base / "models" / "checkpoints" / checkpoint
    model, *_ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False,
                                                      model_options={"dtype": dtype})
    return model


def apply(adl, model, state_dict):
    host = adl.nodes.host
    motion_set = host.build_motion_set(model, state_dict)
    return host.inject_motion_module(model, motion_set, {"name": "test", "position_encoding_length": 32}), motion_set


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn], ids=str)
def test_motion_layers_are_built_from_the_unets_operations(adl, comfy_base, tiny_checkpoint,
                                                           tiny_motion_state_dict, dtype):
    import comfy.ops

    model = load(adl, comfy_base, tiny_checkpoint, dtype)
    patched, motion_set = apply(adl, model, tiny_motion_state_dict)
    unet_linear = type(model.model.diffusion_model.time_embed[0])
    expected = comfy.ops.disable_weight_init if dtype == torch.float32 else comfy.ops.manual_cast
    assert unet_linear is expected.Linear
    for module in motion_set.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm)):
            assert type(module) is getattr(expected, type(module).__bases__[0].__name__), type(module)
            assert hasattr(module, "comfy_cast_weights")
    assert {p.dtype for p in motion_set.parameters()} == {dtype}
    pe = [b for name, b in motion_set.named_buffers() if name.endswith("pos_encoder.pe")]
    assert pe and all(b.dtype == torch.float32 for b in pe)  # the position table is never rounded to fp8


def test_model_size_counts_the_motion_weights_once(adl, comfy_base, tiny_checkpoint, tiny_motion_state_dict):
    import comfy.model_management

    model = load(adl, comfy_base, tiny_checkpoint, torch.float16)
    base_size = model.model_size()
    patched, motion_set = apply(adl, model, tiny_motion_state_dict)
    motion_bytes = comfy.model_management.module_size(motion_set)
    assert motion_bytes == sum(p.numel() * 2 for p in motion_set.parameters()) + 4 * sum(
        b.numel() for b in motion_set.buffers())
    assert patched.model_size() == base_size + motion_bytes
    assert model.model_size() == base_size  # the input MODEL is untouched
    twice, _ = apply(adl, patched, tiny_motion_state_dict)
    assert twice.model_size() == base_size + motion_bytes


def test_memory_estimate_adds_the_temporal_attention(adl, comfy_base, tiny_checkpoint, tiny_motion_state_dict):
    from adl.lightning_core.motion_module import temporal_attention_bytes

    model = load(adl, comfy_base, tiny_checkpoint, torch.float32)
    patched, _ = apply(adl, model, tiny_motion_state_dict)
    shape = [2 * 16, 4, 64, 64]  # cond and uncond of a 16-frame 512x512 video
    base = model.model.memory_required(shape)
    estimate = patched.get_model_object("memory_required")(shape)
    assert estimate == base + temporal_attention_bytes(32, 64, 64, 32, 8, 4)
    assert estimate > base
    again, _ = apply(adl, patched, tiny_motion_state_dict)  # re-applying does not stack the term
    assert again.get_model_object("memory_required")(shape) == estimate


def test_partial_loading_reaches_the_motion_layers(adl, comfy_base, tiny_checkpoint, tiny_motion_state_dict):
    # Low-VRAM mode loads modules with `comfy_cast_weights` until the budget is spent and casts the rest on
    # the fly; a budget of one byte leaves every such module offloaded, the temporal layers included.
    model = load(adl, comfy_base, tiny_checkpoint, torch.float16)
    patched, motion_set = apply(adl, model, tiny_motion_state_dict)
    patched.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=1)
    try:
        motion_linears = [m for m in motion_set.modules() if isinstance(m, torch.nn.Linear)]
        assert motion_linears and all(m.comfy_cast_weights for m in motion_linears)
        assert all(hasattr(m, "prev_comfy_cast_weights") for m in motion_linears)
    finally:
        patched.unpatch_model()
    assert not any(hasattr(m, "prev_comfy_cast_weights") for m in motion_set.modules())
