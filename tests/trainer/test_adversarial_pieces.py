"""The pieces an adversarial stage is made of, beyond the flow arithmetic: the UNet's output layer in float32
under bf16 autocast (t = T numerics), and a flow embedding that tells the bases apart from the first step."""
import torch

from lightning_core import losses
from trainer import distill
from trainer.discriminator import FLOW_EMBEDDING_SCALE, Discriminator, time_embedding_rms
from trainer.sd15 import TINY_UNET, UNet, tiny_motion_config
from lightning_core.motion_module import MotionModuleSet

AB = distill.alpha_bar_table("cpu")


def _tiny(seed=0):
    torch.manual_seed(seed)
    unet = UNet(TINY_UNET).eval().requires_grad_(False)
    motion = MotionModuleSet(tiny_motion_config(TINY_UNET)).eval().requires_grad_(False)
    return unet, motion


def test_output_layer_runs_in_float32_under_bf16_autocast():
    """x0 = (x - 0.9992 eps) / 0.0397 at t = 999 multiplies eps's error by 25: eps leaves the UNet in float32."""
    unet, motion = _tiny()
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 77, TINY_UNET.context_dim, generator=g)
    t = torch.tensor([999])
    exact = distill.video_eps(unet, motion, x, t, context)
    captured = {}
    hook = unet.output_blocks[-1].register_forward_hook(lambda m, i, o: captured.update(h=o))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eps = distill.video_eps(unet, motion, x, t, context)
        eps_bf16_out = unet.out(captured["h"]).view_as(x)  # what the output layer gave under autocast before
    hook.remove()
    assert eps.dtype == torch.float32 and eps_bf16_out.dtype == torch.bfloat16
    to_x0 = lambda e: distill.move(x, e.float(), t, torch.tensor([-1]), AB)  # noqa: E731
    error = (to_x0(eps) - to_x0(exact)).abs().mean()
    error_bf16_out = (to_x0(eps_bf16_out) - to_x0(exact)).abs().mean()
    # eps is never rounded to bf16: it is the float32 output layer applied to the body's features ...
    assert torch.equal(eps, unet.output_layer_fp32(captured["h"]).view_as(x))
    # ... which removes the last rounding from x0; what is left is the bf16 body's own error (tiny net: 0.100 vs 0.103)
    assert error < error_bf16_out, (error, error_bf16_out)
    assert torch.equal(unet(x.flatten(0, 1), t.repeat(4).float(), context.repeat(4, 1, 1), num_frames=4,
                            motion=motion), exact.flatten(0, 1))  # float32 without autocast: unchanged


def test_flow_embedding_tells_bases_apart_from_the_first_step():
    """Two flows, same input: D's features differ from the start, and its logits after its first step (the
    logit layer starts at zero, so every logit is 0 before it); a zero embedding would leave both identical."""
    unet, motion = _tiny(1)
    d = Discriminator(unet, motion, num_flows=2, conditional=False, feature_shape=(4, 2, 2))
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(3, 4, 4, 4, 4, generator=g), torch.randn(3, 77, TINY_UNET.context_dim, generator=g)
    t = torch.tensor([500, 250, 10])
    flows = [torch.full((3,), i) for i in (0, 1)]
    with torch.no_grad():
        assert not d(x, t, context, flows[0]).any()  # no opinion before training
        features = [d.features(x, t, context, flow) for flow in flows]
    assert (features[0] - features[1]).abs().mean() > 1e-3
    scale = FLOW_EMBEDDING_SCALE * time_embedding_rms(unet)
    assert 0.8 * scale < float(d.flow_embedding.weight.detach().square().mean().sqrt()) < 1.2 * scale

    opt = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.0, 0.99))
    losses.discriminator_loss(d(x, t, context, flows[0]), d(x.flip(0), t, context, flows[0])).backward()
    opt.step()
    with torch.no_grad():
        logits = [d(x, t, context, flow) for flow in flows]
        assert (logits[0] - logits[1]).abs().min() > 1e-4
        d.flow_embedding.weight.zero_()
        assert torch.equal(d(x, t, context, flows[0]), d(x, t, context, flows[1]))
