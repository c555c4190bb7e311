"""Clip sampling arithmetic, decoding, crops, flips and caption pairing on synthetic opencv videos."""
import numpy as np
import pytest
import torch

from lightning_core.video import fit
from trainer.data import DataConfig, DataError, DatasetConfig, Skip, index_dataset, sample_rng
from trainer.synthetic_videos import decode_frame_index, is_mirrored, write_synthetic_videos
from trainer.video_clips import (ClipTooShort, VideoReadError, clip_frame_indices, clip_span, count_frames,
                                 frames_to_pixels, num_clip_starts, read_frames)


def as_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[f, 3, H, W] in [-1, 1] -> uint8 [f, H, W, 3]."""
    return ((pixels.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def test_clip_arithmetic():
    assert clip_span(16, 4) == 61  # the paper's 16 frames at AnimateDiff's stride 4
    assert num_clip_starts(61, 16, 4) == 1 and num_clip_starts(60, 16, 4) == 0 and num_clip_starts(70, 16, 4) == 10
    assert clip_frame_indices(3, 4, 2) == [3, 5, 7, 9]
    assert clip_frame_indices(0, 3, 1) == [0, 1, 2]


@pytest.mark.parametrize("codec", ["mp4v", "FFV1"])
def test_read_frames_returns_exactly_the_requested_frames(tmp_path, codec):
    folder = write_synthetic_videos(tmp_path, 1, 30, (48, 32), seed=3, codec=codec)
    video = next(folder.glob("clip_0000.*"))
    assert count_frames(video) == 30
    wanted = clip_frame_indices(5, 6, 4)  # 5, 9, ..., 25
    frames = read_frames(video, wanted)
    assert frames.shape == (6, 32, 48, 3) and frames.dtype == np.uint8
    assert [decode_frame_index(f) for f in frames] == wanted
    assert not any(is_mirrored(f) for f in frames)
    with pytest.raises(ClipTooShort, match="needs frame 30"):
        read_frames(video, [0, 30])


def test_unreadable_files_raise_video_read_error(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    for path in (garbage, tmp_path / "missing.mp4"):
        with pytest.raises(VideoReadError, match=path.name):
            count_frames(path)


def test_resize_then_centre_crop_geometry():
    """The training loader resizes and crops with the video loader node's `fit` (one rule for both)."""
    # A 60 x 90 frame whose value is the column index rounded down to even: area-halving is exact on it.
    wide = np.repeat((np.arange(90) // 2 * 2).astype(np.uint8)[None, :, None], 60, axis=0).repeat(3, axis=2)
    out = fit(wide, (30, 30))  # -> 30 x 45, cut 7 columns on the left
    assert out.shape == (30, 30, 3)
    assert out[0, :, 0].tolist() == [2 * (j + 7) for j in range(30)]
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))  # 90 x 60: crops rows instead
    assert fit(tall, (30, 30))[:, 0, 0].tolist() == [2 * (j + 7) for j in range(30)]
    same = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(fit(same, (16, 16)), same)  # already the size: untouched


def test_pixels_range_and_horizontal_flip(tmp_path):
    folder = write_synthetic_videos(tmp_path, 1, 12, (48, 32), seed=0, codec="FFV1")
    frames = read_frames(folder / "clip_0000.mkv", [0, 4, 8])
    plain, flipped = frames_to_pixels(frames, 16, False), frames_to_pixels(frames, 16, True)
    assert plain.shape == (3, 3, 16, 16) and plain.dtype == torch.float32
    assert plain.min() >= -1 and plain.max() <= 1 and plain.min() < -0.9 and plain.max() > 0.9
    assert torch.equal(flipped, plain.flip(-1))
    assert [decode_frame_index(f) for f in as_uint8(plain)] == [0, 4, 8]  # the code survives 48x32 -> 16x16
    assert not is_mirrored(as_uint8(plain)[0]) and is_mirrored(as_uint8(flipped)[0])


