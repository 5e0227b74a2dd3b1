"""Distillation objectives on intermediate features: FitNets hints and attention transfer.

The losses are pure functions; :class:`FeatureDistillation` wires one to a student and a teacher
through forward hooks and holds the only learned part (the FitNets adapter).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .hooks import FeatureHooks, default_feature_layer
from .registry import register_feature_loss

DEFAULT_WEIGHTS = {"fitnets": 1.0, "at": 1000.0}


@register_feature_loss("fitnets", kind="fitnets")
def fitnets_loss(student_feature_adapted: torch.Tensor,
                 teacher_feature: torch.Tensor) -> torch.Tensor:
    """Romero et al. (ICLR 2015), "FitNets: Hints for Thin Deep Nets": MSE feature hint.

    The mean squared error between the student's feature, mapped to the teacher's shape by a
    learned adapter (the paper's regressor), and the teacher's feature.
    """
    if student_feature_adapted.shape != teacher_feature.shape:
        raise ConfigError(f"FitNets hint: adapted student feature "
                          f"{tuple(student_feature_adapted.shape)} does not match the teacher "
                          f"feature {tuple(teacher_feature.shape)}",
                          "the adapter must map the student feature to the teacher's shape")
    return F.mse_loss(student_feature_adapted, teacher_feature)


def attention_map(feature: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017) activation-based attention, L2-normalised per sample.

    [B, C, H, W] -> the channel mean of |f|^p, flattened to [B, H·W]; [B, D] -> |f|^p itself.
    """
    if feature.dim() == 4:
        attention = feature.abs().pow(p).mean(dim=1).flatten(1)
    elif feature.dim() == 2:
        attention = feature.abs().pow(p)
    else:
        raise ConfigError(f"attention transfer needs a [B, C, H, W] or [B, D] feature, got "
                          f"shape {tuple(feature.shape)}", "pick another feature layer")
    return F.normalize(attention, dim=1)


@register_feature_loss("at", kind="at")
def at_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor,
            p: float = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis (ICLR 2017), "Paying More Attention to Attention": attention transfer.

    The batch mean of ``||Q_s - Q_t||²``, the squared L2 distance between the normalised
    attention maps (:func:`attention_map`), summed over the map: no 1/2 and no division by the
    map size here. The paper's β/2 weight, with its β given per map element, is the caller's
    (:class:`FeatureDistillation` divides by the map size and multiplies by its ``weight``).
    """
    student_map, teacher_map = attention_map(student_feature, p), attention_map(teacher_feature, p)
    if student_map.shape[1] != teacher_map.shape[1]:
        raise ConfigError(f"attention maps differ in size: student feature "
                          f"{tuple(student_feature.shape[1:])} gives {student_map.shape[1]} "
                          f"positions, teacher feature {tuple(teacher_feature.shape[1:])} gives "
                          f"{teacher_map.shape[1]}",
                          "pick layers with the same spatial size (or width, for flat features)")
    return (student_map - teacher_map).pow(2).sum(dim=1).mean()


class FeatureDistillation(nn.Module):
    """The hint term of FitNets or AT, on features taken from both models by forward hooks.

    ``student_layer`` and ``teacher_layer`` are module paths (default: each model's
    :func:`default_feature_layer`). One forward of ``example_input`` (no grad, eval mode, modes
    restored after) finds the feature shapes. ``kind="fitnets"`` learns an ``nn.Linear`` adapter
    from the flattened student feature to the flattened teacher feature: train ``parameters()``
    with the student. ``kind="at"`` has no parameters.

    After the student and teacher have run on a batch, ``forward()`` returns
    ``{"hint": weight * loss}``. ``weight`` defaults to 1 for FitNets and to 1000 for AT, the
    paper's β, which it defines per element of the attention map (β = 10³ divided by the map size
    and the batch size; the authors' code takes a ``.mean()``): the AT loss is therefore
    ``at_loss / map size``. The teacher feature is detached; call ``remove()`` when done.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, example_input: torch.Tensor,
                 kind: str = "fitnets", student_layer: str | None = None,
                 teacher_layer: str | None = None, weight: float | None = None) -> None:
        super().__init__()
        if kind not in DEFAULT_WEIGHTS:
            raise ConfigError(f"unknown feature distillation kind {kind!r}",
                              f"choose one of: {', '.join(DEFAULT_WEIGHTS)}")
        self.kind = kind
        self.weight = DEFAULT_WEIGHTS[kind] if weight is None else float(weight)
        self.student_layer = student_layer or default_feature_layer(student)
        self.teacher_layer = teacher_layer or default_feature_layer(teacher)
        self._student_hooks = FeatureHooks(student, self.student_layer)
        self._teacher_hooks = FeatureHooks(teacher, self.teacher_layer)
        try:
            student_feature, teacher_feature = self._example_features(student, teacher,
                                                                      example_input)
            self.adapter = (nn.Linear(student_feature[0].numel(), teacher_feature[0].numel(),
                                      device=student_feature.device, dtype=student_feature.dtype)
                            if kind == "fitnets" else None)
            self.map_size = attention_map(teacher_feature).shape[1] if kind == "at" else 1
            with torch.no_grad():
                self()  # a layer pair that cannot work fails here, not at the first step
        except BaseException:
            self.remove()
            raise
        self._student_hooks.features.clear()
        self._teacher_hooks.features.clear()

    def _example_features(self, student: nn.Module, teacher: nn.Module,
                          example_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        modes = {m: m.training for model in (student, teacher) for m in model.modules()}
        try:
            student.eval()
            teacher.eval()
            with torch.no_grad():
                student(example_input)
                teacher(example_input)
        finally:
            for module, training in modes.items():
                module.training = training
        return self._features()

    def _features(self) -> tuple[torch.Tensor, torch.Tensor]:
        student = self._student_hooks.features.get(self.student_layer)
        teacher = self._teacher_hooks.features.get(self.teacher_layer)
        if student is None or teacher is None:
            raise RuntimeError("FeatureDistillation: run the student and the teacher on the batch "
                               "first (precomputed teacher logits skip the teacher's features)")
        return student, teacher.detach()

    def forward(self) -> dict[str, torch.Tensor]:
        student, teacher = self._features()
        if self.adapter is not None:
            loss = fitnets_loss(self.adapter(student.flatten(1)), teacher.flatten(1))
        else:
            loss = at_loss(student, teacher) / self.map_size
        return {"hint": self.weight * loss}

    def remove(self) -> None:
        """Take the hooks off both models."""
        self._student_hooks.remove()
        self._teacher_hooks.remove()
