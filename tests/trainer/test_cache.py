"""`cache`: stored latents and text embeddings equal on-the-fly encoding; sharded over ranks; resumable."""
import pytest
import torch

from trainer import cache, shards
from trainer.config import Config, ConfigError, from_dict
from trainer.data import DataError, build_loader, index_dataset, sample_rng
from trainer.sd15 import load_base_model
from trainer.synthetic_videos import write_synthetic_videos


def config(root, out="cache", **cache_kw) -> Config:
    return from_dict(Config, {
        "run": {"write_tiny_models": True, "device": "cpu"},
        "model": {"teacher": str(root / "teacher.safetensors")},
        "ranks": [{"base": str(root / "base.safetensors"), "dataset": "cached"}],
        "data": {"size": 16, "frames": 4, "frame_stride": 2, "hflip": False, "seed": 3, "datasets": {
            "videos": {"kind": "folder", "path": str(root / "videos")},
            "cached": {"kind": "cached", "path": str(root / out)}}},
        "cache": {"dataset": "videos", "output": str(root / out), "shard_size": 3, "batch_size": 2,
                  "latent_dtype": "float32", **cache_kw}})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_synthetic_videos(root / "videos", 7, 12, (24, 16), seed=0)
    (root / "videos/clip_0004.mp4").write_bytes(b"broken")
    cache.main(config(root))
    return root


def test_cached_latents_and_embeddings_equal_on_the_fly_encoding(root):
    cfg = config(root)
    base = load_base_model(root / "base.safetensors")
    source, _ = index_dataset("videos", cfg.data.datasets["videos"], cfg.data)
    listed = shards.read_manifests(root / "cache")
    assert [r["index"] for rs in listed.values() for r in rs] == [0, 1, 2, 3, 5, 6]  # clip_0004 skipped
    for name, records in listed.items():
        for row, record in enumerate(records):
            stored = shards.read_row(root / "cache" / name, ("latents", "text_embeddings"), row)
            example = source.load(record["index"], sample_rng(cfg.data.seed, 0, record["index"]), hflip=False)
            assert record["sample_id"] == example.sample_id and record["prompt"] == example.prompt
            torch.testing.assert_close(stored["latents"], base.encode_video(example.pixels[None])[0],
                                       rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(stored["text_embeddings"], base.encode_prompts([example.prompt])[0],
                                       rtol=1e-6, atol=1e-6)


def test_cached_loader_gives_the_batches_of_the_video_loader(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    write_synthetic_videos(root / "videos", 4, 12, (24, 16), seed=1)
    cfg = config(root)
    cache.main(cfg)
    base = load_base_model(root / "base.safetensors")
    videos = build_loader(cfg.data, "videos", 0, 1, base, batch_size=2)
    cached = build_loader(cfg.data, "cached", 0, 1, base, batch_size=2)
    for _ in range(2):  # epoch 0 of both visits the same order, and the cache holds epoch 0's clips
        a, b = next(videos), next(cached)
        assert a.prompts == b.prompts
        torch.testing.assert_close(a.latents, b.latents, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b.text_embeddings, base.encode_prompts(a.prompts), rtol=1e-6, atol=1e-6)
    assert videos.state_dict()["position"] == cached.state_dict()["position"] == 4


def test_two_ranks_split_the_shards_and_reruns_skip_finished_ones(root):
    cfg = config(root, "split")
    for rank in (0, 1):
        cache.main(cfg, rank, 2)
    assert sorted(shards.read_manifests(root / "split")) == sorted(shards.read_manifests(root / "cache"))
    assert [line.count('"shard"') for line in (root / "split/manifest-00001.jsonl").read_text().splitlines()] == [1]
    for name in shards.read_manifests(root / "cache"):
        assert (root / "split" / name).read_bytes() == (root / "cache" / name).read_bytes()
    before = {p.name: p.stat().st_mtime_ns for p in (root / "split").iterdir()}
    cache.main(cfg, 0, 1)  # everything listed: nothing is recomputed or appended
    assert {p.name: p.stat().st_mtime_ns for p in (root / "split").iterdir()} == before


def test_stored_mirror_latents_are_the_encoding_of_the_mirrored_clip(root):
    cfg = config(root, "flipped", store_flipped=True, shard_size=8)
    cfg.data.datasets["videos"].max_items = 2
    cache.main(cfg)
    base = load_base_model(root / "base.safetensors")
    source, _ = index_dataset("videos", cfg.data.datasets["videos"], cfg.data)
    stored = shards.read_row(root / "flipped/cache-000000.safetensors", ("latents", "latents_flipped"), 1)
    pixels = source.load(1, sample_rng(cfg.data.seed, 0, 1), hflip=False).pixels
    torch.testing.assert_close(stored["latents_flipped"], base.encode_video(pixels.flip(-1)[None])[0],
                               rtol=1e-6, atol=1e-6)
    assert not torch.allclose(stored["latents_flipped"], stored["latents"].flip(-1), atol=1e-3)


def test_cache_errors_name_the_setting(root):
    cfg = config(root)
    cfg.cache.dataset = "cached"
    with pytest.raises(ConfigError, match="cache.dataset: 'cached' is of kind 'cached'; only video kinds"):
        cache.main(cfg)
    cfg = config(root)
    cfg.ranks.append(type(cfg.ranks[0])(base="other.safetensors", dataset="videos"))
    with pytest.raises(DataError, match="set cache.base"):
        cache.cache_base(cfg)
    cfg.cache.base = "chosen.safetensors"
    assert cache.cache_base(cfg) == "chosen.safetensors"
