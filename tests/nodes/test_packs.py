"""IPAdapter_plus and Advanced-ControlNet (the real packs, ../shared/third_party) under our context windows.

Everything runs in a second real server with both packs installed beside this package (`comfy_packs`). Each
test samples one 48-frame video several ways in one prompt and compares the saved latents (fp32, the bound of
the long-video tests):

* a by-hand reference: the video cut into three 16-frame clips, each sampled without context windows and given
  only its own frames' per-frame inputs (IPAdapter embeds, weights and attention masks, ControlNet hints, latent
  keyframes, SparseCtrl's hint images at their index in the clip).
  The `batched` schedule with the `flat` fuse method evaluates exactly those clips as windows, so it must
  equal the three clips put together; a run that gave every window the first window's frames does not.
* stacked windows (several windows per model call) against one window per call, windows 16/4;
* Advanced-ControlNet against the stock ControlNet nodes where both express the same thing, chained both ways.

The initial latent is loaded from a file (LoadLatent, SamplerCustom without added noise), so that the
whole video and each clip start from the same noise. Sizes: 32x32 (4x4 latents), the tiny UNet, 2 steps.
"""

import pytest
import torch
from safetensors.torch import load_file, save_file

import graphs
from fixtures import packs
from fixtures.controlnet import TINY_CONTROLNET, tiny_controlnet  # noqa: F401  (fixture)
from host import saved_files
from lightning_core import context as windows, schedule

MOTION_FILE = "animatediff_lightning_2step_comfyui.safetensors"
IPADAPTER_FILE = "adl_tiny_ip-adapter_sd15.safetensors"
FRAMES, CLIP, LENGTH, OVERLAP, SIZE = 48, 16, 16, 4, 32
CLIPS = [list(range(start, start + CLIP)) for start in range(0, FRAMES, CLIP)]


def assert_same(ours, reference, what):
    """fp32 agreement to 1e-5, relative to the latents' scale."""
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item()
    assert error <= 1e-5 * max(1.0, scale), f"{what}: max abs difference {error:.3g} at latent scale {scale:.3g}"


def assert_differs(ours, reference, what):
    """The comparison above can fail: a real change moves the latents by far more than its bound."""
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item()
    assert error > 1e-3 * max(1.0, scale), f"{what}: only {error:.3g} apart at latent scale {scale:.3g}"


# ----------------------------------------------------------------------------- files

@pytest.fixture(scope="module")
def pack_files(comfy_packs_base, write_motion, tiny_checkpoint, tiny_controlnet):
    """Model files in the shared models folder and per-frame inputs in the packs server's input/."""
    write_motion(MOTION_FILE)
    packs.write_ipadapter(comfy_packs_base / "models" / "ipadapter" / IPADAPTER_FILE, packs.TINY_PATCHED_CHANNELS)
    inputs = comfy_packs_base / "input"
    write_noise_and_sparse_hints(inputs)
    embeds = packs.frame_embeds(FRAMES)
    hints, other_hints = packs.frame_images(FRAMES, SIZE, seed=24), packs.frame_images(FRAMES, SIZE, seed=25)
    masks = packs.frame_masks(FRAMES, SIZE, seed=27)
    for name, frames in [("all", list(range(FRAMES))), *[(f"clip{k}", clip) for k, clip in enumerate(CLIPS)]]:
        packs.write_embeds(inputs / f"adl_embeds_{name}.ipadpt", embeds[frames])
        packs.write_animated_png(inputs / f"adl_hints_{name}.png", hints[frames])
        packs.write_animated_png(inputs / f"adl_other_hints_{name}.png", other_hints[frames])
        packs.write_animated_png(inputs / f"adl_masks_{name}.png", masks[frames])
    packs.write_embeds(inputs / "adl_embeds_zero.ipadpt", torch.zeros(1, packs.CLIP_EMBED_DIM))
    return {"checkpoint": tiny_checkpoint}


