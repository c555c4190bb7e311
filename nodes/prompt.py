"""Prompt travel: a schedule of keyframe prompts becomes one CONDITIONING with an embedding per frame."""

import torch
from comfy_api.latest import io

from ..lightning_core import prompt_schedule
from . import menu

SCHEDULE_EXAMPLE = "0: a cat walking in a garden\n16: a dog running in a garden\n"


def full_prompt(pre_text, prompt, app_text):
    """The text actually encoded: the non-empty parts joined with ', '."""
    return ", ".join(part.strip() for part in (pre_text, prompt, app_text) if part and part.strip())


def encode(clip, text):
    """(cond [1, tokens, dim], pooled [1, dim] or None), exactly as CLIPTextEncode encodes `text`."""
    encoded = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    if len(encoded) != 1:  # CLIP hook keyframes give one cond per step range; a frame schedule cannot hold them
        raise ValueError("the prompt schedule does not support a CLIP with scheduled hooks; remove the hook keyframes")
    [[cond, extras]] = encoded
    return cond, extras.get("pooled_output")


def schedule_conditioning(clip, text, frames, pre_text="", app_text=""):
    """A one-entry CONDITIONING whose cond is [frames, tokens, dim] (and pooled_output [frames, dim])."""
    keyframes = prompt_schedule.parse_schedule(text, frames)
    texts = [full_prompt(pre_text, keyframe.prompt, app_text) for keyframe in keyframes]
    encoded = {text: encode(clip, text) for text in dict.fromkeys(texts)}  # each distinct prompt once
    conds, pooled = zip(*(encoded[text] for text in texts))
    positions, holds = [k.frame for k in keyframes], [k.hold for k in keyframes]
    cond = prompt_schedule.interpolate(torch.cat(prompt_schedule.match_token_length(conds)), positions, frames, holds)
    extras = {}
    if all(p is not None for p in pooled):
        extras["pooled_output"] = prompt_schedule.interpolate(torch.cat(pooled), positions, frames, holds)
    return [[cond, extras]]


class PromptSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_PromptSchedule",
            display_name=menu.title("Prompt Travel Schedule"),
            category=menu.LONG_VIDEO,
            description="Prompt travel: keyframe prompts (`FRAME: prompt`, or AnimateDiff-Evolved's `\"FRAME\": "
                        "\"prompt\",` and `FRAME = \"prompt\"` with its ranges, negative and decimal frames) "
                        "interpolated per frame in CLIP embedding space; each frame of the latent batch gets its "
                        "own prompt embedding. Connect the latent so the frame count follows it.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP model used for encoding the prompts."),
                io.String.Input("text", multiline=True, default=SCHEDULE_EXAMPLE,
                                tooltip="One keyframe per line, `FRAME: prompt` (frame 0 is the first); frames between "
                                        "keyframes blend the two prompts linearly, frames after the last keyframe "
                                        "keep it. Also `\"16\": \"prompt\",` and `16 = \"prompt\"`, ranges "
                                        "`0:8` (8 excluded), `-1` (last frame), `0.5` (half way), `8:` (hold until "
                                        "the next keyframe), # comments. Keyframes past the last frame are ignored."),
                io.Int.Input("frames", default=16, min=1, max=100000,
                             tooltip="The video length in frames when `latent` is not connected: set equal to the "
                                     "latent batch_size."),
                io.String.Input("pre_text", optional=True, multiline=True, default="",
                                tooltip="Put before every prompt (joined with ', '), e.g. the style or subject."),
                io.String.Input("app_text", optional=True, multiline=True, default="",
                                tooltip="Put after every prompt (joined with ', '), e.g. quality tags."),
                io.Latent.Input("latent", optional=True,
                                tooltip="The video latent the conditioning is for: when connected, its frame count "
                                        "is used and `frames` is ignored."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Per-frame conditioning: cond [frames, 77, 768].")],
        )

    @classmethod
    def execute(cls, clip, text, frames, pre_text="", app_text="", latent=None) -> io.NodeOutput:
        if clip is None:
            raise ValueError("clip input is invalid: None (the checkpoint has no text encoder)")
        if latent is not None:
            frames = latent["samples"].shape[0]
        return io.NodeOutput(schedule_conditioning(clip, text, frames, pre_text, app_text))


NODES = [PromptSchedule]
