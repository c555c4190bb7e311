"""API-format prompts for node tests, built from small pieces so each test states only what differs."""

PROMPT_TEXT = "a red fox running through snow"


def base(checkpoint, frames=16, size=64):
    """Checkpoint, prompt and an empty latent of `frames` frames: nodes 1 (ckpt), 4 (text), 5 (latent)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT_TEXT, "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": frames}},
    }


def with_motion(prompt, motion_file, effect=1.0, motion_scale=1.0, loras=()):
    """Adds loader (2), optional LoRA chain (20, 21, ...) and apply (3); the patched model is ['3', 0]."""
    prompt["2"] = {"class_type": "ADL_LoadMotionModule", "inputs": {"model_name": motion_file}}
    apply_inputs = {"model": ["1", 0], "motion_module": ["2", 0], "effect": effect, "motion_scale": motion_scale}
    previous = None
    for i, (name, strength) in enumerate(loras):
        node = str(20 + i)
        prompt[node] = {"class_type": "ADL_MotionLoraLoader", "inputs": {"lora_name": name, "strength": strength}}
        if previous:
            prompt[node]["inputs"]["prev_motion_lora"] = [previous, 0]
        previous = node
    if previous:
        apply_inputs["motion_lora"] = [previous, 0]
    prompt["3"] = {"class_type": "ADL_ApplyMotionModule", "inputs": apply_inputs}
    return prompt


def lightning_sample(prompt, model=("3", 0), seed=7, steps=0, cfg=1.0):
    """Our one-node sampler as node 6."""
    prompt["6"] = {"class_type": "ADL_LightningKSampler",
                   "inputs": {"model": list(model), "seed": seed, "steps": steps, "cfg": cfg,
                              "positive": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}}
    return prompt


def custom_sample(prompt, model=("3", 0), seed=7, steps=0):
    """SamplerCustom fed by our scheduler (8) and sampler (9), as node 6."""
    prompt["8"] = {"class_type": "ADL_LightningScheduler", "inputs": {"model": list(model), "steps": steps, "denoise": 1.0}}
    prompt["9"] = {"class_type": "ADL_LightningSampler", "inputs": {}}
    prompt["6"] = {"class_type": "SamplerCustom",
                   "inputs": {"model": list(model), "add_noise": True, "noise_seed": seed, "cfg": 1.0,
                              "positive": ["4", 0], "negative": ["4", 0], "sampler": ["9", 0],
                              "sigmas": ["8", 0], "latent_image": ["5", 0]}}
    return prompt


def ksample(prompt, model=("1", 0), seed=7, steps=4, scheduler="sgm_uniform"):
    """Stock KSampler (euler, CFG 1) as node 6."""
    prompt["6"] = {"class_type": "KSampler",
                   "inputs": {"model": list(model), "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
                              "scheduler": scheduler, "positive": ["4", 0], "negative": ["4", 0],
                              "latent_image": ["5", 0], "denoise": 1.0}}
    return prompt


def save_latent(prompt, prefix, source=("6", 0)):
    """SaveLatent as node 7 (a .latent safetensors file with key 'latent_tensor')."""
    prompt["7"] = {"class_type": "SaveLatent", "inputs": {"samples": list(source), "filename_prefix": prefix}}
    return prompt
