"""Video nodes: a file from the input folder (or a stock VIDEO) to IMAGE frames or streamed to LATENT, with
its sound as AUDIO, and a save node for MP4, animated WEBP and GIF.

Stock Create Video + Save Video (H.264 MP4) and Save Animated WEBP serve too; our save node adds GIF, one
node for the three formats, CRF and pixel format, and frame times that keep a fractional frame rate. Like the
stock savers it embeds the prompt and workflow (MP4 tags, WEBP EXIF) so the file drops back onto the canvas.
"""

import json
import math
import os

import comfy.cli_args
import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import InputImpl, io, ui

from ..lightning_core import video as core
from ..lightning_core.requirements import MissingPackage
from . import menu


def _input_videos():
    """Video files in ComfyUI's input folder, as the stock Load Video node lists them."""
    folder = folder_paths.get_input_directory()
    files = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    return sorted(folder_paths.filter_files_content_types(files, ["video"]))


def _selection_inputs():
    return [
        io.Float.Input("force_rate", default=0.0, min=0.0, max=240.0, step=1.0,
                       tooltip="Frame rate to resample to, repeating or dropping source frames by their times; "
                               "0 keeps the source rate."),
        io.Int.Input("force_width", default=0, min=0, max=8192, step=8,
                     tooltip="Output width, a multiple of 8; 0 keeps the source width, or follows the aspect "
                             "when only force_height is set. With both set the frame is scaled to cover and "
                             "centre-cropped (the aspect is kept)."),
        io.Int.Input("force_height", default=0, min=0, max=8192, step=8,
                     tooltip="Output height, a multiple of 8; 0 keeps the source height, or follows the aspect "
                             "when only force_width is set."),
        io.Int.Input("frame_load_cap", default=0, min=0, max=1_000_000,
                     tooltip="At most this many frames are returned; 0 returns all."),
        io.Int.Input("skip_first_frames", default=0, min=0, max=1_000_000,
                     tooltip="Frames to skip at the start (counted at force_rate, when set)."),
        io.Int.Input("select_every_nth", default=1, min=1, max=1000,
                     tooltip="Keep every nth frame after the skip: 2 halves the frame count and the fps."),
    ]


FILE_TOOLTIP = ("A video in ComfyUI's input folder (upload one with the button). Ignored when `video` is "
                "connected.")
AUDIO_TOOLTIP = ("The source's sound under the selected frames (ComfyUI AUDIO, for Save Video's `audio`); "
                 "None when the file has no audio track.")
VIDEO_TOOLTIP = ("Optional: a VIDEO from the stock Load Video or Create Video node, read instead of `file` "
                 "(decoded with PyAV, which also reads AV1).")


def _check(file=None, force_rate=None, force_width=None, force_height=None, frame_load_cap=None,
           skip_first_frames=None, select_every_nth=None):
    """validate_inputs' answer: True, or a message naming the file or parameter (linked inputs are None)."""
    try:
        for name, value in (("force_width", force_width), ("force_height", force_height)):
            if value is not None:
                core.check_size(name, value)
        core.check_selection(force_rate or 0.0, frame_load_cap or 0, skip_first_frames or 0,
                             1 if select_every_nth is None else select_every_nth)
        if file:
            if not folder_paths.exists_annotated_filepath(file):
                return f"video file '{file}' is not in the input folder {folder_paths.get_input_directory()}"
            core.probe(folder_paths.get_annotated_filepath(file))
    except (core.VideoError, MissingPackage) as e:  # shown when queued, before anything runs
        return str(e)
    return True


def _fingerprint(file):
    """Changes when the file does, so a replaced upload under the same name re-runs the node."""
    path = folder_paths.get_annotated_filepath(file) if file else ""
    return (path, os.path.getmtime(path), os.path.getsize(path)) if os.path.isfile(path) else path


