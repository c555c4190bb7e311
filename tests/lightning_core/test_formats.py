"""lightning_core.formats: loading, detection, conversion, saving and motion LoRAs."""
from __future__ import annotations

import os

import pytest
import torch

from lightning_core import formats
from lightning_core.formats import MotionFormatError
from tests.fixtures import motion_files as mf

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tiny_shapes(**overrides):
    return mf.motion_module_shapes(**{**mf.TINY, **overrides})


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def expect_error(path, *fragments):
    """load_motion_module(path) must raise MotionFormatError naming the file and the fragments."""
    with pytest.raises(MotionFormatError) as err:
        formats.load_motion_module(path)
    message = str(err.value)
    assert os.fspath(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_save_load_round_trip(tmp_path, dtype, layout):
    sd = mf.random_motion_state_dict(tiny_shapes(), dtype=dtype)
    path = tmp_path / "mm.safetensors"
    formats.save_motion_module(path, sd, layout=layout)
    loaded, info = formats.load_motion_module(path)
    assert_same(loaded, sd)
    assert info.layout == layout and info.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_fixture_writers_load_identically(tmp_path, dtype):
    sd = mf.random_motion_state_dict(tiny_shapes(), dtype=dtype)
    paths = [mf.write_safetensors(tmp_path / "a.safetensors", sd),
             mf.write_diffusers(tmp_path / "b.safetensors", sd),
             mf.write_ckpt(tmp_path / "c.ckpt", sd),
             mf.write_ckpt(tmp_path / "d.pt", sd, wrap=True),
             mf.write_ckpt(tmp_path / "e.pth", sd, wrap=True, module_prefix=True,
                           extra={"animatediff_config": "v2"})]
    for path in paths:
        loaded, _ = formats.load_motion_module(path)
        assert_same(loaded, sd)


def test_key_maps_are_exact_inverses():
    sd = mf.random_motion_state_dict(tiny_shapes())
    diffusers = formats.original_to_diffusers(sd)
    assert set(diffusers) == set(mf.to_diffusers_naming(sd))
    assert "down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe" in diffusers
    assert_same(formats.diffusers_to_original(diffusers), sd)


def test_original_to_diffusers_refuses_to_drop_a_different_pe():
    sd = mf.random_motion_state_dict(tiny_shapes())
    sd["mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"] += 1
    with pytest.raises(ValueError, match="attention_blocks.1.pos_encoder.pe"):
        formats.original_to_diffusers(sd)


def test_diffusers_naming_loads_strictly_into_motion_adapter():
    diffusers = pytest.importorskip("diffusers")
    adapter = diffusers.MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1,
                                      use_motion_mid_block=True, motion_max_seq_length=32)
    sd = mf.random_motion_state_dict(tiny_shapes())
    adapter.load_state_dict(formats.original_to_diffusers(sd), strict=True)
    # and back: what diffusers holds maps onto exactly our canonical keys
    back = formats.diffusers_to_original(adapter.state_dict())
    assert set(back) == set(sd)
    assert torch.equal(back["up_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0"
                            ".attention_blocks.1.pos_encoder.pe"],
                       sd["up_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0"
                          ".attention_blocks.1.pos_encoder.pe"])  # diffusers' sinusoid == ours


@pytest.fixture(scope="module")
def full_v2():
    sd = mf.random_motion_state_dict(mf.motion_module_shapes(), dtype=torch.float16)
    yield sd
    sd.clear()


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_full_size_v2_round_trip(tmp_path, full_v2, layout):
    # diffusers.MotionAdapter() (the v2 / Lightning config) holds 453,813,440 numbers
    assert sum(v.numel() for v in formats.original_to_diffusers(full_v2).values()) == 453_813_440
    path = tmp_path / f"animatediff_lightning_4step_{'comfyui' if layout == 'original' else 'diffusers'}.safetensors"
    formats.save_motion_module(path, full_v2, layout=layout, metadata={"animatediff_lightning_steps": "4"})
    loaded, info = formats.load_motion_module(path)
    assert info == formats.MotionModuleInfo(layout, "lightning", True, 32, mf.SD15_CHANNELS, 2, 3, 4, torch.float16)
    assert_same(loaded, full_v2)
    del loaded


# ----------------------------------------------------------------------------- detection

