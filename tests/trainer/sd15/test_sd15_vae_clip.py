"""Our VAE and CLIP text encoder against diffusers' AutoencoderKL and transformers' CLIPTextModel."""
import torch

from trainer.sd15 import CLIPConfig, VAEConfig

ATOL = 1e-4


def test_configs_are_inferred_from_the_checkpoint(small_base):
    assert small_base.vae.config == VAEConfig(channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2)
    assert small_base.vae.scale_factor == 8
    assert small_base.text_encoder.config == CLIPConfig(vocab_size=1000, width=128, layers=2, intermediate=256)


def test_vae_encode_and_decode_equal_diffusers(small_base, diffusers_vae):
    pixels = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = diffusers_vae.encode(pixels).latent_dist
        ours = small_base.vae.encode(pixels)
        sampled = small_base.vae.encode(pixels, generator=torch.Generator().manual_seed(4))
        ref_sampled = posterior.sample(generator=torch.Generator().manual_seed(4)) * 0.18215
        decoded = small_base.vae.decode(ours)
        ref_decoded = diffusers_vae.decode(posterior.mean).sample
    assert ours.shape == (2, 4, 4, 6)
    assert (ours - posterior.mean * 0.18215).abs().max() < ATOL
    assert (sampled - ref_sampled).abs().max() < ATOL and (sampled - ours).abs().max() > 1e-3
    assert ref_decoded.std() > 0.01
    assert (decoded - ref_decoded).abs().max() < ATOL


def test_video_helpers_fold_frames_into_the_batch(small_base):
    pixels = torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = small_base.encode_video(pixels, chunk=4)
    assert latents.shape == (2, 3, 4, 2, 2) and latents.dtype == torch.float32
    torch.testing.assert_close(latents[1, 2], small_base.vae.encode(pixels[1, 2:3])[0])
    video = small_base.decode_video(latents, chunk=5)
    assert video.shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(video[0, 1], small_base.vae.decode(latents[0, 1:2])[0])


def test_clip_equals_transformers_last_hidden_state(small_base, transformers_clip):
    ids = torch.randint(0, 1000, (3, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = small_base.text_encoder(ids)
        ref = transformers_clip(ids).last_hidden_state
    assert ref.std() > 0.5
    assert (ours - ref).abs().max() < ATOL


def test_clip_is_causal(small_base):
    ids = torch.randint(0, 1000, (1, 77), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, 40] = (ids[0, 40] + 1) % 1000
    with torch.no_grad():
        a, b = small_base.text_encoder(ids), small_base.text_encoder(changed)
    assert torch.equal(a[:, :40], b[:, :40]) and (a[:, 40:] - b[:, 40:]).abs().max() > 1e-3