def write_noise_and_sparse_hints(inputs):
    """The initial latent of the video and of each clip (LoadLatent files), and SparseCtrl's hint images of the
    video and of each clip (animated PNGs), in the `inputs` folder."""
    sigma = schedule.get_sigmas_trailing(2)[0].item()
    noise = torch.randn(FRAMES, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(31))
    # SamplerCustom scales the loaded latent by the SD1.5 factor; this undoes it so the sampler starts from the
    # noise at the first sigma, as with added noise.
    latent = noise * (1 + sigma ** 2) ** 0.5 / 0.18215
    for name, frames in [("all", list(range(FRAMES))), *[(f"clip{k}", clip) for k, clip in enumerate(CLIPS)]]:
        save_file({"latent_tensor": latent[frames].contiguous(), "latent_format_version_0": torch.zeros(1)},
                  str(inputs / f"adl_noise_{name}.latent"))
    sparse_hints = packs.frame_images(FRAMES, SIZE, seed=26)
    packs.write_animated_png(inputs / "adl_sparse_hints_all.png", sparse_hints[SPARSE_FRAMES])
    for k, clip in enumerate(CLIPS):
        packs.write_animated_png(inputs / f"adl_sparse_hints_clip{k}.png",
                                 sparse_hints[[f for f in SPARSE_FRAMES if f in clip]])


# SparseCtrl's hint images: 3 over the video, on these frames (one in each by-hand clip).
SPARSE_FRAMES = [0, 24, 47]
# Per-frame IPAdapter weights and Advanced-ControlNet latent keyframe strengths: 0 on some frames of every clip.
WEIGHTS = [0.0 if i % 7 == 3 else 0.5 + (i % 5) / 4 for i in range(FRAMES)]
STRENGTHS = [0.0 if i % 6 == 2 else 1.0 for i in range(FRAMES)]


def clip_name(frames):
    return "all" if len(frames) == FRAMES else f"clip{frames[0] // CLIP}"


# ----------------------------------------------------------------------------- graphs

def base_prompt(files):
    """Checkpoint (1), prompt (4), motion module applied (3), our Euler sampler (9)."""
    prompt = graphs.with_motion(graphs.base(files["checkpoint"], frames=FRAMES, size=SIZE), MOTION_FILE)
    del prompt["5"]
    prompt["9"] = {"class_type": "ADL_LightningSampler", "inputs": {}}
    return prompt


def context(prompt, name, model, schedule_name="standard_uniform", fuse="pyramid", windows_per_batch=1):
    prompt[f"{name}_ctx"] = {"class_type": "ADL_ContextOptions", "inputs": {
        "model": model, "context_length": LENGTH, "context_overlap": OVERLAP, "schedule": schedule_name,
        "fuse_method": fuse, "windows_per_batch": windows_per_batch, "freenoise": False, "closed_loop": False}}
    return [f"{name}_ctx", 0]


def sample(prompt, name, model, frames, positive=("4", 0), steps=0):
    """SamplerCustom from the saved noise of `frames` (no added noise), saved as tests/packs_{name}; `steps` 0 is the
    file's 2."""
    prompt[f"{name}_noise"] = {"class_type": "LoadLatent",
                               "inputs": {"latent": f"adl_noise_{clip_name(frames)}.latent"}}
    prompt[f"{name}_sigmas"] = {"class_type": "ADL_LightningScheduler",
                                "inputs": {"model": model, "steps": steps, "denoise": 1.0}}
    prompt[f"{name}_sample"] = {"class_type": "SamplerCustom", "inputs": {
        "model": model, "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": list(positive),
        "negative": list(positive), "sampler": ["9", 0], "sigmas": [f"{name}_sigmas", 0],
        "latent_image": [f"{name}_noise", 0]}}
    prompt[f"{name}_save"] = {"class_type": "SaveLatent",
                              "inputs": {"samples": [f"{name}_sample", 0], "filename_prefix": f"tests/packs_{name}"}}


def run(comfy, base_dir, prompt, names):
    comfy.run(prompt, timeout=900).raise_for_error()
    return {name: load_file(str(saved_files(base_dir, f"packs_{name}_[0-9]*.latent")[-1]))["latent_tensor"]
            for name in names}


def recorded(prompt, name, model, base_dir):
    """The test-only recorder node (tests/fixtures/pack_probe) on `model`; returns its MODEL and the log path."""
    path = base_dir / "output" / f"probe_{name}.jsonl"
    path.unlink(missing_ok=True)
    prompt[f"{name}_probe"] = {"class_type": "ADLTest_RecordIPAdapterFrames",
                               "inputs": {"model": model, "path": str(path)}}
    return [f"{name}_probe", 0], path