@pytest.mark.parametrize("name,kwargs,family,mid,pe", [
    ("v1", dict(mid_block=False, pe_length=24), "v1", False, 24),
    ("v2", dict(mid_block=True, pe_length=32), "v2", True, 32),
    ("v3", dict(mid_block=False, pe_length=32), "v3", False, 32),
])
def test_detect_versions(tmp_path, name, kwargs, family, mid, pe):
    sd = mf.random_motion_state_dict(tiny_shapes(**kwargs))
    for layout, writer in (("original", mf.write_safetensors), ("diffusers", mf.write_diffusers)):
        path = writer(tmp_path / f"{name}_{layout}.safetensors", sd)
        loaded, info = formats.load_motion_module(path)
        assert (info.layout, info.family, info.has_mid_block, info.position_encoding_length) == (layout, family, mid, pe)
        assert (info.block_channels, info.down_layers, info.up_layers, info.lightning_steps) == ((32, 64), 1, 2, None)
        assert_same(loaded, sd)


def test_detect_full_size_channels_without_loading_tensors():
    shapes = mf.motion_module_shapes(mid_block=False, pe_length=24)
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    info = formats.detect(sd, "mm_sd_v15.ckpt")
    assert (info.family, info.block_channels, info.down_layers, info.up_layers) == ("v1", mf.SD15_CHANNELS, 2, 3)


def test_animatelcm_gets_its_64_frame_sinusoid(tmp_path):
    sd = mf.animatelcm_state_dict(mf.TINY["block_channels"], 1, 2)
    path = mf.write_safetensors(tmp_path / "AnimateLCM_sd15_t2v.safetensors", sd)
    loaded, info = formats.load_motion_module(path)
    assert (info.family, info.has_mid_block, info.position_encoding_length) == ("animatelcm", True, 64)
    pe = loaded["up_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"]
    assert torch.allclose(pe, mf.sinusoid(64, 64))
    assert_same({k: loaded[k] for k in sd}, sd)
    # re-saved (now with PE keys) it is still AnimateLCM
    formats.save_motion_module(tmp_path / "again.safetensors", loaded)
    assert formats.load_motion_module(tmp_path / "again.safetensors")[1].family == "animatelcm"
    # AnimateLCM's own training code names the buffer pos_encoder.pos_encoding ([1, 64, C])
    named = {k.replace("pos_encoder.pe", "pos_encoder.pos_encoding"): v for k, v in loaded.items()}
    again, info = formats.load_motion_module(mf.write_safetensors(tmp_path / "lcm_train.safetensors", named))
    assert info.family == "animatelcm" and info.position_encoding_length == 64
    assert_same(again, loaded)


def test_lightning_files_named_like_the_official_ones(tmp_path):
    sd = mf.random_motion_state_dict(tiny_shapes(), dtype=torch.float16)
    comfy = mf.write_safetensors(tmp_path / "animatediff_lightning_4step_comfyui.safetensors", sd)
    diff = mf.write_diffusers(tmp_path / "animatediff_lightning_8step_diffusers.safetensors", sd)
    _, a = formats.load_motion_module(comfy)
    _, b = formats.load_motion_module(diff)
    assert (a.family, a.layout, a.lightning_steps) == ("lightning", "original", 4)
    assert (b.family, b.layout, b.lightning_steps) == ("lightning", "diffusers", 8)
    # the same bytes under a neutral name are plain v2: keys cannot tell them apart
    os.rename(comfy, tmp_path / "mm.safetensors")
    assert formats.load_motion_module(tmp_path / "mm.safetensors")[1].family == "v2"


@pytest.mark.parametrize("name,metadata,steps", [
    ("animatediff_lightning_4step_comfyui.safetensors", None, 4),
    ("animatediff_lightning_8step_diffusers.safetensors", None, 8),
    ("AnimateDiff-Lightning-2steps.safetensors", None, 2),
    ("my_export.safetensors", {"animatediff_lightning_steps": "2"}, 2),
    ("animatediff_lightning_4step_comfyui.safetensors", {"animatediff_lightning_steps": "1"}, 1),
    ("mm_sd_v15_v2.ckpt", None, None),
    ("lightning.safetensors", {"other": "x"}, None),
])
def test_lightning_steps(name, metadata, steps):
    assert formats.lightning_steps(name, metadata) == steps


def test_lightning_steps_metadata_round_trip(tmp_path):
    sd = mf.random_motion_state_dict(tiny_shapes())
    path = tmp_path / "export.safetensors"
    formats.save_motion_module(path, sd, metadata={"animatediff_lightning_steps": "4"})
    assert formats.read_metadata(path) == {"animatediff_lightning_steps": "4"}
    assert formats.load_motion_module(path)[1].lightning_steps == 4
    assert formats.read_metadata(mf.write_ckpt(tmp_path / "x.ckpt", sd)) == {}
    with pytest.raises(MotionFormatError, match="not an integer"):
        formats.lightning_steps(path, {"animatediff_lightning_steps": "four"})


# ----------------------------------------------------------------------------- bad inputs

