"""ClipLoader: per-rank disjoint shards, epoch reshuffles, exact resume, counted skips, clear errors."""
import logging
import shutil
from types import SimpleNamespace

import pytest
import torch

from trainer.data import Batch, DataConfig, DataError, DatasetConfig, build_loader, dataset_shard
from trainer.sd15 import load_base_model, write_tiny_base_model
from trainer.synthetic_videos import write_synthetic_videos


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return load_base_model(write_tiny_base_model(tmp_path_factory.mktemp("base") / "tiny.safetensors"))


def data_config(path, kind="folder", **kw) -> DataConfig:
    return DataConfig(datasets={"clips": DatasetConfig(kind, str(path))}, frames=4, frame_stride=2, size=16, **kw)


def videos(samples: list[Batch]) -> list[str]:
    return [sid.split("@")[0] for b in samples for sid in b.sample_ids]


def take(loader, n: int) -> list[Batch]:
    return [next(loader) for _ in range(n)]


def test_two_ranks_read_disjoint_samples_whose_union_is_the_dataset(tmp_path, base):
    folder = write_synthetic_videos(tmp_path, 6, 10, 16, seed=0)
    data = data_config(folder)
    ranks = [build_loader(data, "clips", r, 2, base, batch_size=1) for r in range(2)]
    epoch0 = [videos(take(loader, 3)) for loader in ranks]
    assert not set(epoch0[0]) & set(epoch0[1])
    assert sorted(epoch0[0] + epoch0[1]) == sorted(str(p) for p in folder.glob("*.mp4"))
    epoch1 = [videos(take(loader, 3)) for loader in ranks]
    assert not set(epoch1[0]) & set(epoch1[1]) and sorted(epoch1[0] + epoch1[1]) == sorted(epoch0[0] + epoch0[1])
    assert epoch1 != epoch0  # epoch 1 reshuffles (seed + 1)
    assert all(loader.state_dict()["epoch"] == 1 for loader in ranks)


def test_ranks_table_splits_a_dataset_over_the_ranks_that_use_it(tmp_path, base):
    table = [SimpleNamespace(dataset="webvid"), SimpleNamespace(dataset="anime"), SimpleNamespace(dataset="webvid")]
    # 6 ranks replicate the 3-entry table: webvid on ranks 0, 2, 3, 5.
    assert [dataset_shard(table, r, 6, "webvid") for r in (0, 2, 3, 5)] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert dataset_shard(table, 4, 6, "anime") == (1, 2)
    with pytest.raises(DataError, match="rank 1 is not assigned dataset 'webvid'"):
        dataset_shard(table, 1, 6, "webvid")
    folder = write_synthetic_videos(tmp_path, 4, 10, 16, seed=0)
    data = DataConfig(datasets={"webvid": DatasetConfig("folder", str(folder)),
                                "anime": DatasetConfig("folder", str(folder))}, frames=4, frame_stride=2, size=16)
    loaders = [build_loader(data, "webvid", r, 3, base, 1, ranks=table) for r in (0, 2)]
    assert [(lo.shard, lo.num_shards) for lo in loaders] == [(0, 2), (1, 2)]
    seen = [videos(take(lo, 2)) for lo in loaders]
    assert sorted(seen[0] + seen[1]) == sorted(str(p) for p in folder.glob("*.mp4"))


def test_batches_hold_vae_latents_of_the_clips(tmp_path, base):
    folder = write_synthetic_videos(tmp_path, 3, 10, (24, 16), seed=0)
    data = data_config(folder, hflip=False)
    batch = next(build_loader(data, "clips", 0, 1, base, batch_size=2))
    assert batch.latents.shape == (2, 4, 4, 2, 2) and batch.latents.dtype == torch.float32
    assert batch.text_embeddings is None and len(batch.prompts) == 2
    for prompt, sid in zip(batch.prompts, batch.sample_ids):
        assert (tmp_path / sid.split("@")[0]).with_suffix(".txt").read_text() == prompt


