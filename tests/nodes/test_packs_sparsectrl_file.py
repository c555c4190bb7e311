"""Opt-in: a SparseCtrl RGB *file* loaded by Advanced-ControlNet's `Load SparseCtrl Model`, with
AnimateDiff-Evolved's motion layers (use_motion on), under our context windows.

Advanced-ControlNet builds a SparseCtrl file's motion layers with AnimateDiff-Evolved's code, which
../shared/third_party does not hold, so this test runs only when $ADL_ANIMATEDIFF_EVOLVED names an
AnimateDiff-Evolved checkout (tested with commit 90fb133); it gets a third server (`comfy_ade`, tests/conftest.py)
so the other servers never load AnimateDiff-Evolved.

    ADL_ANIMATEDIFF_EVOLVED=/path/to/AnimateDiff-Evolved python -m pytest tests/nodes/test_packs_sparsectrl_file.py

The file is random, in the official `v3_sd15_sparsectrl_rgb.ckpt` layout (tests/fixtures/sparsectrl.py); the
loader only accepts it at SD1.5 size, so this test uses the full-size SD1.5 UNet and motion module (4 to 9
minutes on one CPU core, 9 GB of memory in the server, 5 GB of model files in the test's temp dir). Otherwise it
repeats test_packs.test_sparsectrl_rgb_hints_land_on_their_frames: 48 frames, hints on frames 0, 24, 47, windows
16/4, the video against the three 16-frame clips sampled by hand, one step.
"""

import gc

import pytest

import graphs
from fixtures import sd15, sparsectrl
from lightning_core import formats
from test_packs import (CLIP, CLIPS, FRAMES, LENGTH, SIZE, SPARSE_FRAMES, SPARSE_WINDOW_RUNS, assert_differs,
                        assert_same, assert_sparse_hints_placed, by_hand, clip_name, context, read_records, run,
                        sample, write_noise_and_sparse_hints)

CHECKPOINT = "adl_full_sd15.safetensors"
MOTION_FILE = "adl_full_motion.safetensors"
SD15_MOTION_LAYERS = 8  # the SparseCtrl file's motion modules: 4 down blocks x 2, all injected into its ControlNet


@pytest.fixture(scope="module")
def ade_files(comfy_ade_base):
    """Full-size random SD1.5 checkpoint, motion module and RGB SparseCtrl in the ADE server's models folder;
    the noise and hint inputs of test_packs in its input folder."""
    models = comfy_ade_base / "models"
    unet, vae, text_encoder, _ = sd15.build_models("full")
    sd15.write_checkpoint(models / "checkpoints" / CHECKPOINT, unet, vae, text_encoder)
    del vae, text_encoder
    sparsectrl.write_sparsectrl_rgb(models / "controlnet" / sparsectrl.SPARSECTRL_RGB_FILE, unet)
    del unet
    gc.collect()
    formats.save_motion_module(models / "animatediff_models" / MOTION_FILE, sd15.random_motion_state_dict("full"))
    write_noise_and_sparse_hints(comfy_ade_base / "input")


def base_prompt():
    """Checkpoint (1), prompt (4), motion module applied (3), our Euler sampler (9)."""
    prompt = graphs.with_motion(graphs.base(CHECKPOINT, frames=FRAMES, size=SIZE), MOTION_FILE)
    del prompt["5"]
    prompt["9"] = {"class_type": "ADL_LightningSampler", "inputs": {}}
    return prompt


def load_sparse_ctrl(prompt, name, frames, shift=0, use_motion=True):
    """Advanced-ControlNet's `Load SparseCtrl Model` on the random RGB file, with its `SparseCtrl Index Method`
    putting the hint images of the SPARSE_FRAMES in `frames` at their index counted from frames[0] (plus
    `shift`); returns the loader's output."""
    indexes = [frames.index(frame) + shift for frame in SPARSE_FRAMES if frame in frames]
    prompt[f"{name}_method"] = {"class_type": "ACN_SparseCtrlIndexMethodNode",
                                "inputs": {"indexes": ", ".join(map(str, indexes))}}
    prompt[f"{name}_load"] = {"class_type": "ACN_SparseCtrlLoaderAdvanced", "inputs": {
        "sparsectrl_name": sparsectrl.SPARSECTRL_RGB_FILE, "use_motion": use_motion, "motion_strength": 1.0,
        "motion_scale": 1.0, "sparse_method": [f"{name}_method", 0]}}
    return [f"{name}_load", 0]


