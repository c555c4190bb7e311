"""The video loading nodes in the real server: frames, count and fps; LATENT equal to stock VAE Encode; clear
errors; and streamed loading's peak memory, measured in a subprocess.

(Named test_video_nodes.py: pytest's default import mode needs test file names unique across folders without
__init__.py, and tests/lightning_core/test_video.py exists.)
"""

import gc
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from host import output_files
from host.comfy_server import PromptRejected

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
LOW = 12  # frames spell their index: left half high digit (steps of 64), right half low digit (steps of 20)


def frame_for(index, width, height):
    frame = np.empty((height, width, 3), np.uint8)
    frame[:, : width // 2] = 32 + 64 * (index // LOW)
    frame[:, width // 2:] = 16 + 20 * (index % LOW)
    return frame


def index_of(frame):
    frame = np.asarray(frame, dtype=np.float32)
    height, width = frame.shape[:2]
    rows = slice(height // 4, 3 * height // 4)
    high, low = frame[rows, width // 8: 3 * width // 8].mean(), frame[rows, 5 * width // 8: 7 * width // 8].mean()
    return int(round((high - 32) / 64)) * LOW + int(round((low - 16) / 20))


def write_video(path, frames, fps=10, size=(96, 64), spell=True):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    rng = np.random.default_rng(0)
    for i in range(frames):
        writer.write(frame_for(i % 48, *size) if spell else rng.integers(0, 256, (size[1], size[0], 3), np.uint8))
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(comfy_base):
    """clip.mp4 in the server's input folder: 30 frames, 10 fps, 96x64."""
    return write_video(comfy_base / "input" / "clip.mp4", 30).name


def load(file, node="ADL_LoadVideo", **overrides):
    inputs = dict(file=file, force_rate=0.0, force_width=0, force_height=0, frame_load_cap=0, skip_first_frames=0,
                  select_every_nth=1)
    inputs.update(overrides)
    return {"class_type": node, "inputs": inputs}


def saved_frames(comfy_base, result, node_id):
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(output_files(comfy_base, result, node_id))]


def saved_latent(comfy_base, result, node_id):
    [path] = output_files(comfy_base, result, node_id)
    return load_file(str(path))["latent_tensor"]


def test_load_video_frames_count_and_fps(comfy, comfy_base, clip):
    prompt = {
        "1": load(clip, force_rate=20.0, force_width=64, force_height=64, skip_first_frames=3, select_every_nth=2,
                  frame_load_cap=9),
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "adl_video/frames"}},
        # count and fps come back through stock nodes: a latent batch of frame_count, an MP4 at fps
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": ["1", 1]}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "adl_video/count"}},
        "5": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": ["1", 2]}},
        "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 0], "filename_prefix": "adl_video/fps",
                                                    "format": "auto", "codec": "auto"}},
    }
    result = comfy.run(prompt, timeout=120).raise_for_error()
    frames = saved_frames(comfy_base, result, "2")
    assert [f.shape for f in frames] == [(64, 64, 3)] * 9
    # 20 fps from 10 shows each source frame twice; positions 3, 5, 7, ... of that stream
    assert [index_of(f) for f in frames] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert saved_latent(comfy_base, result, "4").shape[0] == 9
    [mp4] = output_files(comfy_base, result, "6")
    with av.open(str(mp4)) as container:
        assert float(container.streams.video[0].average_rate) == 10.0  # 20 fps / select_every_nth 2


def test_latent_equals_stock_vae_encode_of_the_image_output(comfy, comfy_base, clip, tiny_checkpoint):
    selection = dict(force_width=64, force_height=64, skip_first_frames=1, frame_load_cap=10)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint}},
        "2": load(clip, "ADL_LoadVideoLatent", vae=["1", 2], frames_per_chunk=4, **selection),
        "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": "adl_video/chunked"}},
        "4": load(clip, **selection),
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "adl_video/stock"}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": ["2", 1]}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "adl_video/count"}},
        # one chunk holding every frame: the very call stock VAE Encode makes (its batch is all frames on CPU)
        "9": load(clip, "ADL_LoadVideoLatent", vae=["1", 2], frames_per_chunk=64, **selection),
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "adl_video/one"}},
    }
    result = comfy.run(prompt, timeout=300).raise_for_error()
    chunked, stock = saved_latent(comfy_base, result, "3"), saved_latent(comfy_base, result, "6")
    one_chunk = saved_latent(comfy_base, result, "10")
    assert chunked.shape == stock.shape == one_chunk.shape == (10, 4, 8, 8)
    assert stock.std() > 0.01  # a real encoding, not zeros
    torch.testing.assert_close(one_chunk, stock, rtol=0, atol=0)
    # smaller batches change only float32 summation order in the convolutions (measured: 3e-5 at most)
    torch.testing.assert_close(chunked, stock, rtol=0, atol=1e-4)
    assert saved_latent(comfy_base, result, "8").shape[0] == 10


