"""Context windows: our handler in the real server against a plain-PyTorch loop over the same windows.

The reference runs in this process on the server's own checkpoint and motion file: ComfyUI's UNet with our
motion module called on one window's frames at a time (the landed 16-frame path), the windows and weights
from lightning_core.context, fused by hand in `context.denoise_windowed`, Euler steps written out. The
handler's side runs in the server (every schedule and fuse method) or, where a test needs to look inside
a model call (motion-module frame counts, ControlNet hints, per-frame conds), in this process through
comfy.sample.sample_custom, the function our sampler node calls.
Sizes are tiny: 32x32 images (4x4 latents), windows of 4 frames, the 2-step file.
"""

import importlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import graphs
from fixtures import sd15
from host import saved_files
from lightning_core import context, formats, schedule

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "adl_in_process"
MOTION_FILE = "animatediff_lightning_2step_comfyui.safetensors"
SIZE, FRAMES, LENGTH, OVERLAP, SEED = 32, 10, 4, 1, 11


# ----------------------------------------------------------------------------- in-process reference

def import_package():
    """Our node modules in this process, under a package name so relative imports work, without ComfyUI's entry
    points (the repo's __init__ would register model folders in the shared host tree)."""
    sd15.import_comfy()
    for name, path in ((PACKAGE, REPO_ROOT), (f"{PACKAGE}.nodes", REPO_ROOT / "nodes")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(path)]
            sys.modules[name] = module
    return importlib.import_module(f"{PACKAGE}.nodes.host")


@dataclass
class Local:
    host: types.ModuleType
    model: object  # ModelPatcher with our motion module, as the apply node returns it
    motion_set: torch.nn.Module
    positive: list  # CONDITIONING of graphs.PROMPT_TEXT

    def handler(self, schedule_name="standard_uniform", fuse="pyramid", windows_per_batch=1, freenoise=False,
                length=LENGTH, overlap=OVERLAP):
        return self.host.LightningContextHandler(schedule_name, fuse, length, overlap,
                                                 windows_per_batch=windows_per_batch, freenoise=freenoise)

    def sample(self, handler, noise, positive=None, negative=None, cfg=1.0, steps=2):
        """What ADL_LightningKSampler runs, in this process."""
        import comfy.sample
        import comfy.samplers

        from lightning_core import sampling
        positive = positive or self.positive
        with torch.inference_mode():
            return comfy.sample.sample_custom(
                self.host.with_context_windows(self.model, handler), noise, cfg,
                comfy.samplers.KSAMPLER(sampling.sample_euler), schedule.get_sigmas_trailing(steps), positive,
                negative or positive, torch.zeros_like(noise), disable_pbar=True, seed=SEED)

    def reference(self, noise, schedule_name, fuse, cond=None, uncond=None, cfg=1.0, steps=2, length=LENGTH,
                  overlap=OVERLAP, closed_loop=False):
        """Euler over `denoise_windowed`: each window's frames through the UNet alone, fused by hand."""
        import comfy.model_management
        import comfy.patcher_extension

        comfy.model_management.load_models_gpu([self.model])
        unet = self.model.model
        options = comfy.patcher_extension.copy_nested_dicts(self.model.model_options["transformer_options"])
        cond = self.positive[0][0] if cond is None else cond
        frames = noise.shape[0]

        def prediction(x, sigma, window, embedding):
            embedding = embedding[window] if embedding.shape[0] == frames else embedding.expand(len(window), -1, -1)
            return unet.apply_model(x, sigma.expand(x.shape[0]), c_crossattn=embedding,
                                    transformer_options=dict(options, cond_or_uncond=[0]))

        sigmas = schedule.get_sigmas_trailing(steps)
        x = noise * (1 + sigmas[0] ** 2) ** 0.5  # ComfyUI's noise scaling at the maximum sigma
        with torch.inference_mode():
            for i in range(steps):
                windows = context.context_windows(schedule_name, frames, length, overlap, i, closed_loop=closed_loop)
                weights = [context.fuse_weights(fuse, w, frames, overlap) for w in windows]
                positions = iter(windows)  # denoise_windowed calls the denoiser once per window, in order

                def denoiser(window_x, sigma):
                    window = next(positions)
                    out = prediction(window_x, sigma, window, cond)
                    if cfg != 1.0:
                        out = prediction(window_x, sigma, window, uncond) * (1 - cfg) + out * cfg
                    return out

                denoised = context.denoise_windowed(denoiser, x, sigmas[i], windows, weights)
                x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return unet.process_latent_out(x)


