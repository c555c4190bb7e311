"""Prompt schedule node in the real server: frame i is sampled with embedding i; bad schedules are named."""

import pytest
import torch
from safetensors.torch import load_file

import graphs
from host import saved_files

LIGHTNING_4STEP = "animatediff_lightning_4step_comfyui.safetensors"
CAT, DOG = "a cat walking in a garden", "a dog running on a beach"
FRAMES = 5
SCHEDULE = f"# keyframes 0 and 4: frames 1-3 blend the two\n0: {CAT}\n\"4\": \"{DOG}\",\n"


@pytest.fixture(scope="module")
def lightning_file(write_motion):
    return write_motion(LIGHTNING_4STEP)


def schedule_node(text=SCHEDULE, frames=FRAMES, pre_text="", app_text=""):
    return {"class_type": "ADL_PromptSchedule",
            "inputs": {"clip": ["1", 1], "text": text, "frames": frames, "pre_text": pre_text, "app_text": app_text}}


def conditioning_nodes():
    """Schedule (10), CLIPTextEncode of each keyframe prompt (11, 12), and their ConditioningAverage at w=0.75 (13)."""
    return {
        "10": schedule_node(),
        "11": {"class_type": "CLIPTextEncode", "inputs": {"text": CAT, "clip": ["1", 1]}},
        "12": {"class_type": "CLIPTextEncode", "inputs": {"text": DOG, "clip": ["1", 1]}},
        # the schedule's frame 3 is 3/4 of the way from frame 0 (cat) to frame 4 (dog)
        "13": {"class_type": "ConditioningAverage",
               "inputs": {"conditioning_to": ["12", 0], "conditioning_from": ["11", 0],
                          "conditioning_to_strength": 0.75}},
    }


def sample_and_save(prompt, node, positive, prefix, model="3", steps=1, cfg=1.0, negative=None):
    """Our sampler on `positive` (node id) as `node`, its latent saved as node `node`+'s'."""
    inputs = {"model": [model, 0], "seed": 11, "steps": steps, "cfg": cfg, "positive": [positive, 0],
              "latent_image": ["5", 0], "denoise": 1.0}
    if negative:
        inputs["negative"] = [negative, 0]
    prompt[node] = {"class_type": "ADL_LightningKSampler", "inputs": inputs}
    prompt[node + "s"] = {"class_type": "SaveLatent",
                          "inputs": {"samples": [node, 0], "filename_prefix": f"tests/{prefix}"}}


def latent(comfy_base, prefix):
    [path] = saved_files(comfy_base, f"{prefix}_*.latent")
    return load_file(str(path))["latent_tensor"]


def test_each_frame_is_sampled_with_its_own_embedding(comfy, comfy_base, tiny_checkpoint, lightning_file):
    # effect 0: the motion layers add nothing, so each frame depends on its own conditioning only and can be
    # compared bit for bit with a run that gives every frame one fixed conditioning.
    prompt = graphs.with_motion(graphs.base(tiny_checkpoint, frames=FRAMES), lightning_file, effect=0.0)
    prompt.update(conditioning_nodes())
    for node, positive, prefix in [("20", "10", "travel"), ("21", "11", "cat"), ("22", "12", "dog"),
                                   ("23", "13", "average")]:
        sample_and_save(prompt, node, positive, prefix)
    comfy.run(prompt, timeout=600).raise_for_error()
    travel, cat, dog, average = (latent(comfy_base, p) for p in ("travel", "cat", "dog", "average"))

    assert torch.equal(travel[0], cat[0]), "frame 0 must be sampled with the first keyframe's CLIPTextEncode"
    assert torch.equal(travel[4], dog[4]), "frame 4 must be sampled with the second keyframe's CLIPTextEncode"
    assert torch.equal(travel[3], average[3]), "frame 3 must be sampled with the 3/4 blend of the two"
    assert (cat[4] - dog[4]).abs().max() > 1e-2, "the two prompts must lead to different frames"
    for frame in (1, 2, 3):  # blended frames are neither prompt
        assert (travel[frame] - cat[frame]).abs().max() > 1e-4 and (travel[frame] - dog[frame]).abs().max() > 1e-4