def test_sd_checkpoint_is_refused(tmp_path):
    path = mf.write_safetensors(tmp_path / "sd15.safetensors", mf.sd_checkpoint_state_dict())
    expect_error(path, "Stable Diffusion checkpoint", "model.diffusion_model", "motion_modules")


@pytest.mark.parametrize("diffusers_naming", [False, True])
def test_lora_given_as_motion_module_is_refused(tmp_path, diffusers_naming):
    lora = mf.motion_lora_state_dict(tiny_shapes(), rank=4, diffusers_naming=diffusers_naming)
    expect_error(mf.write_safetensors(tmp_path / "v2_lora_ZoomIn.safetensors", lora), "LoRA")


def test_empty_and_unknown_dicts_are_refused(tmp_path):
    expect_error(mf.write_safetensors(tmp_path / "empty.safetensors", {}), "no tensors")
    unknown = {"encoder.layer.0.weight": torch.zeros(2, 2)}
    expect_error(mf.write_safetensors(tmp_path / "bert.safetensors", unknown), "not an AnimateDiff motion module")


def test_sdxl_and_hotshot_are_refused():
    shapes = mf.motion_module_shapes(block_channels=(320, 640, 1280), mid_block=False)
    sdxl = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with pytest.raises(MotionFormatError, match="mm_sdxl_v10_beta.ckpt is an SDXL motion module.*SD1.5"):
        formats.detect(sdxl, "mm_sdxl_v10_beta.ckpt")
    hotshot = {"down_blocks.0.temporal_attentions.0.transformer_blocks.0.attention_blocks.0.pos_encoder"
               ".positional_encoding": torch.zeros(1, 8, 320)}
    with pytest.raises(MotionFormatError, match="hsxl_temporal_layers.safetensors is a HotshotXL.*SD1.5"):
        formats.detect(hotshot, "hsxl_temporal_layers.safetensors")


def test_inconsistent_missing_and_unexpected_keys(tmp_path):
    sd = mf.random_motion_state_dict(tiny_shapes())
    key = "up_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0.ff.net.2.weight"
    expect_error(mf.write_safetensors(tmp_path / "shape.safetensors", {**sd, key: torch.zeros(32, 64)}),
                 key, "[32, 64]", "[32, 128]")
    missing = {k: v for k, v in sd.items() if k != key}
    expect_error(mf.write_safetensors(tmp_path / "missing.safetensors", missing), "missing", key)
    extra = {**sd, "conv_in.weight": torch.zeros(320, 9, 3, 3)}  # PIA
    expect_error(mf.write_safetensors(tmp_path / "pia.safetensors", extra), "unexpected", "conv_in.weight")
    up = dict(sd)
    up["up_blocks.0.motion_modules.0.temporal_transformer.norm.weight"] = torch.zeros(32)
    expect_error(mf.write_safetensors(tmp_path / "up.safetensors", up), "inconsistent")
    ints = {k: v.to(torch.int8) if k.endswith("proj_in.weight") else v for k, v in sd.items()}
    expect_error(mf.write_safetensors(tmp_path / "int8.safetensors", ints), "int8")


def test_images_and_unknown_extensions_are_refused(tmp_path):
    expect_error(mf.write_png(tmp_path / "motion.safetensors"), "PNG")
    expect_error(mf.write_png(tmp_path / "motion.ckpt"), "PNG")
    expect_error(mf.write_png(tmp_path / "motion.png"), "unsupported extension")
    expect_error(tmp_path / "absent.safetensors", "does not exist")
    sd = mf.random_motion_state_dict(tiny_shapes())
    expect_error(mf.write_safetensors(tmp_path / "renamed.ckpt", sd), "is a safetensors file", "rename")
    expect_error(mf.write_ckpt(tmp_path / "renamed.safetensors", sd), "PyTorch zip archive")