def test_stock_video_input(comfy, comfy_base, clip):
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": clip}},
        "2": load("", select_every_nth=3, frame_load_cap=5, video=["1", 0]),
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "adl_video/stock_in"}},
        # a VIDEO made from frames in memory (stock Create Video) works too
        "4": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 4.0}},
        "5": load("", skip_first_frames=1, video=["4", 0]),
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "adl_video/components"}},
    }
    result = comfy.run(prompt, timeout=120).raise_for_error()
    assert [index_of(f) for f in saved_frames(comfy_base, result, "3")] == [0, 3, 6, 9, 12]
    assert [index_of(f) for f in saved_frames(comfy_base, result, "6")] == [3, 6, 9, 12]


@pytest.mark.parametrize("fmt", ["mp4 (H.264)", "webp", "gif"])
def test_save_video_keeps_frames_order_and_the_loaders_fps(comfy, comfy_base, clip, fmt):
    prompt = {
        "1": load(clip, force_width=64, force_height=64, select_every_nth=2, frame_load_cap=12),  # 5 fps
        "2": {"class_type": "ADL_SaveVideo", "inputs": {"images": ["1", 0], "fps": ["1", 2], "format": fmt,
                                                        "filename_prefix": "adl_video/saved"}},
    }
    result = comfy.run(prompt, timeout=120).raise_for_error()
    [path] = output_files(comfy_base, result, "2")
    assert path.suffix == "." + fmt.split()[0] and path.is_relative_to(comfy_base / "output" / "adl_video")
    expected = list(range(0, 24, 2))
    if fmt.startswith("mp4"):
        assert "images" in result.outputs["2"]  # the stock video preview widget reads this list
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and float(stream.average_rate) == 5.0
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    else:
        assert result.outputs["2"]["animated"] == [True]
        with Image.open(path) as image:
            frames, durations = [], []
            for k in range(image.n_frames):
                image.seek(k)
                frames.append(np.asarray(image.convert("RGB")))
                durations.append(image.info["duration"])
        assert sum(durations) == 12 * 200  # 12 frames at 5 fps
    assert [index_of(f) for f in frames] == expected