def test_per_frame_conditioning_samples_with_motion_and_cfg(comfy, comfy_base, tiny_checkpoint, lightning_file):
    # With motion the frames interact, so no frame equals a single-prompt run; the batch must still line up
    # with the latent frames for cond alone (cfg 1) and for cond + uncond in one UNet batch (cfg > 1).
    prompt = graphs.with_motion(graphs.base(tiny_checkpoint, frames=FRAMES), lightning_file)
    prompt.update(conditioning_nodes())
    sample_and_save(prompt, "20", "10", "withmotion_schedule")
    sample_and_save(prompt, "21", "11", "withmotion_single")
    sample_and_save(prompt, "22", "10", "withmotion_cfg", cfg=1.5, negative="11")
    comfy.run(prompt, timeout=600).raise_for_error()
    travel, cat, travel_cfg = (latent(comfy_base, prefix)
                               for prefix in ("withmotion_schedule", "withmotion_single", "withmotion_cfg"))
    assert travel.shape == cat.shape == travel_cfg.shape == (FRAMES, 4, 8, 8)
    assert (travel - cat).abs().max() > 1e-2 and (travel_cfg - travel).abs().max() > 1e-2
    assert torch.isfinite(travel_cfg).all()


def test_pre_and_app_text_are_joined_to_every_prompt(comfy, comfy_base, tiny_checkpoint, lightning_file):
    prompt = graphs.with_motion(graphs.base(tiny_checkpoint, frames=2), lightning_file, effect=0.0)
    prompt["10"] = schedule_node(text="0: walking in a garden", frames=2, pre_text="a cat", app_text="4k")
    prompt["11"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat, walking in a garden, 4k",
                                                              "clip": ["1", 1]}}
    sample_and_save(prompt, "20", "10", "joined_schedule")
    sample_and_save(prompt, "21", "11", "joined_text")
    comfy.run(prompt, timeout=600).raise_for_error()
    assert torch.equal(latent(comfy_base, "joined_schedule"), latent(comfy_base, "joined_text"))


@pytest.mark.parametrize("text,expected", [
    (f"0: {CAT}\n{DOG}", f"line 2 ('{DOG}') is not a keyframe"),
    (f"0: {CAT}\n\n1.5: {DOG}", "line 3 ('1.5: a dog running on a beach'): a decimal index is a fraction"),
    (f"0: {CAT}\n-6: {DOG}", "line 2 ('-6: a dog running on a beach'): frame -6 counts back past the first frame"),
    (f"\n9: {DOG}", "every keyframe of the prompt schedule is past the last frame (4)"),
    (f"0: {CAT}\n0: {DOG}", "line 2 ('0: a dog running on a beach'): frame 0 is already set on line 1"),
    ("# nothing yet\n", "the prompt schedule is empty"),
])
def test_bad_schedules_are_named_and_the_server_keeps_serving(comfy, comfy_base, tiny_checkpoint, lightning_file,
                                                              text, expected):
    prompt = graphs.with_motion(graphs.base(tiny_checkpoint, frames=FRAMES), lightning_file)
    prompt["10"] = schedule_node(text=text)
    sample_and_save(prompt, "20", "10", "never_written")
    result = comfy.run(prompt, timeout=600)
    assert not result.ok
    assert result.execution_error["node_type"] == "ADL_PromptSchedule"
    assert expected in result.execution_error["exception_message"], result.execution_error["exception_message"]
    prompt["10"] = schedule_node(text=f"0: {CAT}")
    prompt["20s"]["inputs"]["filename_prefix"] = "tests/after_bad_schedule"
    comfy.run(prompt, timeout=600).raise_for_error()


def test_a_connected_latent_sets_the_frame_count(comfy, comfy_base, tiny_checkpoint, lightning_file):
    # `frames` says 8, the latent has FRAMES: the latent wins, and a keyframe past its end is dropped
    prompt = graphs.with_motion(graphs.base(tiny_checkpoint, frames=FRAMES), lightning_file, effect=0.0)
    prompt["10"] = schedule_node(text=SCHEDULE + f"7: {CAT}\n", frames=8)
    prompt["10"]["inputs"]["latent"] = ["5", 0]
    prompt.update({key: value for key, value in conditioning_nodes().items() if key != "10"})
    sample_and_save(prompt, "20", "10", "latent_frames_schedule")
    sample_and_save(prompt, "21", "13", "latent_frames_average")
    comfy.run(prompt, timeout=600).raise_for_error()
    assert "keyframes past the last frame (4) ignored, on line(s) 4" in comfy.log()
    assert torch.equal(latent(comfy_base, "latent_frames_schedule")[3],
                       latent(comfy_base, "latent_frames_average")[3])


def test_a_schedule_for_another_frame_count_is_refused(comfy, tiny_checkpoint, lightning_file):
    # The host would silently cut or repeat the per-frame conditioning to the latent batch.
    prompt = graphs.with_motion(graphs.base(tiny_checkpoint, frames=FRAMES), lightning_file)
    prompt["10"] = schedule_node(frames=FRAMES + 3)
    sample_and_save(prompt, "20", "10", "never_written_frames")
    result = comfy.run(prompt, timeout=600)
    assert not result.ok
    message = result.execution_error["exception_message"]
    assert "the prompt conditioning has 8 frames" in message and f"latent_image has {FRAMES}" in message, message
