"""Distillation losses of progressive adversarial diffusion distillation (SDXL-Lightning 2.3, 3.2).

The discriminator returns logits; -log(sigmoid(l)) = softplus(-l) and -log(1 - sigmoid(l)) = softplus(l)
are the same non-saturating losses as Eqs. (8)-(9) of AnimateDiff-Lightning, without overflow.
"""

import torch.nn.functional as F


def mse_distillation_loss(student, teacher):
    """Mean squared error between the student's and the teacher's x_{t-ns} (Eq. 3), in float32."""
    return F.mse_loss(student.float(), teacher.float())


def discriminator_loss(real_logits, fake_logits):
    """L_D = -log(p) - log(1 - p_hat) (Eq. 8) on logits: real is the teacher's, fake the student's."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_loss(fake_logits):
    """Non-saturating L_G = -log(p_hat) (Eq. 9) on logits."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_accuracy(real_logits, fake_logits):
    """Fraction of real scored > 0.5 and fake scored < 0.5, a tie at 0.5 counting half (a diagnostic, not a loss)."""
    hits = ((real_logits > 0).float() + 0.5 * (real_logits == 0).float()).sum() + \
        ((fake_logits < 0).float() + 0.5 * (fake_logits == 0).float()).sum()
    return hits / (real_logits.numel() + fake_logits.numel())
