"""Chunked VAE decode/encode: the stock nodes' frames, and peak memory that does not grow with the frame count.

Both run in a subprocess (tests/nodes/vae_memory.py) so that its peak resident memory is its own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures import sd15

PROBE = Path(__file__).with_name("vae_memory.py")


@pytest.fixture(scope="module")
def probe(comfy_base, tiny_checkpoint, tmp_path_factory):
    """(outputs, memory) of one probe run on the tiny checkpoint's VAE (outputs) and a narrow VAE (memory)."""
    out = tmp_path_factory.mktemp("vae_probe")
    checkpoint = comfy_base / "models" / "checkpoints" / tiny_checkpoint
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # freed tensors go back to the OS at once
    done = subprocess.run([sys.executable, str(PROBE), str(sd15.comfy_dir()), str(checkpoint), str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return load_file(str(out / "outputs.safetensors")), json.loads((out / "memory.json").read_text())


def test_chunked_decode_gives_the_stock_frames(probe):
    outputs, _ = probe
    # One chunk is exactly the stock call; smaller chunks are exactly stock VAEDecode run chunk by chunk.
    assert torch.equal(outputs["decode_one_chunk"], outputs["decode_stock"])
    assert torch.equal(outputs["decode_chunked"], outputs["decode_stock_per_chunk"])
    # Against one stock call over all frames, only the CPU kernels' batch-size-dependent rounding remains
    # (stock VAEDecode shows the same whenever free memory makes it split the batch).
    torch.testing.assert_close(outputs["decode_chunked"], outputs["decode_stock"], rtol=0, atol=1e-5)
    frames = outputs["decode_stock"]
    assert (frames[0] - frames[-1]).abs().max() > 0.05, "the frames must differ, or misplaced chunks would pass"


def test_chunked_encode_gives_the_stock_latents(probe):
    outputs, _ = probe
    assert torch.equal(outputs["encode_chunked"], outputs["encode_stock_per_chunk"])
    torch.testing.assert_close(outputs["encode_chunked"], outputs["encode_stock"], rtol=0, atol=1e-5)


def test_chunked_decode_memory_does_not_grow_with_the_frame_count(probe):
    _, memory = probe
    few, many = memory["runs"][0], memory["runs"][-1]
    output_growth = many["output_mib"] - few["output_mib"]
    chunked_growth = many["chunked_mib"] - few["chunked_mib"]
    stock_growth = many["stock_mib"] - few["stock_mib"]
    report = json.dumps(memory["runs"])
    # Chunked: the larger output (and input latents) only, plus allocator noise.
    assert chunked_growth < output_growth + 4, report
    # Stock VAEDecode on CPU decodes every frame in one batch, so its peak grows per frame.
    assert stock_growth > output_growth + 20, report
    assert many["chunked_mib"] < many["stock_mib"] / 2, report
