"""lightning_core.losses: the non-saturating GAN losses equal the paper's -log(p) forms, computed stably."""
import torch

from lightning_core import losses


def test_losses_match_the_sigmoid_formulas():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.2, 1.5])
    p, p_hat = torch.sigmoid(real), torch.sigmoid(fake)
    assert torch.allclose(losses.discriminator_loss(real, fake), (-p.log()).mean() + (-(1 - p_hat).log()).mean())
    assert torch.allclose(losses.generator_loss(fake), (-p_hat.log()).mean())
    assert losses.discriminator_accuracy(real, fake).item() == 3 / 6  # real 2.0, 0.5 and fake -3.0
    zeros = torch.zeros(3)  # a D with no opinion (its zero-initialised logit layer) is at chance, not at 0
    assert losses.discriminator_accuracy(zeros, zeros).item() == 0.5
    assert torch.isfinite(losses.discriminator_loss(torch.tensor([-200.0]), torch.tensor([200.0])))
    assert losses.mse_distillation_loss(torch.ones(2, 3), torch.zeros(2, 3)).item() == 1.0
