"""Distillation objectives on logits, as pure functions.

Each returns a dict of named loss terms; the training loop sums them and logs each by name.
Every loss takes ``standardize``: z-score the logits of its softened terms first (Sun et al.).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import register_loss


def zscore(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Sun et al. (CVPR 2024), "Logit Standardization in Knowledge Distillation": z-scores.

    ``(z - mean(z)) / (std(z) + eps)`` over the classes, with the unbiased std as the authors'
    code computes it (``torch.std``). The student then matches the teacher's logit *relations*,
    not their range; the temperature still divides the standardised logits.
    """
    centred = logits - logits.mean(dim=1, keepdim=True)
    return centred / (logits.std(dim=1, keepdim=True) + eps)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 1.0, standardize: bool = False) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, averaged over the batch.

    With ``standardize`` both are z-scored (:func:`zscore`) before dividing by the temperature.
    """
    if standardize:
        student_logits, teacher_logits = zscore(student_logits), zscore(teacher_logits)
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean")


@register_loss("kl")
def kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
       temperature: float = 1.0, standardize: bool = False) -> dict[str, torch.Tensor]:
    """The MNIST tutorial's loss: ``kl_div(log_softmax(s), softmax(t), reduction="batchmean")``.

    No labels are used. At ``temperature`` 1 (the tutorial) it is exactly the tutorial's function; other
    temperatures soften both distributions without Hinton's T² rescaling.
    """
    return {"kd": soft_kl(student_logits, teacher_logits, temperature, standardize)}


@register_loss("hinton")
def hinton(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
           temperature: float = 4.0, alpha: float = 0.9,
           standardize: bool = False) -> dict[str, torch.Tensor]:
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    ``alpha · T² · KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) · CE(s, y)``; the T² keeps the
    soft term's gradients at the same scale as T changes. CE always sees the raw logits.
    """
    soft = soft_kl(student_logits, teacher_logits, temperature, standardize)
    return {
        "kd": alpha * temperature**2 * soft,
        "ce": (1.0 - alpha) * F.cross_entropy(student_logits, targets),
    }


@register_loss("mse")
def mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
        alpha: float = 0.9, standardize: bool = False) -> dict[str, torch.Tensor]:
    """Ba & Caruana (NeurIPS 2014), "Do Deep Nets Really Need to be Deep?": logit regression.

    ``alpha · ½ · mean_k (s_k − t_k)² + (1 − alpha) · CE(s, y)``, averaged over the batch. The ½
    makes it the high-temperature limit of Hinton's ``T² · KL`` for zero-mean logits (section 2
    of Hinton et al.), so ``alpha`` weighs the two terms as it does there. Unlike KL, it also
    matches each logit's offset, which softmax ignores.
    """
    s, t = (zscore(student_logits), zscore(teacher_logits)) if standardize else (
        student_logits, teacher_logits)
    return {
        "kd": alpha * 0.5 * F.mse_loss(s, t),
        "ce": (1.0 - alpha) * F.cross_entropy(student_logits, targets),  # raw logits, as hinton
    }


def _target_vs_rest(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, 2] log-probabilities of (the target class, any other class) under ``softmax(logits)``."""
    log_p = F.log_softmax(logits, dim=1)
    is_target = F.one_hot(targets, logits.shape[1]).bool()
    log_rest = torch.logsumexp(log_p.masked_fill(is_target, float("-inf")), dim=1, keepdim=True)
    return torch.cat([log_p.gather(1, targets[:, None]), log_rest], dim=1)


def _non_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, K-1] logits with the target class removed (a softmax of them renormalises the rest)."""
    keep = F.one_hot(targets, logits.shape[1]) == 0
    return logits[keep].view(logits.shape[0], -1)


@register_loss("dkd")
def dkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
        temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0,
        standardize: bool = False) -> dict[str, torch.Tensor]:
    """Zhao et al. (CVPR 2022), "Decoupled Knowledge Distillation": CE + α·TCKD + β·NCKD.

    TCKD is the KL between the teacher's and student's binary (target, non-target) distributions;
    NCKD the KL between their distributions over the non-target classes only (the target logit
    is dropped, which is exact where mdistiller subtracts 1000). Both are softened by T and scaled
    by T², as in the authors' code. ``alpha`` weighs TCKD and ``beta`` NCKD, in the paper's
    notation (not Hinton's alpha); T=4, α=1, β=8 are the paper's CIFAR-100 settings. The KD
    terms' warm-up over the first epochs in mdistiller is a schedule, not part of this loss.
    """
    ce = F.cross_entropy(student_logits, targets)
    if standardize:
        student_logits, teacher_logits = zscore(student_logits), zscore(teacher_logits)
    t = temperature
    tckd = soft_kl(_target_vs_rest(student_logits / t, targets),
                   _target_vs_rest(teacher_logits / t, targets))
    nckd = soft_kl(_non_target(student_logits, targets), _non_target(teacher_logits, targets), t)
    return {"ce": ce, "tckd": alpha * t**2 * tckd, "nckd": beta * t**2 * nckd}