def apply_sparse_ctrl(prompt, name, control, frames, base_dir):
    """The loaded SparseCtrl made to record its calls (the probe's copy, tests/fixtures/pack_probe), applied with
    `Apply Advanced ControlNet` to the hint images of `frames` through the RGB preprocessor, for the sampling
    `name`; returns the positive conditioning and the record's path."""
    path = base_dir / "output" / f"probe_{name}.jsonl"
    path.unlink(missing_ok=True)
    prompt[f"{name}_sparse"] = {"class_type": "ADLTest_RecordSparseCtrl",
                                "inputs": {"control_net": list(control), "path": str(path)}}
    prompt[f"{name}_image"] = {"class_type": "LoadImage",
                               "inputs": {"image": f"adl_sparse_hints_{clip_name(frames)}.png"}}
    prompt[f"{name}_rgb"] = {"class_type": "ACN_SparseCtrlRGBPreprocessor", "inputs": {
        "image": [f"{name}_image", 0], "vae": ["1", 2], "latent_size": [f"{name}_noise", 0]}}
    prompt[f"{name}_apply"] = {"class_type": "ACN_AdvancedControlNetApply_v2", "inputs": {
        "positive": ["4", 0], "negative": ["4", 0], "control_net": [f"{name}_sparse", 0],
        "image": [f"{name}_rgb", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    return [f"{name}_apply", 0], path


def test_sparsectrl_file_with_motion_layers_in_windows(comfy_ade, comfy_ade_base, ade_files):
    """SparseCtrl RGB from a file, with AnimateDiff-Evolved's motion layers, 3 hint images on frames 0, 24, 47 of
    48, windows 16/4: every model call gets the hints of the frames it holds at their place in the window and runs
    the motion layers on that window; three windows per call asked for equals one; the batched windows equal the
    clips sampled by hand; moving a hint, or switching the motion layers off, changes the result."""
    every = list(range(FRAMES))
    one_step = {"steps": 1}  # the first step's windows show the placement; a second would double the cost
    logs, results = {}, {}

    # One prompt per loaded SparseCtrl: each is 2 GB in fp32 (ControlNet and motion layers), and ComfyUI keeps
    # a prompt's node outputs until the next prompt replaces them.
    def one_load(load_name, frames, runs, **options):
        prompt = base_prompt()
        control = load_sparse_ctrl(prompt, load_name, frames, **options)
        for name, schedule_name, fuse, per_call in runs:
            positive, logs[name] = apply_sparse_ctrl(prompt, name, control, frames, comfy_ade_base)
            model = ["3", 0] if schedule_name is None else context(prompt, name, ["3", 0], schedule_name, fuse,
                                                                    per_call)
            sample(prompt, name, model, frames, positive, **one_step)
        results.update(run(comfy_ade, comfy_ade_base, prompt, [r[0] for r in runs]))

    one_load("sc", every, [("sc_batched", "batched", "flat", 3), ("sc_uniform1", "standard_uniform", "pyramid", 1),
                           ("sc_uniform3", "standard_uniform", "pyramid", 3)])
    for k, clip in enumerate(CLIPS):
        one_load(f"sc_hand{k}", clip, [(f"sc_hand{k}", None, None, None)])
    one_load("sc_moved1", CLIPS[1], [("sc_moved1", None, None, None)], shift=1)
    one_load("sc_still1", CLIPS[1], [("sc_still1", None, None, None)], use_motion=False)

    # The file loaded whole: Advanced-ControlNet logs the keys its ControlNet or motion model missed or left over,
    # and ComfyUI the control residuals that did not fit the UNet.
    log = comfy_ade.log()
    assert not [line for line in log.splitlines() if line.startswith(("SparseCtrl ControlNet:",
                                                                       "SparseCtrl MotionModel:"))], log[-4000:]
    assert "leftover keys" not in log and "control could not be applied" not in log, log[-4000:]

    # What reached the control in each call: one window (three per call asked for or not: SparseCtrl reads
    # sub_idxs as one window), the video's length, the hint image of each hinted frame of the window at that
    # frame's place in it, and the motion layers injected into its ControlNet and set to the window's frames.
    for name, schedule_name in SPARSE_WINDOW_RUNS:
        records = read_records(logs[name])
        assert_sparse_hints_placed(records, name, schedule_name)
        for r in records:
            assert r["temporal_modules"] == SD15_MOTION_LAYERS and r["motion_length"] == LENGTH, (name, r)
    for k in range(len(CLIPS)):
        [r] = read_records(logs[f"sc_hand{k}"])
        assert r["sub_idxs"] is None and r["hinted"] == [SPARSE_FRAMES[k] - CLIPS[k][0]], r
        assert r["temporal_modules"] == SD15_MOTION_LAYERS and r["motion_length"] == CLIP, r
    [r] = read_records(logs["sc_still1"])
    assert r["temporal_modules"] == 0 and r["motion_length"] is None, r

    reference = by_hand(results, "sc_hand")
    assert_same(results["sc_batched"], reference, "SparseCtrl file with motion layers in windows vs the clips by hand")
    assert_same(results["sc_uniform3"], results["sc_uniform1"], "SparseCtrl file, windows 16/4: three per call vs one")
    assert_differs(results["sc_moved1"], results["sc_hand1"], "a hint one frame later")
    assert_differs(results["sc_still1"], results["sc_hand1"], "the SparseCtrl motion layers off (use_motion)")