def read_records(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def ipadapter(prompt, name, frames, embeds_frames=None, mask_frames=None):
    """IPAdapterEmbedsBatch (one embedding, weight and attention mask per frame) on the motion model; its MODEL.
    The embeds and weights are those of `embeds_frames`, the masks those of `mask_frames` (both `frames` if None)."""
    embeds_frames = frames if embeds_frames is None else embeds_frames
    ipadapter_loaders(prompt)
    mask = attention_masks(prompt, name, frames if mask_frames is None else mask_frames)
    prompt[f"{name}_embeds"] = {"class_type": "IPAdapterLoadEmbeds",
                                "inputs": {"embeds": f"adl_embeds_{clip_name(embeds_frames)}.ipadpt"}}
    prompt[f"{name}_weights"] = {"class_type": "IPAdapterWeights", "inputs": {
        "weights": ", ".join(str(WEIGHTS[i]) for i in embeds_frames), "timing": "custom", "frames": 0,
        "start_frame": 0, "end_frame": 9999, "add_starting_frames": 0, "add_ending_frames": 0,
        "method": "full batch"}}
    prompt[f"{name}_ipa"] = {"class_type": "IPAdapterEmbedsBatch", "inputs": {
        "model": ["3", 0], "ipadapter": ["ipa", 0], "pos_embed": [f"{name}_embeds", 0],
        "weight": [f"{name}_weights", 0], "weight_type": "linear", "start_at": 0.0, "end_at": 1.0,
        "embeds_scaling": "V only", "neg_embed": ["ipa_zero", 0], "attn_mask": mask}}
    return [f"{name}_ipa", 0]


def ipadapter_loaders(prompt):
    """The IPAdapter model ("ipa") and the zero embedding, IPAdapter's negative ("ipa_zero"), once per prompt."""
    prompt.setdefault("ipa", {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": IPADAPTER_FILE}})
    prompt.setdefault("ipa_zero", {"class_type": "IPAdapterLoadEmbeds", "inputs": {"embeds": "adl_embeds_zero.ipadpt"}})


def attention_masks(prompt, name, frames):
    """The attention masks of `frames`: a MASK batch, read from an image per frame."""
    prompt[f"{name}_mask_image"] = {"class_type": "LoadImage",
                                    "inputs": {"image": f"adl_masks_{clip_name(frames)}.png"}}
    prompt[f"{name}_mask"] = {"class_type": "ImageToMask",
                              "inputs": {"image": [f"{name}_mask_image", 0], "channel": "red"}}
    return [f"{name}_mask", 0]


def stock_controlnet(prompt, name, positive, frames, hints="hints"):
    prompt.setdefault("cn", {"class_type": "ControlNetLoader", "inputs": {"control_net_name": TINY_CONTROLNET}})
    prompt[f"{name}_image"] = {"class_type": "LoadImage", "inputs": {"image": f"adl_{hints}_{clip_name(frames)}.png"}}
    prompt[f"{name}_apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": list(positive), "negative": list(positive), "control_net": ["cn", 0],
        "image": [f"{name}_image", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    return [f"{name}_apply", 0]


def acn_controlnet(prompt, name, positive, frames, hints="hints", keyframes=False):
    prompt.setdefault("acn", {"class_type": "ACN_ControlNetLoaderAdvanced", "inputs": {"cnet": TINY_CONTROLNET}})
    prompt[f"{name}_image"] = {"class_type": "LoadImage", "inputs": {"image": f"adl_{hints}_{clip_name(frames)}.png"}}
    inputs = {"positive": list(positive), "negative": list(positive), "control_net": ["acn", 0],
              "image": [f"{name}_image", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}
    if keyframes:  # strengths of this clip's frames, counted from its first frame as a clip of its own
        prompt[f"{name}_kf"] = {"class_type": "LatentKeyframeGroup", "inputs": {
            "index_strengths": ", ".join(f"{i}={STRENGTHS[frame]}" for i, frame in enumerate(frames))}}
        inputs["latent_kf_override"] = [f"{name}_kf", 0]
    prompt[f"{name}_apply"] = {"class_type": "ACN_AdvancedControlNetApply_v2", "inputs": inputs}
    return [f"{name}_apply", 0]


def sparse_ctrl(prompt, name, positive, frames, base_dir, shift=0):
    """Advanced-ControlNet's RGB SparseCtrl (the probe's, without the motion layers that need AnimateDiff-Evolved)
    with the hint images of the SPARSE_FRAMES in `frames`, placed by its index method at their index counted from
    frames[0] (plus `shift`); returns the positive conditioning and the probe's log path."""
    path = base_dir / "output" / f"probe_{name}.jsonl"
    path.unlink(missing_ok=True)
    indexes = [frames.index(frame) + shift for frame in SPARSE_FRAMES if frame in frames]
    prompt[f"{name}_method"] = {"class_type": "ACN_SparseCtrlIndexMethodNode",
                                "inputs": {"indexes": ", ".join(map(str, indexes))}}
    prompt[f"{name}_sparse"] = {"class_type": "ADLTest_SparseCtrlRGBWithoutMotion", "inputs": {
        "control_net_name": TINY_CONTROLNET, "sparse_method": [f"{name}_method", 0], "path": str(path),
        "hint_seed": 0}}
    prompt[f"{name}_image"] = {"class_type": "LoadImage",
                               "inputs": {"image": f"adl_sparse_hints_{clip_name(frames)}.png"}}
    prompt[f"{name}_rgb"] = {"class_type": "ACN_SparseCtrlRGBPreprocessor", "inputs": {
        "image": [f"{name}_image", 0], "vae": ["1", 2], "latent_size": [f"{name}_noise", 0]}}
    prompt[f"{name}_apply"] = {"class_type": "ACN_AdvancedControlNetApply_v2", "inputs": {
        "positive": list(positive), "negative": list(positive), "control_net": [f"{name}_sparse", 0],
        "image": [f"{name}_rgb", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    return [f"{name}_apply", 0], path


def by_hand(results, name):
    return torch.cat([results[f"{name}{k}"] for k in range(len(CLIPS))])


# ----------------------------------------------------------------------------- tests

def test_ipadapter_gives_each_window_its_own_frames(comfy_packs, comfy_packs_base, pack_files):
    prompt = base_prompt(pack_files)
    every = list(range(FRAMES))
    model = ipadapter(prompt, "all", every)
    sample(prompt, "batched3", context(prompt, "batched3", model, "batched", "flat", 3), every)
    logs, per_call = {}, {"uniform1": 1, "uniform3": 3}
    for name in per_call:
        watched, logs[name] = recorded(prompt, name, model, comfy_packs_base)
        sample(prompt, name, context(prompt, name, watched, windows_per_batch=per_call[name]), every)
    for k, clip in enumerate(CLIPS):
        watched, logs[f"hand{k}"] = recorded(prompt, f"hand{k}", ipadapter(prompt, f"hand{k}", clip), comfy_packs_base)
        sample(prompt, f"hand{k}", watched, clip)
        if k:  # what a sampler that publishes no ad_params gives: every window the first window's frames
            sample(prompt, f"first{k}", ipadapter(prompt, f"first{k}", clip, CLIPS[0], CLIPS[0]), clip)
            sample(prompt, f"first_mask{k}", ipadapter(prompt, f"first_mask{k}", clip, mask_frames=CLIPS[0]), clip)
    names = ["batched3", "uniform1", "uniform3", "hand0", "hand1", "hand2", "first1", "first2", "first_mask1",
             "first_mask2"]
    results = run(comfy_packs, comfy_packs_base, prompt, names)

    # What the attention patch saw: in every call under windows, the image tokens of exactly the call's frames,
    # in batch order (so three stacked windows get their three frame lists); without windows, no ad_params.
    for name in ("uniform1", "uniform3"):
        records = read_records(logs[name])
        assert records and all(r["full_length"] == FRAMES and r["rows"] == r["sub_idxs"] for r in records), name
        expected = {tuple(i for window in group for i in window) for step in range(2)
                    for group in windows.stack_windows(windows.context_windows("standard_uniform", FRAMES, LENGTH,
                                                                               OVERLAP, step), per_call[name])}
        assert {tuple(r["sub_idxs"]) for r in records} == expected, name
    for k, clip in enumerate(CLIPS):
        records = read_records(logs[f"hand{k}"])
        assert records and all(r["sub_idxs"] is None and r["rows"] == list(range(CLIP)) for r in records)

    reference = by_hand(results, "hand")
    assert_same(results["batched3"], reference, "three windows per call vs the clips by hand")
    assert_same(results["uniform3"], results["uniform1"], "windows 16/4: three windows per call vs one")
    first_frames = torch.cat([results["hand0"], results["first1"], results["first2"]])
    assert_differs(first_frames, reference, "every clip given the first clip's embeds, weights and masks")
    first_masks = torch.cat([results["hand0"], results["first_mask1"], results["first_mask2"]])
    assert_differs(first_masks, reference, "every clip given the first clip's attention masks")


def test_advanced_controlnet_hints_and_keyframes_per_window(comfy_packs, comfy_packs_base, pack_files):
    prompt = base_prompt(pack_files)
    every = list(range(FRAMES))
    positive = ("4", 0)
    one_step = {"steps": 1}  # the first step's windows show the slicing; a second step would double the cost
    stacked = context(prompt, "stacked", ["3", 0], windows_per_batch=3)
    # Hints: Advanced-ControlNet (which slices by ad_params) chained with a stock ControlNet (which our handler
    # slices), in both orders, equals two stock ControlNets; windows 16/4, three per call.
    sample(prompt, "stock", stacked, every, stock_controlnet(prompt, "stock", positive, every), **one_step)
    both_stock = stock_controlnet(prompt, "s2", stock_controlnet(prompt, "s1", positive, every, "other_hints"), every)
    sample(prompt, "stock_stock", stacked, every, both_stock, **one_step)
    acn_last = acn_controlnet(prompt, "a2", stock_controlnet(prompt, "a1", positive, every, "other_hints"), every)
    sample(prompt, "stock_acn", stacked, every, acn_last, **one_step)
    stock_last = stock_controlnet(prompt, "b2", acn_controlnet(prompt, "b1", positive, every), every, "other_hints")
    sample(prompt, "acn_stock", stacked, every, stock_last, **one_step)
    # Latent keyframes (strength 0 on some frames), three windows per call asked for: the clips by hand.
    batched = context(prompt, "batched", ["3", 0], "batched", "flat", 3)
    keyed = acn_controlnet(prompt, "kf", positive, every, keyframes=True)
    sample(prompt, "kf_batched", batched, every, keyed, **one_step)
    for k, clip in enumerate(CLIPS):
        keyed = acn_controlnet(prompt, f"kfh{k}", positive, clip, keyframes=True)
        sample(prompt, f"kf_hand{k}", ["3", 0], clip, keyed, **one_step)
    names = ["stock", "stock_stock", "stock_acn", "acn_stock", "kf_batched",
             *[f"kf_hand{k}" for k in range(len(CLIPS))]]
    results = run(comfy_packs, comfy_packs_base, prompt, names)

    assert_same(results["stock_acn"], results["stock_stock"], "stock then Advanced-ControlNet vs two stock")
    assert_same(results["acn_stock"], results["stock_stock"], "Advanced-ControlNet then stock vs two stock")
    assert_differs(results["stock_stock"], results["stock"], "a second ControlNet")
    assert_same(results["kf_batched"], by_hand(results, "kf_hand"), "latent keyframes vs the clips by hand")


def one_embedding_with_masks(prompt, name, frames):
    """IPAdapter Embeds (one embedding for the whole video) with the attention masks of `frames`; its MODEL."""
    ipadapter_loaders(prompt)
    mask = attention_masks(prompt, name, frames)
    prompt[f"{name}_ipa"] = {"class_type": "IPAdapterEmbeds", "inputs": {
        "model": ["3", 0], "ipadapter": ["ipa", 0], "pos_embed": ["ipa_zero", 0], "weight": 1.0,
        "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only",
        "neg_embed": ["ipa_zero", 0], "attn_mask": mask}}
    return [f"{name}_ipa", 0]


@pytest.mark.parametrize("what, sampler", [("embeds", "ours"), ("attn_mask", "ours"), ("embeds", "stock KSampler")])
def test_per_frame_inputs_for_another_frame_count_are_refused(comfy_packs, comfy_packs_base, pack_files, what,
                                                              sampler):
    """48 per-frame embeds (or only 48 attention masks, with one embedding) for a 40-frame video in our context
    windows: refused by our sampler node, and by our context handler before any model loads in the stock one."""
    prompt = base_prompt(pack_files)
    prompt["5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 40}}
    every = list(range(FRAMES))
    model = ipadapter(prompt, "all", every) if what == "embeds" else one_embedding_with_masks(prompt, "all", every)
    model = context(prompt, "w", model)
    if sampler == "ours":
        graphs.lightning_sample(prompt, model=model)
    else:
        graphs.ksample(prompt, model=model, steps=2)
    graphs.save_latent(prompt, "tests/packs_never_written")
    result = comfy_packs.run(prompt, timeout=600)
    assert not result.ok
    message = result.execution_error["exception_message"]
    named = {"embeds": "IPAdapter's per-frame image embeds", "attn_mask": "IPAdapter's attn_mask"}[what]
    assert message.startswith(named) and "48 frames" in message and "has 40" in message, message
    assert comfy_packs.system_stats()  # still serving


SPARSE_WINDOW_RUNS = [("sc_batched", "batched"), ("sc_uniform1", "standard_uniform"),
                      ("sc_uniform3", "standard_uniform")]


def assert_sparse_hints_placed(records, name, schedule_name):
    """The SparseCtrl's calls of the sampling `name` are the schedule's windows of 16/4, one per call (SparseCtrl
    reads sub_idxs as one window), each knowing the video's length and holding the hint image of each hinted frame
    of its window at that frame's place in it."""
    expected = windows.context_windows(schedule_name, FRAMES, LENGTH, OVERLAP, 0)
    assert sorted(r["sub_idxs"] for r in records) == sorted(expected), name
    for r in records:
        places = [p for p, frame in enumerate(r["sub_idxs"]) if frame in SPARSE_FRAMES]
        assert places, f"{name}: window {r['sub_idxs']} holds no hint frame; the expectation below needs one"
        assert r["full_length"] == FRAMES and r["hinted"] == places, (name, r)
        assert r["images"] == [[SPARSE_FRAMES.index(r["sub_idxs"][p])] for p in places], (name, r)


def test_sparsectrl_rgb_hints_land_on_their_frames(comfy_packs, comfy_packs_base, pack_files):
    """SparseCtrl RGB, 3 hint images on frames 0, 24, 47 of 48, windows 16/4: every model call gets the hints of
    the frames it holds, at their place in the window, and the video equals the clips sampled by hand."""
    prompt = base_prompt(pack_files)
    every = list(range(FRAMES))
    one_step = {"steps": 1}  # the first step's windows show the placement; a second would double the cost
    logs = {}
    for name, schedule_name, fuse, per_call in [("sc_batched", "batched", "flat", 3),
                                                ("sc_uniform1", "standard_uniform", "pyramid", 1),
                                                ("sc_uniform3", "standard_uniform", "pyramid", 3)]:
        positive, logs[name] = sparse_ctrl(prompt, name, ("4", 0), every, comfy_packs_base)
        sample(prompt, name, context(prompt, name, ["3", 0], schedule_name, fuse, per_call), every, positive,
               **one_step)
    for k, clip in enumerate(CLIPS):
        positive, logs[f"sc_hand{k}"] = sparse_ctrl(prompt, f"sc_hand{k}", ("4", 0), clip, comfy_packs_base)
        sample(prompt, f"sc_hand{k}", ["3", 0], clip, positive, **one_step)
    positive, _ = sparse_ctrl(prompt, "sc_moved1", ("4", 0), CLIPS[1], comfy_packs_base, shift=1)
    sample(prompt, "sc_moved1", ["3", 0], CLIPS[1], positive, **one_step)
    names = ["sc_batched", "sc_uniform1", "sc_uniform3", "sc_hand0", "sc_hand1", "sc_hand2", "sc_moved1"]
    results = run(comfy_packs, comfy_packs_base, prompt, names)

    # What reached the control in each call: one window (three per call asked for or not), the whole video's
    # length, and the hint image of each hinted frame of the window at that frame's place in it.
    for name, schedule_name in SPARSE_WINDOW_RUNS:
        assert_sparse_hints_placed(read_records(logs[name]), name, schedule_name)
    for k in range(len(CLIPS)):
        assert [r["sub_idxs"] for r in read_records(logs[f"sc_hand{k}"])] == [None]

    reference = by_hand(results, "sc_hand")
    assert_same(results["sc_batched"], reference, "SparseCtrl in windows vs the clips by hand")
    assert_same(results["sc_uniform3"], results["sc_uniform1"], "SparseCtrl, windows 16/4: three per call vs one")
    assert_differs(results["sc_moved1"], results["sc_hand1"], "a hint one frame later")