@pytest.mark.parametrize("keep", [0.5, 0.001])
@pytest.mark.parametrize("name", ["cut.safetensors", "cut.ckpt"])
def test_truncated_files_are_refused(tmp_path, name, keep):
    sd = mf.random_motion_state_dict(tiny_shapes())
    expect_error(mf.write_truncated(tmp_path / name, sd, keep), "corrupt")


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused_without_running(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = mf.write_malicious_pickle(tmp_path / "evil.ckpt", marker, legacy=legacy)
    expect_error(path, "not a plain weights pickle", "refused")
    assert not marker.exists()


# ----------------------------------------------------------------------------- motion LoRA

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("diffusers_naming", [False, True])
def test_lora_matches_hand_computation(tmp_path, dtype, diffusers_naming):
    shapes = tiny_shapes()
    sd = mf.random_motion_state_dict(shapes, dtype=dtype)
    raw = mf.motion_lora_state_dict(shapes, rank=4, diffusers_naming=diffusers_naming)
    path = mf.write_ckpt(tmp_path / "v2_lora_PanLeft.ckpt", raw)
    lora = formats.load_motion_lora(path)
    assert len(lora) == 8 * (2 * 1 + 2 * 2 + 1)  # 4 projections x 2 attentions x 7 modules
    out = formats.apply_motion_lora(sd, lora, 0.7, path)
    m = "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1"
    src = f"{m}.processor.to_out_lora" if not diffusers_naming else \
        "unet.down_blocks.1.motion_modules.0.transformer_blocks.0.attn2.processor.to_out_lora"
    down, up = raw[f"{src}.down.weight"], raw[f"{src}.up.weight"]
    key = f"{m}.to_out.0.weight"
    expected = (sd[key].float() + 0.7 * torch.mm(up, down)).to(dtype)
    assert out[key].dtype == dtype and torch.equal(out[key], expected)
    assert not torch.equal(out[key], sd[key])
    bias = f"{m}.to_out.0.bias"
    assert out[bias] is sd[bias]  # untouched weights are shared, the input is not modified
    assert sum(not torch.equal(out[k], sd[k]) for k in sd) == len(lora)


def test_official_lora_rank_and_size():
    lora = mf.motion_lora_state_dict(mf.motion_module_shapes(), dtype=torch.float16)
    assert sum(v.numel() for v in lora.values()) == 19_333_120  # README: 19 M parameters


def test_wrong_architecture_lora_is_refused(tmp_path):
    sd = mf.random_motion_state_dict(tiny_shapes())
    big = mf.write_ckpt(tmp_path / "sdxl_lora.ckpt", mf.motion_lora_state_dict(tiny_shapes(block_channels=(64, 128)), rank=4))
    with pytest.raises(MotionFormatError) as err:
        formats.apply_motion_lora(sd, formats.load_motion_lora(big), 1.0, big)
    assert str(big) in str(err.value) and "[32, 32]" in str(err.value) and "[64, 64]" in str(err.value)
    v3 = {k: v for k, v in sd.items() if not k.startswith("mid_block.")}
    with_mid = mf.write_ckpt(tmp_path / "v2_lora_TiltUp.ckpt", mf.motion_lora_state_dict(tiny_shapes(), rank=4))
    with pytest.raises(MotionFormatError, match="v2_lora_TiltUp.ckpt does not fit.*mid_block"):
        formats.apply_motion_lora(v3, formats.load_motion_lora(with_mid), 1.0, with_mid)


def test_image_lora_and_half_loras_are_refused(tmp_path):
    image = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320)}
    path = mf.write_safetensors(tmp_path / "detail_slider.safetensors", image)
    with pytest.raises(MotionFormatError, match="detail_slider.safetensors is not a motion LoRA"):
        formats.load_motion_lora(path)
    raw = mf.motion_lora_state_dict(tiny_shapes(), rank=4)
    half = {k: v for k, v in raw.items() if not k.endswith("to_q_lora.up.weight")}
    path = mf.write_safetensors(tmp_path / "half.safetensors", half)
    with pytest.raises(MotionFormatError, match="half.safetensors has only the down half"):
        formats.load_motion_lora(path)


# ----------------------------------------------------------------------------- atomic save

def test_save_leaves_no_temp_file(tmp_path):
    sd = mf.random_motion_state_dict(tiny_shapes())
    formats.save_motion_module(tmp_path / "out.safetensors", sd)
    assert os.listdir(tmp_path) == ["out.safetensors"]


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    sd = mf.random_motion_state_dict(tiny_shapes())
    target = tmp_path / "out.safetensors"

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(formats, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        formats.save_motion_module(target, sd)
    assert os.listdir(tmp_path) == []
    # an existing file survives a failed overwrite untouched
    monkeypatch.undo()
    formats.save_motion_module(target, sd)
    before = target.read_bytes()
    monkeypatch.setattr(formats, "save_file", broken)
    with pytest.raises(OSError):
        formats.save_motion_module(target, {k: v * 2 for k, v in sd.items()})
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["out.safetensors"]


def test_save_handles_views_and_shared_tensors(tmp_path):
    sd = mf.random_motion_state_dict(tiny_shapes())
    key = "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"
    sd[key] = sd[key].t().contiguous().t()  # non-contiguous view
    big = torch.randn(2, 32)
    sd["down_blocks.0.motion_modules.0.temporal_transformer.norm.bias"] = big[1]  # view with offset
    formats.save_motion_module(tmp_path / "v.safetensors", sd, layout="diffusers")
    assert_same(formats.load_motion_module(tmp_path / "v.safetensors")[0], sd)
