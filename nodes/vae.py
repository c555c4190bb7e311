"""VAE decode and encode of long videos in frame chunks, so peak memory is the output plus one chunk's work.

Stock VAEDecode/VAEEncode size their batches from the free memory the host reports; on CPU that is all
available RAM, so a long video is decoded in very few, very large batches and the peak grows with the frame
count. Here each chunk goes through the same `VAE.decode`/`VAE.encode` call and is copied into an output
allocated once: the frames are bit for bit the stock node's on the same chunks (one chunk: the stock output),
and within CPU kernels' batch-size rounding (~3e-6) of one stock call over every frame.
"""

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io

from . import menu

CHUNK_TOOLTIP = ("Frames per VAE call. Peak memory is the output plus this many frames' work; 16 fits most "
                 "machines at 512x512, lower it if memory is short.")


def frame_chunks(frames, per_chunk):
    """(start, stop) of each chunk of at most `per_chunk` frames."""
    return [(start, min(start + per_chunk, frames)) for start in range(0, frames, per_chunk)]


def run_chunked(fn, frames_in, per_chunk):
    """Applies `fn` to each frame chunk of `frames_in` (dim 0) and fills one preallocated output."""
    chunks = frame_chunks(frames_in.shape[0], per_chunk)
    progress = comfy.utils.ProgressBar(len(chunks))
    out = None
    for start, stop in chunks:
        comfy.model_management.throw_exception_if_processing_interrupted()
        result = fn(frames_in[start:stop])
        if out is None:
            out = torch.empty((frames_in.shape[0],) + tuple(result.shape[1:]), dtype=result.dtype, device=result.device)
        out[start:stop] = result
        del result
        progress.update(1)
    return out


def check_frames(name, tensor, dims, what):
    """A clear error for an empty batch or a video VAE's 5-D latent, whose dim 0 is not frames."""
    if tensor.dim() != dims:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {what} (one frame per batch entry, "
                         f"SD1.5-family VAE)")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} has no frames")


class VAEDecodeChunked(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_VAEDecodeChunked",
            display_name=menu.title("VAE Decode Video in Chunks"),
            category=menu.VIDEO,
            description="VAE Decode for long videos: decodes a few frames at a time, so memory stays flat in the "
                        "frame count apart from the output itself. The frames VAE Decode gives.",
            inputs=[
                io.Latent.Input("samples", tooltip="The latent video, one latent per frame."),
                io.Vae.Input("vae", tooltip="The VAE used for decoding."),
                io.Int.Input("frames_per_chunk", default=16, min=1, max=4096, tooltip=CHUNK_TOOLTIP),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, samples, vae, frames_per_chunk) -> io.NodeOutput:
        latents = samples["samples"]
        check_frames("samples", latents, 4, "[frames, channels, height, width]")
        return io.NodeOutput(run_chunked(vae.decode, latents, frames_per_chunk))


class VAEEncodeChunked(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_VAEEncodeChunked",
            display_name=menu.title("VAE Encode Video in Chunks"),
            category=menu.VIDEO,
            description="VAE Encode for long videos: encodes a few frames at a time, so memory stays flat in the "
                        "frame count apart from the output itself. Same latents as VAE Encode.",
            inputs=[
                io.Image.Input("pixels", tooltip="The video frames, e.g. from Load Video or a previous decode."),
                io.Vae.Input("vae", tooltip="The VAE used for encoding."),
                io.Int.Input("frames_per_chunk", default=16, min=1, max=4096, tooltip=CHUNK_TOOLTIP),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, pixels, vae, frames_per_chunk) -> io.NodeOutput:
        check_frames("pixels", pixels, 4, "[frames, height, width, channels]")
        return io.NodeOutput({"samples": run_chunked(lambda chunk: vae.encode(chunk[:, :, :, :3]), pixels,
                                                     frames_per_chunk)})


NODES = [VAEEncodeChunked, VAEDecodeChunked]
