"""Video files in and out, streamed: decode, resample the frame rate, select, resize, write.

Frames travel as uint8 RGB tensors [n, H, W, 3], at most `chunk` at a time, so a long video never sits in
memory whole. Frame times are index / fps (constant frame rate, what the container reports). Forcing a
rate repeats or drops source frames: output frame k shows the source frame on screen at time k / rate.
The selection then counts frames of that resampled stream, in VideoHelperSuite's order:
skip_first_frames, then select_every_nth, then frame_load_cap.

Files are decoded with opencv (its wheels bundle FFmpeg; imported on first use, see requirements.py); a
stock ComfyUI VIDEO is decoded with PyAV, as ComfyUI itself does, and so is sound. MP4 is written with
PyAV (H.264; MPEG-4 part 2 where the build lacks an H.264 encoder; AAC sound), animated WEBP and GIF with
Pillow.
"""

import itertools
import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from PIL import Image

from .requirements import opencv

log = logging.getLogger("animatediff_lightning")

DEFAULT_FPS = 24.0  # for the rare file that reports no frame rate
SIZE_MULTIPLE = 8  # the VAE's downscale factor: latents need pixel sizes divisible by it
TIME_EPS = 1e-6  # absorbs float error in index * rate when it should be an integer


class VideoError(ValueError):
    """A video that cannot be read or written as asked; the message names the file or parameter."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # as the container reports it (an estimate for some formats, e.g. WEBM)
    fps: float
    width: int
    height: int
    codec: str


# ----------------------------------------------------------------------------- selection arithmetic

def resampled_count(index, source_fps, force_rate=0.0):
    """How many frames of the `force_rate` stream show source frame `index` (0: dropped, 2+: repeated)."""
    if not force_rate:
        return 1
    ratio = force_rate / source_fps
    return math.ceil((index + 1) * ratio - TIME_EPS) - math.ceil(index * ratio - TIME_EPS)


def is_selected(index, skip_first_frames=0, select_every_nth=1):
    """Whether frame `index` of the resampled stream survives skip_first_frames and select_every_nth."""
    return index >= skip_first_frames and (index - skip_first_frames) % select_every_nth == 0


def frame_plan(source_fps, force_rate=0.0, skip_first_frames=0, select_every_nth=1, frame_load_cap=0):
    """Yields, for source frames 0, 1, 2, ..., how often each appears in the output; ends at the cap."""
    kept = position = index = 0
    while not frame_load_cap or kept < frame_load_cap:
        copies = resampled_count(index, source_fps, force_rate)
        take = sum(is_selected(k, skip_first_frames, select_every_nth) for k in range(position, position + copies))
        if frame_load_cap:
            take = min(take, frame_load_cap - kept)
        yield take
        kept, position, index = kept + take, position + copies, index + 1


def selected_count(source_frames, source_fps, force_rate=0.0, skip_first_frames=0, select_every_nth=1,
                   frame_load_cap=0):
    """Number of output frames a video of `source_frames` frames gives."""
    plan = frame_plan(source_fps, force_rate, skip_first_frames, select_every_nth, frame_load_cap)
    return sum(itertools.islice(plan, source_frames))


def output_fps(source_fps, force_rate=0.0, select_every_nth=1):
    """Frame rate of the output: the forced (or source) rate divided by select_every_nth."""
    return (force_rate or source_fps) / select_every_nth


def check_selection(force_rate=0.0, frame_load_cap=0, skip_first_frames=0, select_every_nth=1):
    """Raises, naming the parameter, for values the selection cannot use."""
    if force_rate < 0:
        raise VideoError(f"force_rate is {force_rate}: use 0 (the source rate) or a positive frame rate")
    for name, value, least in (("frame_load_cap", frame_load_cap, 0), ("skip_first_frames", skip_first_frames, 0),
                               ("select_every_nth", select_every_nth, 1)):
        if value < least:
            raise VideoError(f"{name} is {value}: it must be at least {least}")


# ----------------------------------------------------------------------------- sizes

def check_size(name, value):
    """Raises, naming the parameter, unless `value` is 0 (source size) or a positive multiple of 8."""
    if value < 0 or value % SIZE_MULTIPLE:
        below, above = value // SIZE_MULTIPLE * SIZE_MULTIPLE, (value // SIZE_MULTIPLE + 1) * SIZE_MULTIPLE
        hint = f" (e.g. {below} or {above})" if below > 0 else ""
        raise VideoError(f"{name} is {value}: it must be 0 (source size) or a multiple of {SIZE_MULTIPLE}{hint}, "
                         f"because the VAE works on {SIZE_MULTIPLE}x{SIZE_MULTIPLE} pixel blocks")


def output_size(width, height, force_width=0, force_height=0):
    """(width, height) of the output: both forced as given; one forced, the other from the aspect, floored to 8."""
    if force_width and force_height:
        return force_width, force_height
    if force_width:
        return force_width, max(SIZE_MULTIPLE, int(height * force_width / width) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    if force_height:
        return max(SIZE_MULTIPLE, int(width * force_height / height) // SIZE_MULTIPLE * SIZE_MULTIPLE), force_height
    return width, height


def fit(frame, size):
    """Scales a frame [H, W, 3] to cover `size` (width, height) keeping its aspect, then crops the centre."""
    height, width = frame.shape[:2]
    target_width, target_height = size
    if (width, height) == (target_width, target_height):
        return frame
    scale = max(target_width / width, target_height / height)
    scaled = (max(target_width, round(width * scale)), max(target_height, round(height * scale)))
    cv2 = opencv("resizing video frames (force_width / force_height)")
    frame = cv2.resize(frame, scaled, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    left, top = (scaled[0] - target_width) // 2, (scaled[1] - target_height) // 2
    return frame[top:top + target_height, left:left + target_width]


# ----------------------------------------------------------------------------- reading

def _fourcc(value):
    """opencv's FOURCC number as text, e.g. 'avc1', 'AV01'."""
    code = int(value)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ") or "unknown"


