"""Stage exports: the official file names and key sets, the step count in the metadata, and loading through
lightning_core.formats, diffusers' MotionAdapter (test-only oracle) and our loader node in the real server."""
import torch
from safetensors.torch import load_file

from host import saved_files
from lightning_core import formats
from lightning_core.motion_module import MotionModuleConfig, MotionModuleSet
from trainer.export import export_student
from trainer.sd15 import TINY_UNET, tiny_motion_config

OFFICIAL_V2 = formats.MotionModuleInfo(layout="original", family="lightning", has_mid_block=True,
                                       position_encoding_length=32, block_channels=(320, 640, 1280, 1280),
                                       down_layers=2, up_layers=3, lightning_steps=4, dtype=torch.float16)


def _student(config, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MotionModuleSet(config)


def test_full_size_student_has_the_official_key_set():
    """What export_student writes is student.state_dict(): for SD1.5 that is ByteDance's _comfyui key set."""
    with torch.device("meta"):
        sd = MotionModuleSet(MotionModuleConfig()).state_dict()
    expected = formats.expected_shapes(OFFICIAL_V2)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert set(formats.original_to_diffusers({k: torch.zeros(1) for k in expected})) == set(
        formats.original_to_diffusers({k: torch.zeros(1) for k in sd}))


def test_export_loads_through_formats_and_motion_adapter(tmp_path):
    from diffusers import MotionAdapter

    student = _student(tiny_motion_config(TINY_UNET))
    paths = export_student(student, tmp_path, steps=2, dtype="float32")
    assert {p.name for p in paths.values()} == {"animatediff_lightning_2step_comfyui.safetensors",
                                               "animatediff_lightning_2step_diffusers.safetensors"}
    reference = student.state_dict()
    for layout, path in paths.items():
        assert formats.read_metadata(path)[formats.STEPS_METADATA_KEY] == "2"
        sd, info = formats.load_motion_module(path)
        assert info.layout == layout and info.family == "lightning" and info.lightning_steps == 2
        assert sd.keys() == reference.keys() and all(torch.equal(sd[k], reference[k]) for k in sd)
    on_disk = load_file(str(paths["original"]))
    assert on_disk.keys() == formats.expected_shapes(formats.detect(on_disk, paths["original"])).keys()

    cfg = student.config
    adapter = MotionAdapter(block_out_channels=cfg.block_channels, motion_layers_per_block=cfg.down_layers,
                            motion_mid_block_layers_per_block=1, motion_num_attention_heads=8,
                            motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True)
    diffusers_sd = load_file(str(paths["diffusers"]))
    adapter.load_state_dict(diffusers_sd, strict=True)
    assert adapter.state_dict().keys() == diffusers_sd.keys()


def _graph(checkpoint, motion_file, prefix):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "ADL_LoadMotionModule", "inputs": {"model_name": motion_file}},
        "3": {"class_type": "ADL_ApplyMotionModule", "inputs": {"model": ["1", 0], "motion_module": ["2", 0],
                                                               "effect": 1.0, "motion_scale": 1.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in snow", "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "6": {"class_type": "ADL_LightningKSampler", "inputs": {"model": ["3", 0], "seed": 7, "steps": 0, "cfg": 1.0,
                                                               "positive": ["4", 0], "latent_image": ["5", 0],
                                                               "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"tests/{prefix}"}},
    }


def test_exports_run_in_the_real_comfyui_server(comfy, comfy_base, tiny_checkpoint, tiny_motion_state_dict):
    """A student shaped like the server's tiny UNet, exported by the trainer, samples through our nodes;
    both layouts give the same video (steps 0: the sampler takes the count from the file)."""
    student = MotionModuleSet.from_state_dict(tiny_motion_state_dict)
    folder = comfy_base / "models" / "animatediff_models" / "trainer_export"
    export_student(student, folder, steps=2, dtype="float16")
    latents = []
    for suffix in ("comfyui", "diffusers"):
        prefix = f"trainer_export_{suffix}"
        comfy.run(_graph(tiny_checkpoint, f"trainer_export/animatediff_lightning_2step_{suffix}.safetensors", prefix),
                  timeout=600).raise_for_error()
        [path] = saved_files(comfy_base, f"{prefix}_*.latent")
        latents.append(load_file(str(path))["latent_tensor"])
    assert latents[0].shape == (4, 4, 8, 8) and torch.isfinite(latents[0]).all()
    assert torch.equal(latents[0], latents[1])