def test_video_source_draws_start_and_flip_from_seed_epoch_and_index(tmp_path):
    folder = write_synthetic_videos(tmp_path, 2, 40, (48, 32), seed=0)
    data = DataConfig(datasets={"v": DatasetConfig("folder", str(folder))}, frames=5, frame_stride=3, size=16)
    source, _ = index_dataset("v", data.datasets["v"], data)
    seen = set()
    for epoch in range(6):
        example = source.load(1, sample_rng(7, epoch, 1), hflip=True)
        rng = sample_rng(7, epoch, 1)
        start = int(rng.integers(num_clip_starts(40, 5, 3)))
        flip = bool(rng.random() < 0.5)
        assert example.sample_id == f"{folder / 'clip_0001.mp4'}@{start}{'/flip' if flip else ''}"
        frames = as_uint8(example.pixels)
        assert [decode_frame_index(f[:, ::-1] if flip else f) for f in frames] == clip_frame_indices(start, 5, 3)
        assert all(is_mirrored(f) == flip for f in frames)
        seen.add((start, flip))
    assert len(seen) > 2  # epochs draw new starts and flips
    again = source.load(1, sample_rng(7, 3, 1), hflip=True)
    assert torch.equal(again.pixels, source.load(1, sample_rng(7, 3, 1), hflip=True).pixels)


def test_too_short_video_is_a_counted_skip(tmp_path):
    folder = write_synthetic_videos(tmp_path, 1, 8, 32, seed=0)
    data = DataConfig(datasets={"v": DatasetConfig("folder", str(folder))}, frames=4, frame_stride=3, size=16)
    source, _ = index_dataset("v", data.datasets["v"], data)
    with pytest.raises(Skip) as skip:
        source.load(0, sample_rng(0, 0, 0), hflip=False)
    assert skip.value.reason == "too_short" and "10 frames" in str(skip.value)


def test_folder_pairs_each_video_with_its_caption(tmp_path):
    write_synthetic_videos(tmp_path / "nested", 2, 4, 16, seed=0)
    write_synthetic_videos(tmp_path, 3, 4, 16, seed=1)
    (tmp_path / "clip_0001.txt").unlink()  # no caption
    (tmp_path / "clip_0002.txt").write_text("  \n")  # empty caption
    (tmp_path / "notes.txt").write_text("not a caption of anything")
    data = DataConfig(datasets={"v": DatasetConfig("folder", str(tmp_path))}, size=16)
    source, skipped = index_dataset("v", data.datasets["v"], data)
    names = [(str(p.relative_to(tmp_path)), c) for p, c in source.entries]
    expected = [("clip_0000.mp4", (tmp_path / "clip_0000.txt").read_text()),
                ("nested/clip_0000.mp4", (tmp_path / "nested/clip_0000.txt").read_text()),
                ("nested/clip_0001.mp4", (tmp_path / "nested/clip_0001.txt").read_text())]
    assert names == expected and skipped["no_caption"] == 2
    assert names[0][1].startswith("a ") and "moving" in names[0][1]


def test_webvid_csv_columns_and_paths(tmp_path):
    root = tmp_path / "videos"
    csv_default = tmp_path / "results_2M_train.csv"  # WebVid's own columns: path = {page_dir}/{videoid}.mp4
    csv_default.write_text('videoid,contentUrl,duration,page_dir,name\n'
                           '1066,http://x,PT00H00M10S,011001_011050,"Aerial shot, a lake"\n'
                           '1067,http://y,PT00H00M12S,011001_011050,\n'
                           '1068,http://z,PT00H00M12S,,"No page dir"\n')
    data = DataConfig(datasets={"w": DatasetConfig("webvid_csv", str(csv_default), video_root=str(root))})
    source, skipped = index_dataset("w", data.datasets["w"], data)
    assert source.entries == [(root / "011001_011050/1066.mp4", "Aerial shot, a lake"),
                              (root / "1068.mp4", "No page dir")]
    assert skipped["no_caption"] == 1

    with_path = tmp_path / "list.csv"
    with_path.write_text("videoid,name,path\n7,a dog,sub/dog.webm\n")
    data.datasets["w"] = DatasetConfig("webvid_csv", str(with_path))  # video_root defaults to the CSV's folder
    assert index_dataset("w", data.datasets["w"], data)[0].entries == [(tmp_path / "sub/dog.webm", "a dog")]

    bad = tmp_path / "bad.csv"
    bad.write_text("videoid,caption\n1,x\n")
    data.datasets["w"] = DatasetConfig("webvid_csv", str(bad))
    with pytest.raises(DataError, match=r"bad\.csv has no caption column 'name'"):
        index_dataset("w", data.datasets["w"], data)
