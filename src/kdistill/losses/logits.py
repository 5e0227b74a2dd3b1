"""Distillation objectives on logits, as pure functions.

Each returns a dict of named loss terms; the training loop sums them and logs each by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import register_loss


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean")


@register_loss("kl")
def kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
       temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """The spec's loss: ``kl_div(log_softmax(s), softmax(t), reduction="batchmean")``.

    No labels are used. At ``temperature`` 1 (the spec) it is exactly the spec's function; other
    temperatures soften both distributions without Hinton's T² rescaling.
    """
    return {"kd": soft_kl(student_logits, teacher_logits, temperature)}


@register_loss("hinton")
def hinton(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
           temperature: float = 4.0, alpha: float = 0.9) -> dict[str, torch.Tensor]:
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    ``alpha · T² · KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) · CE(s, y)``; the T² keeps the
    soft term's gradients at the same scale as T changes.
    """
    return {
        "kd": alpha * temperature**2 * soft_kl(student_logits, teacher_logits, temperature),
        "ce": (1.0 - alpha) * F.cross_entropy(student_logits, targets),
    }