def _video_frames(video):
    """(RGB uint8 frame iterator, VideoInfo) of a stock VIDEO, streamed from its file where it has one."""
    width, height = video.get_dimensions()
    info = core.VideoInfo(frames=video.get_frame_count(), fps=float(video.get_frame_rate()), width=width,
                          height=height, codec="")
    if isinstance(video, InputImpl.VideoFromFile):
        return core.pyav_frames(video.get_stream_source()), info
    images = video.get_components().images
    return ((image[..., :3] * 255).round().clamp(0, 255).to(torch.uint8).numpy() for image in images), info


def open_chunks(file, video, force_rate, force_width, force_height, frame_load_cap, skip_first_frames,
                select_every_nth, chunk):
    """(iterator of uint8 chunks [n, H, W, 3], planned frame count, output fps, SourceAudio) for the node inputs."""
    selection = dict(force_rate=force_rate, size=(force_width, force_height), frame_load_cap=frame_load_cap,
                     skip_first_frames=skip_first_frames, select_every_nth=select_every_nth, chunk=chunk)
    try:
        if video is not None:
            frames, info = _video_frames(video)
            chunks = core.read_decoded(frames, info, "VIDEO input", **selection)
        else:
            if not file:
                raise core.VideoError("no video: choose a `file` from the input folder or connect `video`")
            path = folder_paths.get_annotated_filepath(file)
            info = core.probe(path)
            chunks = core.read_frames(path, **selection)
    except core.VideoError as e:
        raise ValueError(str(e)) from None
    planned = core.selected_count(info.frames, info.fps, force_rate, skip_first_frames, select_every_nth,
                                  frame_load_cap)
    fps = core.output_fps(info.fps, force_rate, select_every_nth)
    start = core.selection_time_span(info.fps, force_rate, skip_first_frames)[0]
    return _reraised(chunks), planned, fps, SourceAudio(file, video, start, fps)


class SourceAudio:
    """The audio of a loader's source under its selected frames, read once the frame count is known."""

    def __init__(self, file, video, start, fps):
        self.file, self.video, self.start, self.fps = file, video, start, fps

    def read(self, frames):
        """ComfyUI's AUDIO ({"waveform": [1, channels, samples], "sample_rate"}) under `frames` frames, or None
        when the source has no audio."""
        duration = frames / self.fps
        if self.video is not None and not isinstance(self.video, InputImpl.VideoFromFile):
            audio = self.video.get_components().audio
            if audio is None:
                return None
            rate = int(audio["sample_rate"])
            first = round(self.start * rate)
            return {"waveform": audio["waveform"][..., first:first + round(duration * rate)], "sample_rate": rate}
        source = self.video.get_stream_source() if self.video is not None else folder_paths.get_annotated_filepath(
            self.file)
        decoded = core.read_audio(source, self.start, duration)
        return None if decoded is None else {"waveform": decoded[0].unsqueeze(0), "sample_rate": decoded[1]}


def _reraised(chunks):
    """Passes chunks through, turning a VideoError into the ValueError ComfyUI shows without our traceback."""
    try:
        yield from chunks
    except core.VideoError as e:
        raise ValueError(str(e)) from None


def _stream(chunks, planned, chunk):
    """Yields chunks with a progress bar over them, stopping between chunks when the user interrupts."""
    progress = comfy.utils.ProgressBar(max(1, math.ceil(planned / chunk)))
    for frames in chunks:
        comfy.model_management.throw_exception_if_processing_interrupted()
        yield frames
        progress.update(1)


class _VideoFileNode(io.ComfyNode):
    """A loader of a video in the input folder: its inputs are checked when queued, and it re-runs when the file changes."""

    @classmethod
    def validate_inputs(cls, file, force_rate, force_width, force_height, frame_load_cap, skip_first_frames,
                        select_every_nth):
        return _check(file, force_rate, force_width, force_height, frame_load_cap, skip_first_frames,
                      select_every_nth)

    @classmethod
    def fingerprint_inputs(cls, file, **_):
        return _fingerprint(file)