def test_resume_continues_with_exactly_the_next_batch(tmp_path, base):
    folder = write_synthetic_videos(tmp_path, 5, 12, 16, seed=0)
    (folder / "clip_0003.mp4").write_bytes(b"corrupt")  # skips are part of the position too
    straight = build_loader(data_config(folder, prefetch=3), "clips", 0, 1, base, batch_size=2)
    take(straight, 3)
    state = straight.state_dict()
    expected = take(straight, 4)  # crosses into epochs 2 and 3
    # Resumed without background loading: prefetching never changes what is read.
    resumed = build_loader(data_config(folder, prefetch=0), "clips", 0, 1, base, batch_size=2)
    resumed.load_state_dict(state)
    got = take(resumed, 4)
    for a, b in zip(expected, got):
        assert a.sample_ids == b.sample_ids and a.prompts == b.prompts and torch.equal(a.latents, b.latents)
    assert resumed.state_dict() == straight.state_dict()
    assert straight.stats["unreadable"] >= 2 and straight.state_dict()["epoch"] >= 2


def test_resume_refuses_a_changed_dataset(tmp_path, base):
    folder = write_synthetic_videos(tmp_path, 4, 10, 16, seed=0)
    state = build_loader(data_config(folder), "clips", 0, 1, base).state_dict()
    write_synthetic_videos(tmp_path, 5, 10, 16, seed=0)
    with pytest.raises(DataError, match="4 samples as shard 0 of 1, this run reads 'clips' with 5"):
        build_loader(data_config(folder), "clips", 0, 1, base).load_state_dict(state)


def test_bad_files_are_skipped_and_counted(tmp_path, base, caplog):
    folder = write_synthetic_videos(tmp_path, 3, 10, 16, seed=0)
    write_synthetic_videos(tmp_path / "short", 1, 4, 16, seed=1)  # 4 frames < the clip's span of 7
    shutil.move(tmp_path / "short/clip_0000.mp4", folder / "short.mp4")
    shutil.move(tmp_path / "short/clip_0000.txt", folder / "short.txt")
    good = (folder / "clip_0001.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (folder / "truncated.txt").write_text("half a file")
    (folder / "noise.mp4").write_bytes(torch.randint(0, 255, (3000,), generator=torch.Generator().manual_seed(0))
                                       .byte().numpy().tobytes())
    (folder / "noise.txt").write_text("random bytes")
    shutil.copy(folder / "clip_0002.mp4", folder / "uncaptioned.mp4")
    loader = build_loader(data_config(folder), "clips", 0, 1, base, batch_size=1)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        seen = videos(take(loader, 6))  # two epochs of the 3 good videos
    assert sorted(set(seen)) == sorted(str(folder / f"clip_000{i}.mp4") for i in range(3))
    assert loader.stats["no_caption"] == 1 and loader.stats["loaded"] == 6
    assert loader.stats["too_short"] >= 1 and loader.stats["unreadable"] >= 2
    assert any("skipped (too short)" in r.message and "short.mp4" in r.message for r in caplog.records)
    assert "unreadable" in loader.skip_summary()


def test_nothing_usable_raises_data_error_naming_the_path(tmp_path, base):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"'clips' \\(folder at {empty}\\) has no usable samples"):
        build_loader(data_config(empty), "clips", 0, 1, base)
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"v{i}.mp4").write_bytes(b"\x00" * 100)
        (broken / f"v{i}.txt").write_text("caption")
    with pytest.raises(DataError, match="none of the 3 samples of shard 0/1 is usable \\(3 unreadable\\)"):
        build_loader(data_config(broken), "clips", 0, 1, base)
    with pytest.raises(DataError, match="is not an existing folder"):
        build_loader(data_config(tmp_path / "missing"), "clips", 0, 1, base)
    with pytest.raises(DataError, match="'other' is not defined"):
        build_loader(data_config(empty), "other", 0, 1, base)
    with pytest.raises(DataError, match="'tar' is not one of"):
        build_loader(DataConfig(datasets={"t": DatasetConfig(kind="tar", path=str(tmp_path))}), "t", 0, 1, base)


def test_synthetic_kind_writes_its_videos_first(tmp_path, base):
    data = DataConfig(datasets={"s": DatasetConfig("synthetic", str(tmp_path / "s"), synthetic_count=3)},
                      frames=4, frame_stride=2, size=16)
    batch = next(build_loader(data, "s", 0, 1, base, batch_size=3))
    assert batch.latents.shape == (3, 4, 4, 2, 2) and len(list((tmp_path / "s").glob("*.mp4"))) == 3
