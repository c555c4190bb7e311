"""Video in and out: selection arithmetic (no video needed), then round trips through real files made with opencv.

Test frames encode their own index so that order survives compression and resizing: the left half's gray
level is the index's high digit (base 12, steps of 64), the right half's the low digit (steps of 20).
"""

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_core import video

LOW, HIGH = 12, 4  # up to 48 frames


def frame_for(index, width=64, height=48):
    """An RGB frame [H, W, 3] whose two halves spell `index`."""
    frame = np.empty((height, width, 3), np.uint8)
    frame[:, : width // 2] = 32 + 64 * (index // LOW)
    frame[:, width // 2:] = 16 + 20 * (index % LOW)
    return frame


def index_of(frame):
    """Reads the index back from the middle of each half (robust to compression, scaling and cropping)."""
    frame = np.asarray(frame, dtype=np.float32)
    height, width = frame.shape[:2]
    rows = slice(height // 4, 3 * height // 4)
    high = frame[rows, width // 8: 3 * width // 8].mean()
    low = frame[rows, 5 * width // 8: 7 * width // 8].mean()
    return int(round((high - 32) / 64)) * LOW + int(round((low - 16) / 20))


def indices(chunks):
    return [index_of(frame) for chunk in chunks for frame in chunk.numpy()]


def write_video(path, frames, fps=10, fourcc="mp4v", size=(64, 48)):
    """Writes frames 0..frames-1 with opencv (BGR order does not matter: the frames are gray)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(frame_for(i, *size))
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """40 frames, 10 fps, 64x48, MPEG-4 part 2 in MP4."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", 40)


# ----------------------------------------------------------------------------- arithmetic

def expected_resample(source_frames, source_fps, rate):
    """Output frame k shows the source frame on screen at time k / rate, by the definition."""
    count = int(np.ceil(source_frames * rate / source_fps - 1e-9))
    return [int(np.floor(k * source_fps / rate + 1e-9)) for k in range(count)]


@pytest.mark.parametrize("source_fps,rate", [(10, 4), (10, 25), (30, 24), (29.97, 8), (24, 24), (12, 0)])
def test_resampling_shows_the_frame_on_screen_at_each_output_time(source_fps, rate):
    counts = [video.resampled_count(i, source_fps, rate) for i in range(60)]
    got = [i for i, c in enumerate(counts) for _ in range(c)]
    assert got == (expected_resample(60, source_fps, rate) if rate else list(range(60)))


def test_resampling_examples():
    assert [video.resampled_count(i, 10, 5) for i in range(6)] == [1, 0, 1, 0, 1, 0]  # halve: drop every other
    assert [video.resampled_count(i, 10, 20) for i in range(3)] == [2, 2, 2]  # double: show each twice
    assert [video.resampled_count(i, 30, 24) for i in range(5)] == [1, 1, 1, 1, 0]  # 30 -> 24 drops 1 in 5


def test_selection_order_is_skip_then_every_nth_then_cap():
    plan = video.frame_plan(10, 0, skip_first_frames=3, select_every_nth=4, frame_load_cap=3)
    picked = [i for i, c in enumerate(plan) for _ in range(c)]
    assert picked == [3, 7, 11]
    assert video.selected_count(100, 10, 0, 3, 4, 3) == 3
    assert video.selected_count(10, 10, 0, 3, 4, 0) == 2  # 3 and 7
    assert video.selected_count(10, 10, 0, 10, 1, 0) == 0  # everything skipped
    assert video.selected_count(10, 10, 20, 0, 1, 0) == 20  # force_rate counts before the selection
    assert video.selected_count(10, 10, 20, 5, 2, 0) == 8


def test_plan_stops_at_the_cap_without_reading_further():
    assert len(list(video.frame_plan(10, 0, 0, 1, 5))) == 5


def test_output_fps():
    assert video.output_fps(30, 0, 1) == 30
    assert video.output_fps(30, 12, 2) == 6


def test_output_size_keeps_the_aspect_and_multiples_of_8():
    assert video.output_size(1920, 1080, 0, 0) == (1920, 1080)
    assert video.output_size(1920, 1080, 512, 0) == (512, 288)
    assert video.output_size(1080, 1920, 512, 0) == (512, 904)  # 910.2 floored to a multiple of 8
    assert video.output_size(1920, 1080, 0, 512) == (904, 512)
    assert video.output_size(1920, 1080, 512, 512) == (512, 512)


def test_fit_covers_then_crops_the_centre():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 50:150] = 255  # a centred white square region
    out = video.fit(frame, (64, 64))
    assert out.shape == (64, 64, 3)
    assert out.min() == 255  # the 2:1 frame was scaled to 128x64 and its centre kept: all white


@pytest.mark.parametrize("value", [-8, 7, 100, 516])
def test_size_not_a_multiple_of_8_names_the_parameter(value):
    with pytest.raises(video.VideoError, match=rf"force_height is {value}.*multiple of 8"):
        video.check_size("force_height", value)


@pytest.mark.parametrize("name,kwargs", [("force_rate", dict(force_rate=-1)),
                                         ("select_every_nth", dict(select_every_nth=0)),
                                         ("frame_load_cap", dict(frame_load_cap=-1)),
                                         ("skip_first_frames", dict(skip_first_frames=-2))])
def test_bad_selection_names_the_parameter(name, kwargs):
    with pytest.raises(video.VideoError, match=name):
        video.check_selection(**kwargs)


def test_gif_durations_keep_the_average_rate():
    durations = video.frame_durations_ms(24, 24, 10)
    assert set(durations) == {40, 50} and sum(durations) == 1000
    assert video.frame_durations_ms(3, 8) == [125, 125, 125]


# ----------------------------------------------------------------------------- reading real files

def test_probe(clip):
    info = video.probe(clip)
    assert (info.frames, info.fps, info.width, info.height) == (40, 10.0, 64, 48)
    assert info.codec


def test_round_trip_keeps_count_order_size_and_chunks(clip):
    chunks = list(video.read_frames(clip, chunk=16))
    assert [c.shape for c in chunks] == [(16, 48, 64, 3), (16, 48, 64, 3), (8, 48, 64, 3)]
    assert all(c.dtype == torch.uint8 for c in chunks)
    assert indices(chunks) == list(range(40))


def test_skip_cap_every_nth_on_a_file(clip):
    chunks = video.read_frames(clip, skip_first_frames=5, select_every_nth=3, frame_load_cap=6, chunk=4)
    assert indices(chunks) == [5, 8, 11, 14, 17, 20]


@pytest.mark.parametrize("rate", [4, 25])
def test_force_rate_on_a_file(clip, rate):
    assert indices(video.read_frames(clip, force_rate=rate, chunk=100)) == expected_resample(40, 10, rate)


def test_force_rate_then_selection_on_a_file(clip):
    got = indices(video.read_frames(clip, force_rate=20, skip_first_frames=3, select_every_nth=2, frame_load_cap=4))
    assert got == [1, 2, 3, 4]  # resampled stream 0,0,1,1,2,2,...: positions 3, 5, 7, 9


@pytest.mark.parametrize("size,expected", [((32, 0), (32, 24)), ((0, 24), (32, 24)), ((32, 32), (32, 32)),
                                           ((128, 96), (128, 96))])
def test_force_size_on_a_file(clip, size, expected):
    [chunk] = video.read_frames(clip, size=size, frame_load_cap=12, chunk=12)
    assert chunk.shape == (12, expected[1], expected[0], 3)
    assert indices([chunk]) == list(range(12))


def test_missing_file(tmp_path):
    with pytest.raises(video.VideoError, match="not found.*nothing.mp4"):
        list(video.read_frames(tmp_path / "nothing.mp4"))


def test_not_a_video(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a text file, not a video\n" * 50)
    with pytest.raises(video.VideoError, match="'notes.mp4' is not a video"):
        video.probe(fake)
    with pytest.raises(video.VideoError, match="'notes.mp4' is not a video"):
        list(video.read_frames(fake))


def test_zero_frames_after_selection(clip):
    with pytest.raises(video.VideoError, match=r"no frames left in 'clip.mp4' after .*skip_first_frames=40"):
        list(video.read_frames(clip, skip_first_frames=40))


def test_unsupported_codec_names_the_file_and_codec(tmp_path):
    path = tmp_path / "av1.mkv"  # opencv's bundled FFmpeg has no AV1 decoder; PyAV's has (dav1d)
    try:
        av.codec.Codec("libsvtav1", "w")
    except Exception:
        pytest.skip("this PyAV build cannot write AV1")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libsvtav1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame_for(i), format="rgb24")))
        container.mux(stream.encode(None))
    with pytest.raises(video.VideoError, match=r"cannot decode the 'AV01' video stream of 'av1.mkv'"):
        list(video.read_frames(path))
    # the fallback the message recommends: PyAV decodes it, through the same selection
    info = video.VideoInfo(frames=4, fps=10.0, width=64, height=48, codec="av1")
    chunks = video.read_decoded(video.pyav_frames(str(path)), info, "av1.mkv", select_every_nth=2)
    assert indices(chunks) == [0, 2]


def test_read_decoded_matches_read_frames(clip):
    info = video.probe(clip)
    options = dict(force_rate=15, size=(32, 0), skip_first_frames=2, select_every_nth=2, frame_load_cap=9, chunk=4)
    from_file = torch.cat(list(video.read_frames(clip, **options)))
    decoded = torch.cat(list(video.read_decoded(video.pyav_frames(str(clip)), info, "clip.mp4", **options)))
    assert from_file.shape == decoded.shape == (9, 24, 32, 3)
    assert indices([from_file]) == indices([decoded])


def test_put_rows_fills_in_place_and_grows_when_the_header_undercounted():
    buffer = torch.zeros(4, 2)
    same = video.put_rows(buffer, 0, torch.ones(3, 2))
    assert same is buffer and buffer[:3].eq(1).all() and buffer[3].eq(0).all()
    grown = video.put_rows(buffer, 3, torch.full((3, 2), 2.0))  # 6 rows into a buffer of 4
    assert grown.shape[0] >= 6 and grown[:3].eq(1).all() and grown[3:6].eq(2).all()


# ----------------------------------------------------------------------------- writing

def frames_chunks(count, size=(64, 48)):
    return [torch.from_numpy(np.stack([frame_for(i, *size) for i in range(s, min(s + 8, count))]))
            for s in range(0, count, 8)]


@pytest.mark.parametrize("codec", ["auto", "mpeg4"])
def test_write_mp4_round_trip(tmp_path, codec):
    path = tmp_path / "out.mp4"
    used = video.write_mp4(path, frames_chunks(20), fps=12.5, codec=codec)
    assert used == ("h264" if codec == "auto" and video.h264_available() else "mpeg4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == used
        assert float(stream.average_rate) == 12.5
    info = video.probe(path)
    assert (info.frames, info.width, info.height) == (20, 64, 48)
    assert indices(video.read_frames(path)) == list(range(20))


def test_write_mp4_crops_odd_sizes_to_even(tmp_path):
    path = tmp_path / "odd.mp4"
    video.write_mp4(path, [torch.from_numpy(np.stack([frame_for(i, 65, 49) for i in range(3)]))], fps=8)
    assert (video.probe(path).width, video.probe(path).height) == (64, 48)


@pytest.mark.parametrize("fmt", ["webp", "gif"])
def test_write_animated_round_trip(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    video.write_animated(path, frames_chunks(24), fps=24, format=fmt)
    with Image.open(path) as image:
        assert image.n_frames == 24 and image.size == (64, 48)
        durations, got = [], []
        for k in range(24):
            image.seek(k)
            got.append(index_of(image.convert("RGB")))  # loads the frame, which sets its duration (WEBP)
            durations.append(image.info["duration"])
    assert got == list(range(24))
    assert sum(durations) == 1000  # 24 frames at 24 fps: one second, with GIF's 10 ms steps too


def test_write_nothing_is_an_error(tmp_path):
    with pytest.raises(video.VideoError, match="no frames to write to 'empty.gif'"):
        video.write_animated(tmp_path / "empty.gif", [], fps=8, format="gif")


def sine_audio(seconds=4.0, rate=16000):
    """A stereo test tone: 440 Hz left, 220 Hz right, as (waveform [2, samples], rate)."""
    t = torch.arange(int(seconds * rate)) / rate
    return torch.stack([torch.sin(2 * np.pi * 440 * t), torch.sin(2 * np.pi * 220 * t)]) * 0.5, rate


def test_write_mp4_embeds_metadata_audio_crf_and_pixel_format(tmp_path):
    metadata = {"prompt": '{"1": {"class_type": "EmptyImage"}}', "workflow": '{"nodes": []}'}
    best, small = tmp_path / "best.mp4", tmp_path / "small.mp4"
    video.write_mp4(best, frames_chunks(16), fps=8, crf=5, pix_fmt="yuv444p", audio=sine_audio(), metadata=metadata)
    video.write_mp4(small, frames_chunks(16), fps=8, crf=40)
    with av.open(str(best)) as container:
        assert {k: container.metadata[k] for k in metadata} == metadata  # where the frontend reads them
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"
        audio = container.streams.audio[0]
        assert (audio.codec_context.name, audio.channels, audio.rate) == ("aac", 2, 16000)
    with av.open(str(small)) as container:
        assert not container.streams.audio and container.streams.video[0].codec_context.pix_fmt == "yuv420p"
    assert best.stat().st_size > small.stat().st_size
    waveform, rate = video.read_audio(best)
    assert rate == 16000 and waveform.shape[0] == 2
    assert 2.0 * rate <= waveform.shape[1] <= 2.0 * rate + 1024  # cut to the video's 2 s (plus AAC's last frame)
    with pytest.raises(video.VideoError, match="pix_fmt is 'rgb24'"):
        video.write_mp4(tmp_path / "bad.mp4", frames_chunks(2), fps=8, pix_fmt="rgb24")


def test_read_audio_cuts_the_selected_span(tmp_path):
    path = tmp_path / "tone.mp4"
    video.write_mp4(path, frames_chunks(32), fps=8, audio=sine_audio())
    whole, rate = video.read_audio(path)
    part, _ = video.read_audio(path, start=1.0, duration=0.5)
    assert part.shape == (2, rate // 2) and torch.equal(part, whole[:, rate:rate + rate // 2])
    left = part[0].numpy()
    spectrum = np.abs(np.fft.rfft(left))
    assert abs(np.argmax(spectrum) * rate / len(left) - 440) < 5  # the left channel's tone survived AAC
    assert video.selection_time_span(30.0, force_rate=10.0, skip_first_frames=5, frames=20, fps=5.0) == (0.5, 4.0)


def test_a_video_without_sound_has_no_audio(tmp_path):
    path = tmp_path / "silent.mp4"
    video.write_mp4(path, frames_chunks(4), fps=8)
    assert video.read_audio(path) is None


@pytest.mark.parametrize("fmt, loop, stored", [("webp", 0, 0), ("webp", 3, 3), ("gif", 0, 0), ("gif", 3, 2),
                                               ("gif", 1, None)])
def test_loop_count_is_the_number_of_plays(tmp_path, fmt, loop, stored):
    # WEBP's ANIM chunk counts plays; GIF's NETSCAPE block counts repeats after the first, and none plays once
    path = tmp_path / f"loop.{fmt}"
    video.write_animated(path, frames_chunks(3), fps=8, format=fmt, loop=loop)
    with Image.open(path) as image:
        assert image.info.get("loop") == stored


def test_webp_holds_the_workflow_as_comfyuis_exif(tmp_path):
    path = tmp_path / "with_workflow.webp"
    video.write_animated(path, frames_chunks(3), fps=8, format="webp",
                         metadata={"prompt": '{"p": 1}', "workflow": '{"w": 2}'})
    with Image.open(path) as image:
        exif = image.getexif()
    assert exif[0x0110] == 'prompt:{"p": 1}' and exif[0x010F] == 'workflow:{"w": 2}'