def _open(path):
    """An opened cv2.VideoCapture on `path`, or a VideoError saying why not."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise VideoError(f"video file not found: '{path}'")
    cv2 = opencv("reading video files")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened() or capture.get(cv2.CAP_PROP_FRAME_WIDTH) <= 0:
        capture.release()
        raise VideoError(f"'{name}' is not a video file opencv can open (expected e.g. .mp4, .webm, .mov, .mkv)")
    return capture


def _info(capture, name):
    cv2 = opencv("reading video files")
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps or not math.isfinite(fps) or fps <= 0:
        log.warning("'%s' reports no frame rate; assuming %g fps", name, DEFAULT_FPS)
        fps = DEFAULT_FPS
    return VideoInfo(frames=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))), fps=fps,
                     width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                     codec=_fourcc(capture.get(cv2.CAP_PROP_FOURCC)))


def probe(path):
    """VideoInfo (frame count, fps, size, codec) of a video file, from its header."""
    capture = _open(path)
    try:
        return _info(capture, os.path.basename(path))
    finally:
        capture.release()


def _capture_frames(capture, plan, size, name, codec):
    """Yields each planned RGB frame of an opened capture as often as planned; dropped ones are never converted."""
    cv2 = opencv("reading video files")
    for index, copies in enumerate(plan):
        if not capture.grab():
            if index == 0:
                raise VideoError(f"opencv cannot decode the '{codec}' video stream of '{name}' (AV1 is the usual "
                                 "case): re-encode it to H.264 MP4, or load it with the stock Load Video node and "
                                 "connect its VIDEO to the `video` input, which decodes with PyAV")
            return
        if copies:
            ok, frame = capture.retrieve()
            if not ok:
                raise VideoError(f"frame {index} of '{name}' could not be decoded: the file may be damaged")
            frame = cv2.cvtColor(fit(frame, size), cv2.COLOR_BGR2RGB)
            yield from itertools.repeat(frame, copies)


def _planned_frames(frames, plan, size):
    """Yields each frame of an RGB frame iterator as often as planned, fitted to `size`."""
    for copies, frame in zip(plan, frames):
        if copies:
            yield from itertools.repeat(fit(frame, size), copies)


def _chunks(frames, chunk, name, selection):
    """Stacks frames into uint8 tensors [n, H, W, 3] of at most `chunk`; raises when no frame was selected."""
    count = 0
    while batch := list(itertools.islice(frames, chunk)):
        count += len(batch)
        yield torch.from_numpy(np.stack(batch))
    if count == 0:
        raise VideoError(f"no frames left in '{name}' after {selection}")


def _describe(info, force_rate, frame_load_cap, skip_first_frames, select_every_nth):
    return (f"force_rate={force_rate}, skip_first_frames={skip_first_frames}, select_every_nth={select_every_nth}, "
            f"frame_load_cap={frame_load_cap} (the video has about {info.frames} frames at {info.fps:.3f} fps)")


def read_frames(path, force_rate=0.0, size=(0, 0), frame_load_cap=0, skip_first_frames=0, select_every_nth=1,
                chunk=16):
    """Yields the selected frames of a video file as uint8 RGB tensors [n, H, W, 3], `chunk` at a time.

    `size` is (force_width, force_height); 0 keeps the source side (see output_size)."""
    check_selection(force_rate, frame_load_cap, skip_first_frames, select_every_nth)
    check_size("force_width", size[0])
    check_size("force_height", size[1])
    capture = _open(path)
    name = os.path.basename(path)
    try:
        info = _info(capture, name)
        plan = frame_plan(info.fps, force_rate, skip_first_frames, select_every_nth, frame_load_cap)
        frames = _capture_frames(capture, plan, output_size(info.width, info.height, *size), name, info.codec)
        yield from _chunks(frames, chunk, name,
                           _describe(info, force_rate, frame_load_cap, skip_first_frames, select_every_nth))
    finally:
        capture.release()


def read_decoded(frames, info, name, force_rate=0.0, size=(0, 0), frame_load_cap=0, skip_first_frames=0,
                 select_every_nth=1, chunk=16):
    """read_frames for frames decoded elsewhere: an iterator of RGB uint8 arrays [H, W, 3] described by `info`."""
    check_selection(force_rate, frame_load_cap, skip_first_frames, select_every_nth)
    check_size("force_width", size[0])
    check_size("force_height", size[1])
    plan = frame_plan(info.fps, force_rate, skip_first_frames, select_every_nth, frame_load_cap)
    selected = _planned_frames(frames, plan, output_size(info.width, info.height, *size))
    yield from _chunks(selected, chunk, name,
                       _describe(info, force_rate, frame_load_cap, skip_first_frames, select_every_nth))


def pyav_frames(source):
    """Yields the RGB frames [H, W, 3] of the first video stream of a path or file object, decoded with PyAV."""
    import av  # ComfyUI ships PyAV; only the VIDEO path needs it

    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def read_audio(source, start=0.0, duration=None):
    """(waveform [channels, samples] float32, sample rate) of the first audio stream of a path or file object,
    from `start` seconds for `duration` seconds (to the end when None); None when it has no audio stream."""
    import av

    with av.open(source) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        # planar float: each decoded frame becomes [channels, samples] whatever the codec's own sample format
        to_float = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
        blocks = [out.to_ndarray() for frame in container.decode(stream) for out in to_float.resample(frame)]
        blocks += [out.to_ndarray() for out in to_float.resample(None)]
    waveform = torch.from_numpy(np.concatenate(blocks, axis=1)) if blocks else torch.zeros(1, 0)
    first = max(0, round(start * rate))
    last = waveform.shape[1] if duration is None else first + round(duration * rate)
    return waveform[:, first:last].float().contiguous(), int(rate)


def selection_time_span(source_fps, force_rate=0.0, skip_first_frames=0, frames=0, fps=0.0):
    """(start, duration) in seconds of the selected frames: the audio that plays under them."""
    return skip_first_frames / (force_rate or source_fps), frames / fps if fps else 0.0


def put_rows(buffer, filled, block):
    """Writes `block` at row `filled` of a preallocated buffer; returns it, grown when the header undercounted."""
    if filled + block.shape[0] > buffer.shape[0]:
        grown = buffer.new_empty((max(filled + block.shape[0], buffer.shape[0] * 3 // 2),) + tuple(buffer.shape[1:]))
        grown[:filled] = buffer[:filled]
        buffer = grown
    buffer[filled:filled + block.shape[0]] = block
    return buffer


# ----------------------------------------------------------------------------- writing

def _frames_of(chunks):
    """Yields single uint8 RGB frames [H, W, 3] (numpy) from chunks [n, H, W, 3] (tensors or arrays)."""
    for chunk in chunks:
        yield from np.asarray(chunk, dtype=np.uint8)


def frame_durations_ms(count, fps, granularity_ms=1):
    """Per-frame display times for formats that store them in steps of `granularity_ms` (GIF: 10 ms).

    Each frame ends at its exact time rounded to the step, so the video keeps `fps` on average instead of
    drifting (a 24 fps GIF alternates 40 and 50 ms rather than playing at 25 fps)."""
    ends = [round((k + 1) * 1000 / fps / granularity_ms) * granularity_ms for k in range(count)]
    return [max(granularity_ms, end - start) for start, end in zip([0] + ends[:-1], ends)]


def h264_available():
    """Whether this PyAV build can encode H.264 (ComfyUI's wheels bundle libx264)."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        return True
    except Exception:  # av.codec.UnknownCodecError, or a build without the encoder table entry
        return False


PIXEL_FORMATS = ("yuv420p", "yuv444p")  # 4:2:0 plays everywhere; 4:4:4 keeps colour edges, fewer players


def _encode_audio(container, stream, waveform, seconds):
    """Encodes `waveform` [channels, samples] into the AAC `stream`, cut to `seconds`."""
    import av

    waveform = waveform[:stream.channels, :math.ceil(stream.rate * seconds)].float().cpu()
    frame = av.AudioFrame.from_ndarray(waveform.t().reshape(1, -1).contiguous().numpy(), format="flt",
                                       layout="mono" if waveform.shape[0] == 1 else "stereo")
    frame.sample_rate, frame.pts = stream.rate, 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_mp4(path, chunks, fps, codec="auto", crf=19, pix_fmt="yuv420p", audio=None, metadata=None):
    """Writes frames to an MP4 at `fps`; returns the codec used ('h264', or 'mpeg4' where H.264 is missing).

    `audio` (waveform [channels, samples], sample rate) is muxed as AAC, cut to the video's length; `metadata`
    {key: text} goes into the container's tags, where ComfyUI's frontend reads `prompt` and `workflow` back."""
    import av

    if pix_fmt not in PIXEL_FORMATS:
        raise VideoError(f"pix_fmt is '{pix_fmt}': use one of {', '.join(PIXEL_FORMATS)}")
    if codec == "auto":
        codec = "h264" if h264_available() else "mpeg4"
        if codec == "mpeg4":
            log.warning("this PyAV build has no H.264 encoder: writing '%s' as MPEG-4 part 2, which some "
                        "browsers do not play", os.path.basename(path))
    frames = _frames_of(chunks)
    first = next(frames, None)
    if first is None:
        raise VideoError(f"no frames to write to '{os.path.basename(path)}'")
    height, width = first.shape[0] // 2 * 2, first.shape[1] // 2 * 2  # 4:2:0 needs even sides
    count = 0
    # use_metadata_tags: free-form keys (prompt, workflow) as the stock Save Video writes them
    with av.open(str(path), mode="w", options={"movflags": "use_metadata_tags"}) as container:
        for key, value in (metadata or {}).items():
            container.metadata[key] = value
        stream = container.add_stream("libx264" if codec == "h264" else "mpeg4",
                                      rate=Fraction(round(fps * 1000), 1000))
        stream.width, stream.height = width, height
        sound = None
        if audio is not None and audio[0].shape[-1] > 0:  # every stream exists before the first packet
            sound = container.add_stream("aac", rate=int(audio[1]),
                                         layout="mono" if audio[0].shape[0] == 1 else "stereo")
        stream.pix_fmt = pix_fmt if codec == "h264" else "yuv420p"
        if codec == "h264":
            stream.options = {"crf": str(crf)}
        else:
            stream.bit_rate = int(width * height * fps * 0.6)  # about CRF 19's size at SD resolutions
        for frame in itertools.chain([first], frames):
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width, :3]), format="rgb24")
            container.mux(stream.encode(image))
            count += 1
        container.mux(stream.encode(None))
        if sound is not None:  # AAC in MP4: mono or stereo
            _encode_audio(container, sound, audio[0], count / fps)
    return codec