class LoadVideo(_VideoFileNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_LoadVideo",
            display_name=menu.title("Load Video File"),
            category=menu.VIDEO,
            description="Loads video frames as IMAGE with frame rate, size and frame selection; returns the frame "
                        "count and the output frame rate (connect it to the save node to keep the timing).",
            inputs=[io.Combo.Input("file", options=_input_videos(), upload=io.UploadType.video, tooltip=FILE_TOOLTIP),
                    *_selection_inputs(),
                    io.Video.Input("video", optional=True, tooltip=VIDEO_TOOLTIP)],
            outputs=[io.Image.Output(display_name="IMAGE"), io.Int.Output(display_name="frame_count"),
                     io.Float.Output(display_name="fps"),
                     io.Audio.Output(display_name="audio", tooltip=AUDIO_TOOLTIP)],
        )

    @classmethod
    def execute(cls, file, force_rate, force_width, force_height, frame_load_cap, skip_first_frames,
                select_every_nth, video=None) -> io.NodeOutput:
        chunk = 16
        chunks, planned, fps, audio = open_chunks(file, video, force_rate, force_width, force_height, frame_load_cap,
                                           skip_first_frames, select_every_nth, chunk)
        # uint8 while reading, one float copy at the end: 1.25x the output at peak, not 2x
        frames = list(_stream(chunks, planned, chunk))
        images = torch.empty((sum(f.shape[0] for f in frames),) + tuple(frames[0].shape[1:]), dtype=torch.float32)
        start = 0
        while frames:
            block = frames.pop(0)
            images[start:start + block.shape[0]] = block.float().div_(255.0)
            start += block.shape[0]
        return io.NodeOutput(images, images.shape[0], fps, audio.read(images.shape[0]))


class LoadVideoLatent(_VideoFileNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_LoadVideoLatent",
            display_name=menu.title("Load Video File to Latent"),
            category=menu.VIDEO,
            description="Decodes and VAE-encodes a video chunk by chunk straight to LATENT, so long videos never "
                        "sit in memory as full-size frames; same result as Load Video + VAE Encode.",
            inputs=[io.Combo.Input("file", options=_input_videos(), upload=io.UploadType.video, tooltip=FILE_TOOLTIP),
                    io.Vae.Input("vae", tooltip="The VAE that encodes the frames (the checkpoint's)."),
                    *_selection_inputs(),
                    io.Int.Input("frames_per_chunk", default=16, min=1, max=1024,
                                 tooltip="Frames decoded and encoded at a time: more is a little faster, fewer "
                                         "uses less memory."),
                    io.Video.Input("video", optional=True, tooltip=VIDEO_TOOLTIP)],
            outputs=[io.Latent.Output(display_name="LATENT"), io.Int.Output(display_name="frame_count"),
                     io.Float.Output(display_name="fps"),
                     io.Audio.Output(display_name="audio", tooltip=AUDIO_TOOLTIP)],
        )

    @classmethod
    def execute(cls, file, vae, force_rate, force_width, force_height, frame_load_cap, skip_first_frames,
                select_every_nth, frames_per_chunk, video=None) -> io.NodeOutput:
        chunks, planned, fps, audio = open_chunks(file, video, force_rate, force_width, force_height,
                                                  frame_load_cap, skip_first_frames, select_every_nth,
                                                  frames_per_chunk)
        latent, filled = None, 0
        for frames in _stream(chunks, planned, frames_per_chunk):
            encoded = vae.encode(frames.float().div_(255.0))
            if latent is None:
                latent = torch.empty((max(planned, encoded.shape[0]),) + tuple(encoded.shape[1:]),
                                     dtype=encoded.dtype, device=encoded.device)
            latent = core.put_rows(latent, filled, encoded)
            filled += encoded.shape[0]
        return io.NodeOutput({"samples": latent[:filled]}, filled, fps, audio.read(filled))


SAVE_FORMATS = {"mp4 (H.264)": "mp4", "webp": "webp", "gif": "gif"}


def _uint8_chunks(images, chunk=16):
    """IMAGE [n, H, W, C] floats in 0..1 to uint8 RGB chunks, converted a chunk at a time."""
    for start in range(0, images.shape[0], chunk):
        yield (images[start:start + chunk, ..., :3] * 255.0).round().clamp(0, 255).to(torch.uint8).cpu()