@pytest.fixture(scope="module")
def motion_file(write_motion):
    return write_motion(MOTION_FILE)


@pytest.fixture(scope="module")
def local(comfy_base, tiny_checkpoint, motion_file):
    """The server's checkpoint and motion file, loaded in this process as the apply node loads them."""
    host = import_package()
    import comfy.model_management
    import comfy.sd

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
        str(comfy_base / "models" / "checkpoints" / tiny_checkpoint), output_vae=False, output_clip=True)
    state_dict, info = formats.load_motion_module(comfy_base / "models" / "animatediff_models" / motion_file)
    motion_set = host.build_motion_set(model, state_dict)
    settings = {"name": motion_file, "lightning_steps": info.lightning_steps,
                "position_encoding_length": info.position_encoding_length, "effect": 1.0, "motion_scale": 1.0}
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(graphs.PROMPT_TEXT))
    yield Local(host, host.inject_motion_module(model, motion_set, settings), motion_set, positive)
    comfy.model_management.unload_all_models()


def noise_for(frames=FRAMES, seed=SEED):
    return sd15.comfy_noise((frames, 4, SIZE // 8, SIZE // 8), seed)


def assert_same(ours, reference, what):
    """fp32 agreement to 1e-5, relative to the latents' scale (the random tiny UNet makes latents of ~100)."""
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item()
    assert error <= 1e-5 * max(1.0, scale), f"{what}: max abs difference {error:.3g} at latent scale {scale:.3g}"


# ----------------------------------------------------------------------------- server graphs

def context_graph(checkpoint, frames=FRAMES, size=SIZE, **options):
    """Checkpoint, prompt, latent, motion module (3) and our context options as node 10; sampler node 6 on it."""
    prompt = graphs.with_motion(graphs.base(checkpoint, frames=frames, size=size), MOTION_FILE)
    prompt["10"] = {"class_type": "ADL_ContextOptions", "inputs": context_inputs(**options)}
    return graphs.lightning_sample(prompt, model=("10", 0), seed=SEED)


def context_inputs(model=("3", 0), context_length=LENGTH, context_overlap=OVERLAP, schedule="standard_uniform",
                   fuse_method="pyramid", windows_per_batch=1, freenoise=False, closed_loop=False):
    return {"model": list(model), "context_length": context_length, "context_overlap": context_overlap,
            "schedule": schedule, "fuse_method": fuse_method, "windows_per_batch": windows_per_batch,
            "freenoise": freenoise, "closed_loop": closed_loop}


def add_branch(prompt, name, **options):
    """One more context node + sampler + SaveLatent on the same model, prompt and latent."""
    prompt[f"{name}_ctx"] = {"class_type": "ADL_ContextOptions", "inputs": context_inputs(**options)}
    sampler = dict(prompt["6"], inputs=dict(prompt["6"]["inputs"], model=[f"{name}_ctx", 0]))
    prompt[f"{name}_sample"] = sampler
    prompt[f"{name}_save"] = {"class_type": "SaveLatent",
                              "inputs": {"samples": [f"{name}_sample", 0], "filename_prefix": f"tests/ctx_{name}"}}


def run_branches(comfy, comfy_base, checkpoint, branches):
    """Runs every branch in one prompt; returns {name: saved latent}."""
    prompt = context_graph(checkpoint)
    for name, options in branches.items():
        add_branch(prompt, name, **options)
    del prompt["10"], prompt["6"]
    comfy.run(prompt, timeout=900).raise_for_error()
    return {name: load_file(str(saved_files(comfy_base, f"ctx_{name}_*.latent")[-1]))["latent_tensor"]
            for name in branches}


def run_error(comfy, prompt):
    result = comfy.run(graphs.save_latent(prompt, "tests/never_written"), timeout=600)
    assert not result.ok, "the prompt was expected to fail"
    return result.execution_error["exception_message"]


# ----------------------------------------------------------------------------- tests: server vs reference

# Every schedule and every fuse method once (all 16 pairs agree too, but cost four times the CI time).
SWEEP = {"standard_uniform-pyramid": dict(schedule="standard_uniform", fuse_method="pyramid"),
         "looped_uniform-relative": dict(schedule="looped_uniform", fuse_method="relative", closed_loop=True),
         "standard_static-overlap-linear": dict(schedule="standard_static", fuse_method="overlap-linear"),
         "batched-flat": dict(schedule="batched", fuse_method="flat")}


def test_every_schedule_and_fuse_method_equals_the_plain_loop(comfy, comfy_base, tiny_checkpoint, local):
    branches = dict(SWEEP, batched_3=dict(windows_per_batch=3), batched_auto=dict(windows_per_batch=0),
                    freenoise=dict(freenoise=True))
    results = run_branches(comfy, comfy_base, tiny_checkpoint, branches)
    noise = noise_for()
    for name, options in SWEEP.items():
        reference = local.reference(noise, options["schedule"], options["fuse_method"],
                                    closed_loop=options.get("closed_loop", False))
        assert_same(results[name], reference, name)
    # Several windows per UNet call, fixed or by memory budget, give what one window per call gives.
    assert_same(results["batched_3"], results["standard_uniform-pyramid"], "3 windows per call")
    assert_same(results["batched_auto"], results["standard_uniform-pyramid"], "windows by memory budget")
    # FreeNoise: the sampler's noise replaced as lightning_core.context.freenoise does it, from the seed.
    free = context.freenoise(noise, LENGTH, OVERLAP, torch.Generator().manual_seed(SEED))
    assert_same(results["freenoise"], local.reference(free, "standard_uniform", "pyramid"), "freenoise")
    assert (results["freenoise"] - results["standard_uniform-pyramid"]).abs().max() > 1e-2


def test_stock_context_windows_fail_on_frame_batches(comfy, tiny_checkpoint, motion_file):
    # As a user would try it on the landed text-to-video graph: patched model -> ContextWindowsManual -> KSampler.
    prompt = graphs.with_motion(graphs.base(tiny_checkpoint, frames=48, size=SIZE), motion_file)
    prompt["10"] = {"class_type": "ContextWindowsManual",
                    "inputs": {"model": ["3", 0], "context_length": 16, "context_overlap": 4,
                               "context_schedule": "standard_static", "context_stride": 1, "closed_loop": False,
                               "fuse_method": "pyramid", "dim": 0}}
    for sampler in (graphs.ksample, graphs.lightning_sample):  # stock KSampler and ours, 4 steps: 5 sigmas
        message = run_error(comfy, sampler(dict(prompt), model=("10", 0), steps=4))
        assert "The size of tensor a (5) must match the size of tensor b (48)" in message, message


def test_bad_context_options_give_clear_errors_and_the_server_keeps_serving(comfy, comfy_base, tiny_checkpoint,
                                                                          motion_file):
    cases = {
        "context_length is 33": dict(context_length=33),
        "context_overlap is 4 but must be smaller than context_length (4)": dict(context_overlap=4),
        "fuse_method overlap-linear": dict(context_overlap=0, fuse_method="overlap-linear"),
    }
    for expected, options in cases.items():
        prompt = context_graph(tiny_checkpoint, **options)
        message = run_error(comfy, prompt)
        assert expected in message, message
    empty = comfy_base / "input" / "empty.latent"
    save_file({"latent_tensor": torch.zeros(0, 4, 4, 4), "latent_format_version_0": torch.tensor([])}, str(empty))
    prompt = context_graph(tiny_checkpoint)
    prompt["5"] = {"class_type": "LoadLatent", "inputs": {"latent": empty.name}}
    assert "batch_size is 0 frames" in run_error(comfy, prompt)
    ok = graphs.save_latent(context_graph(tiny_checkpoint, frames=6), "tests/ctx_after_errors")
    comfy.run(ok, timeout=600).raise_for_error()


# ----------------------------------------------------------------------------- tests: inside the model calls

def test_motion_module_sees_window_length_frames_in_every_cond_and_uncond_chunk(local):
    seen = []
    hooks = [m.register_forward_pre_hook(lambda module, args: seen.append((args[0].shape[0], args[1])))
             for m in local.motion_set.modules() if type(m).__name__ == "MotionModule"]
    negative_cond = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(3))
    negative = [[negative_cond, {}]]
    try:
        ours = local.sample(local.handler(windows_per_batch=2), noise_for(), negative=negative, cfg=2.0)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and all(frames == LENGTH for _, frames in seen), {frames for _, frames in seen}
    # Two windows, cond and uncond: 16 latents = 4 videos of 4 frames per call.
    assert {batch for batch, _ in seen} <= {2 * 2 * LENGTH, 2 * LENGTH}
    reference = local.reference(noise_for(), "standard_uniform", "pyramid", uncond=negative_cond, cfg=2.0)
    assert_same(ours, reference, "cfg 2, two windows per call")


def test_per_frame_conds_are_cut_to_each_window(local):
    # One embedding per frame, as prompt travel makes them ([frames, 77, 768]).
    per_frame = torch.randn(FRAMES, 77, 768, generator=torch.Generator().manual_seed(5))
    ours = local.sample(local.handler(windows_per_batch=2), noise_for(), positive=[[per_frame, {}]])
    assert_same(ours, local.reference(noise_for(), "standard_uniform", "pyramid", cond=per_frame), "per-frame conds")


def index_images(frames, size=SIZE):
    """IMAGE batch whose frame i is the flat value (i + 1) / (frames + 1)."""
    values = (torch.arange(frames, dtype=torch.float32) + 1) / (frames + 1)
    return values.view(-1, 1, 1, 1).expand(frames, size, size, 3).clone()


def decode_indices(images, frames):
    return ((images[:, 0, 0, 0] * (frames + 1)).round() - 1).long().tolist()


def tiny_controlnet(local):
    """A random ControlNet for the tiny UNet, built as comfy.controlnet.load_controlnet builds one."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    config = dict(local.model.model.model_config.unet_config, hint_channels=3, operations=comfy.ops.manual_cast,
                  dtype=torch.float32, device="cpu")
    config.pop("out_channels")
    net = comfy.cldm.cldm.ControlNet(**config)
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return comfy.controlnet.ControlNet(net, load_device=torch.device("cpu"))


def test_controlnet_hints_are_cut_to_each_window(local):
    control = tiny_controlnet(local)
    hints = []
    control.control_model.register_forward_pre_hook(
        lambda module, args, kwargs: hints.append(decode_indices(kwargs["hint"], FRAMES)), with_kwargs=True)
    control.set_cond_hint(index_images(FRAMES).movedim(-1, 1), 1.0)  # as ControlNetApplyAdvanced sets it
    positive = [[local.positive[0][0], dict(local.positive[0][1], control=control)]]
    local.sample(local.handler("standard_static", windows_per_batch=2), noise_for(), positive=positive, steps=1)
    groups = context.stack_windows(context.static_windows(FRAMES, LENGTH, OVERLAP), 2)
    assert hints == [[i for window in group for i in window] for group in groups]


# ----------------------------------------------------------------------------- tests: the handler's bookkeeping

def test_masks_progress_and_interrupt_between_windows(local):
    import comfy.conds
    import comfy.model_management
    import comfy.utils

    host = local.host
    handler = local.handler("standard_static", windows_per_batch=2)
    frames, sigmas = FRAMES, schedule.get_sigmas_trailing(2)
    x = torch.zeros(frames, 4, 4, 4)
    mask = (torch.arange(frames, dtype=torch.float32) + 1).view(-1, 1, 1).expand(frames, 4, 4).clone()
    per_frame = torch.arange(frames, dtype=torch.float32).view(-1, 1, 1).expand(frames, 77, 768).clone()
    conds = [[{"model_conds": {"c_crossattn": comfy.conds.CONDCrossAttn(per_frame)}, "mask": mask}], None]
    model_options = {"transformer_options": {"sample_sigmas": sigmas, host.KEY: {}}}
    calls, progress = [], []

    def calc_cond_batch(model, sub_conds, sub_x, timestep, options):
        cond = sub_conds[0][0]
        calls.append((cond["mask"][:, 0, 0].long().tolist(), cond["model_conds"]["c_crossattn"].cond[:, 0, 0].long()
                      .tolist(), options["transformer_options"][host.KEY]["num_frames"], sub_x.shape[0]))
        return [torch.zeros_like(sub_x), torch.zeros_like(sub_x)]

    comfy.utils.set_progress_bar_global_hook(lambda value, total, *_, **__: progress.append((value, total)))
    try:
        handler.execute(calc_cond_batch, local.model.model, conds, x, torch.full((frames,), float(sigmas[1])),
                        model_options)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    groups = context.stack_windows(context.static_windows(frames, LENGTH, OVERLAP), 2)
    expected = [[i for w in g for i in w] for g in groups]
    assert [c[1] for c in calls] == expected  # per-frame model conds
    assert [[m - 1 for m in c[0]] for c in calls] == expected  # per-frame masks
    assert all(c[2] == LENGTH and c[3] == len(e) for c, e in zip(calls, expected))
    assert progress == [(len(groups) + i + 1, 2 * len(groups)) for i in range(len(groups))]  # step 1 of 2
    assert host.KEY in model_options["transformer_options"] and "num_frames" not in \
        model_options["transformer_options"][host.KEY]

    calls.clear()

    def interrupting(*args):
        comfy.model_management.interrupt_current_processing(True)
        return calc_cond_batch(*args)

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        handler.execute(interrupting, local.model.model, conds, x, torch.full((frames,), float(sigmas[0])),
                        model_options)
    assert len(calls) == 1, "the interrupt should stop the next window, not the next step"


def test_schedules_and_weights_match_the_hosts():
    sd15.import_comfy()
    import comfy.context_windows as host_windows

    class Options:
        context_stride, closed_loop = 1, False

    for frames in (10, 17, 48, 64):
        for length, overlap in ((4, 1), (16, 4), (8, 0)):
            for step in range(4):
                for stride, closed in ((1, False), (2, False), (1, True)):
                    options = Options()
                    options.context_length, options.context_overlap, options._step = length, overlap, step
                    options.context_stride, options.closed_loop = stride, closed
                    for name in context.SCHEDULES:
                        ours = context.context_windows(name, frames, length, overlap, step, stride, closed)
                        assert ours == host_windows.CONTEXT_MAPPING[name](frames, options, {}), (name, frames)
                    for window in context.looped_uniform_windows(frames, length, overlap, step, stride, closed):
                        for fuse in ("flat", "pyramid") + (("overlap-linear",) if overlap else ()):
                            theirs = host_windows.FUSE_MAPPING[fuse](len(window), full_length=frames, idxs=window,
                                                                     handler=options)
                            assert torch.equal(context.fuse_weights(fuse, window, frames, overlap),
                                               torch.as_tensor(theirs, dtype=torch.float32)), (fuse, window)