def webp_exif(image, metadata):
    """EXIF for an animated WEBP holding `metadata` as ComfyUI's Save Animated WEBP stores it: "key:text" strings,
    `prompt` in tag 0x0110 and the others from 0x010F down, which the frontend reads back."""
    exif = image.getexif()
    tag = 0x010F
    for key, value in (metadata or {}).items():
        if key == "prompt":
            exif[0x0110] = f"prompt:{value}"
        else:
            exif[tag] = f"{key}:{value}"
            tag -= 1
    return exif


def write_animated(path, chunks, fps, format="webp", quality=90, loop=0, metadata=None):
    """Writes frames to an animated WEBP or GIF at `fps` with Pillow; `loop` plays it that many times (0: forever).

    WEBP gets `metadata` {key: text} as EXIF (webp_exif); GIF has no place ComfyUI's frontend reads it from."""
    if loop < 0:
        raise VideoError(f"loop_count is {loop}: use 0 (loop forever) or a number of plays")
    images = [Image.fromarray(np.ascontiguousarray(frame[..., :3])) for frame in _frames_of(chunks)]
    if not images:
        raise VideoError(f"no frames to write to '{os.path.basename(path)}'")
    durations = frame_durations_ms(len(images), fps, 10 if format == "gif" else 1)
    if format == "webp":  # WEBP stores plays (0: forever)
        options = {"quality": quality, "method": 4, "exif": webp_exif(images[0], metadata), "loop": loop}
    else:
        options = {"disposal": 1, "optimize": False}
        if loop != 1:  # GIF stores repeats after the first play, and no loop block plays once
            options["loop"] = loop - 1 if loop else 0
    images[0].save(path, format=format.upper(), save_all=True, append_images=images[1:], duration=durations,
                   **options)