def rejection(comfy, loader):
    """The server's validation errors for a prompt of `loader` and a preview of its frames."""
    with pytest.raises(PromptRejected) as caught:
        comfy.queue({"1": loader, "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
    return json.dumps(caught.value.node_errors)


def test_bad_inputs_are_rejected_with_clear_errors_and_the_server_keeps_serving(comfy, comfy_base, clip):
    (comfy_base / "input" / "notes.mp4").write_text("not a video\n" * 100)
    assert "video file 'missing.mp4' is not in the input folder" in rejection(comfy, load("missing.mp4"))
    assert "'notes.mp4' is not a video file" in rejection(comfy, load("notes.mp4"))
    assert "force_width is 100: it must be 0 (source size) or a multiple of 8 (e.g. 96 or 104)" in rejection(
        comfy, load(clip, force_width=100))
    assert "select_every_nth is 0" in rejection(comfy, load(clip, select_every_nth=0))

    result = comfy.run({"1": load(clip, skip_first_frames=30),
                        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, timeout=60)
    assert not result.ok
    assert "no frames left in 'clip.mp4' after" in result.execution_error["exception_message"]
    assert "skip_first_frames=30" in result.execution_error["exception_message"]

    ok = comfy.run({"1": load(clip, frame_load_cap=2),
                    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, timeout=60)
    assert ok.ok, ok.execution_error


def test_unsupported_codec_is_an_execution_error_naming_file_and_codec(comfy, comfy_base):
    try:
        av.codec.Codec("libsvtav1", "w")
    except Exception:
        pytest.skip("this PyAV build cannot write AV1")
    path = comfy_base / "input" / "phone_av1.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libsvtav1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame_for(i, 64, 64), format="rgb24")))
        container.mux(stream.encode(None))
    result = comfy.run({"1": load(path.name), "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}},
                       timeout=60)
    assert not result.ok
    message = result.execution_error["exception_message"]
    assert "cannot decode the 'AV01' video stream of 'phone_av1.mkv'" in message and "re-encode" in message
    # the route the message offers: the stock Load Video's VIDEO, decoded with PyAV
    fixed = comfy.run({"1": {"class_type": "LoadVideo", "inputs": {"file": path.name}},
                       "2": load("", video=["1", 0]),
                       "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "adl_video/av1"}}},
                      timeout=60).raise_for_error()
    assert [index_of(f) for f in saved_frames(comfy_base, fixed, "3")] == [0, 1, 2]


def test_a_changed_file_runs_again(comfy, comfy_base):
    path = write_video(comfy_base / "input" / "changing.mp4", 4)
    prompt = {"1": load(path.name), "2": {"class_type": "EmptyLatentImage",
                                          "inputs": {"width": 16, "height": 16, "batch_size": ["1", 1]}},
              "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": "adl_video/chg"}}}
    first = comfy.run(prompt, timeout=60).raise_for_error()
    write_video(path, 6)
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
    second = comfy.run(prompt, timeout=60).raise_for_error()
    assert saved_latent(comfy_base, first, "3").shape[0] == 4
    assert saved_latent(comfy_base, second, "3").shape[0] == 6


# ----------------------------------------------------------------------------- streamed memory

SIDE, SHORT, LONG = 256, 32, 128  # frames of 256x256: 0.75 MiB each as float32
MiB = 2 ** 20


def test_streamed_loading_peak_memory_is_bounded_by_the_chunk(tmp_path):
    """Peak RSS loading 4x the frames to LATENT grows by the latent output only; loading all frames as IMAGE
    and encoding them in batches of the same size (the same measurement, to show it sees frames) by the frames."""
    write_video(tmp_path / "short.mp4", SHORT, size=(SIDE, SIDE), spell=False)
    write_video(tmp_path / "long.mp4", LONG, size=(SIDE, SIDE), spell=False)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "MALLOC_MMAP_THRESHOLD_": "131072"}  # frees go back to the OS
    out = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    latent_growth = (LONG - SHORT) * 4 * (SIDE // 8) ** 2 * 4
    frames_growth = (LONG - SHORT) * SIDE * SIDE * 3 * 4
    streamed = peaks["streamed_long"] - peaks["streamed_short"]
    load_all = peaks["load_all_long"] - peaks["streamed_long"]
    print(f"peak RSS growth, {SHORT} -> {LONG} frames: streamed {streamed / MiB:.1f} MiB "
          f"(latent grows {latent_growth / MiB:.1f} MiB); load-all {load_all / MiB:.1f} MiB "
          f"(frames grow {frames_growth / MiB:.1f} MiB); peaks {peaks}")
    assert streamed <= latent_growth + 16 * MiB
    assert load_all >= 0.8 * frames_growth


def _measure(folder):
    """Runs in the subprocess: streamed short, streamed long, then load-all long; prints the peak RSS of each."""
    sys.path.insert(0, str(TESTS))
    sys.path.append(str(REPO))  # `lightning_core` for the fixtures (tests/lightning_core is only a namespace)
    from fixtures import sd15

    sd15.import_comfy()
    import comfy.sd
    import folder_paths
    from comfy.ldm.models.autoencoder import AutoencoderKL

    folder_paths.set_input_directory(folder)
    spec = importlib.util.spec_from_file_location("adl", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    adl = importlib.util.module_from_spec(spec)
    sys.modules["adl"] = adl
    spec.loader.exec_module(adl)
    from adl.nodes.video import LoadVideo, LoadVideoLatent

    # the SD VAE's layout with 32 channels and no ResBlocks per level: same 8x downscale, cheap on CPU
    params = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                           "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 0,
                                           "attn_resolutions": [], "dropout": 0.0}}
    torch.manual_seed(0)
    vae = comfy.sd.VAE(sd=AutoencoderKL(**params).state_dict(), config={"params": params})
    selection = dict(force_rate=0.0, force_width=0, force_height=0, frame_load_cap=0, skip_first_frames=0,
                     select_every_nth=1)

    def peak_of(run):
        """Peak resident set of run(), bytes: Linux resets the process's high-water mark on '5' > clear_refs."""
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        run()
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024

    def streamed(file, frames):
        latent = LoadVideoLatent.execute(file=file, vae=vae, frames_per_chunk=16, **selection).result[0]
        assert latent["samples"].shape[0] == frames

    def load_all():
        # Load Video + VAE Encode in 16-frame batches: the whole IMAGE is held while each batch is encoded, so
        # encoding the first batch reaches that path's peak
        images = LoadVideo.execute(file="long.mp4", **selection).result[0]
        vae.encode(images[:16])

    with torch.inference_mode():  # as ComfyUI runs every node
        streamed("short.mp4", SHORT)  # warm-up: first-call allocations are not the loader's
        peaks = {"streamed_short": peak_of(lambda: streamed("short.mp4", SHORT)),
                 "streamed_long": peak_of(lambda: streamed("long.mp4", LONG)),
                 "load_all_long": peak_of(load_all)}
    print(json.dumps(peaks))


if __name__ == "__main__":
    _measure(sys.argv[1])