def saved_metadata(prompt, extra_pnginfo):
    """{key: JSON text} of the prompt and the workflow, as the stock savers embed them (none with
    --disable-metadata), so that dropping the file on the canvas restores the graph."""
    if comfy.cli_args.args.disable_metadata:
        return {}
    metadata = {key: json.dumps(value) for key, value in (extra_pnginfo or {}).items()}
    if prompt is not None:
        metadata["prompt"] = json.dumps(prompt)
    return metadata


class SaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADL_SaveVideo",
            display_name=menu.title("Save Video MP4/WEBP/GIF"),
            category=menu.VIDEO,
            description="Saves frames as an H.264 MP4 (with the source's audio), animated WEBP or GIF in the output "
                        "folder, at the given frame rate (connect the loader's fps to keep the source timing), with "
                        "a preview. MP4 and WEBP hold the workflow: drop them on the canvas to get the graph back.",
            inputs=[
                io.Image.Input("images", tooltip="The frames, one per batch item."),
                io.Float.Input("fps", default=8.0, min=0.01, max=240.0, step=0.01,
                               tooltip="Frames per second; connect Load Video's fps output to keep the source rate."),
                io.Combo.Input("format", options=list(SAVE_FORMATS), default="mp4 (H.264)",
                               tooltip="mp4: H.264 (MPEG-4 part 2 with a logged warning where PyAV lacks H.264), "
                                       "with audio; webp: animated, lossy quality 90; gif: 256 colours, frame times "
                                       "in 10 ms steps that average to fps. MP4 and WEBP embed the workflow; "
                                       "ComfyUI cannot read one back from a GIF."),
                io.String.Input("filename_prefix", default="AnimateDiff-Lightning/video",
                                tooltip="Path and name start inside the output folder."),
                io.Audio.Input("audio", optional=True,
                               tooltip="Sound for the MP4 (e.g. Load Video's audio), cut to the video's length; "
                                       "WEBP and GIF hold no sound."),
                io.Int.Input("crf", default=19, min=0, max=51, optional=True,
                             tooltip="MP4 (H.264) quality: lower is better and bigger; 17-23 is the usual range, "
                                     "0 lossless."),
                io.Combo.Input("pix_fmt", options=list(core.PIXEL_FORMATS), default="yuv420p", optional=True,
                               tooltip="MP4 pixel format: yuv420p plays everywhere; yuv444p keeps sharp colour "
                                       "edges but some players (browsers, phones) do not play it."),
                io.Int.Input("loop_count", default=0, min=0, max=100, optional=True,
                             tooltip="GIF and WEBP: how many times the animation plays; 0 loops forever."),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, fps, format, filename_prefix, audio=None, crf=19, pix_fmt="yuv420p",
                loop_count=0) -> io.NodeOutput:
        extension = SAVE_FORMATS[format]
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), images.shape[2], images.shape[1])
        file = f"{name}_{counter:05}_.{extension}"
        path = os.path.join(folder, file)
        metadata = saved_metadata(cls.hidden.prompt, cls.hidden.extra_pnginfo)
        try:
            if extension == "mp4":
                sound = None if audio is None else (audio["waveform"][0], int(audio["sample_rate"]))
                core.write_mp4(path, _uint8_chunks(images), fps, crf=crf, pix_fmt=pix_fmt, audio=sound,
                               metadata=metadata)
            else:
                if audio is not None:
                    core.log.warning("%s holds no sound: the audio input is not saved (choose mp4 for it)", file)
                core.write_animated(path, _uint8_chunks(images), fps, extension, loop=loop_count,
                                    metadata=metadata if extension == "webp" else None)
        except core.VideoError as e:
            raise ValueError(str(e)) from None
        saved = [ui.SavedResult(file, subfolder, io.FolderType.output)]
        return io.NodeOutput(ui=ui.PreviewVideo(saved) if extension == "mp4" else ui.SavedImages(saved, True))


NODES = [LoadVideo, LoadVideoLatent, SaveVideo]
