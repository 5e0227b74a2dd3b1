"""Distillation objectives on intermediate features: FitNets hints and attention transfer.

The losses are pure functions; :class:`FeatureDistillation` wires one to a student and a teacher
through forward hooks and holds the only learned part (the FitNets adapter).
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .hooks import FeatureHooks, default_feature_layer
from .registry import register_feature_loss

DEFAULT_WEIGHTS = {"fitnets": 1.0, "at": 1000.0}
#: The most weights a flattening ``nn.Linear`` FitNets adapter may have when the two features
#: are not both flat (a conv map against a vector): 2**24 weights (64 MB of float32).
MAX_LINEAR_ADAPTER_WEIGHTS = 2**24


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


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def fitnets_adapter(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], *,
                    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                    student_layer: str = "student", teacher_layer: str = "teacher") -> nn.Module:
    """The FitNets regressor from a student feature to a teacher feature, by their shapes.

    ``student_shape`` and ``teacher_shape`` leave out the batch dimension.

    * Both ``(C, H, W)`` conv maps: a convolution from the student's to the teacher's channels,
      then ``BatchNorm2d``, and the hint compares ``[B, C_t, H_t, W_t]`` maps. The convolution
      is a 1x1 one when the spatial sizes agree; a strided one when the student's is larger by
      an integer factor ``f`` per dimension (kernel ``2f - 1``, stride ``f``, padding ``f - 1``:
      RepDistiller's ConvReg 3x3/stride 2/padding 1 for ``f = 2``, and a kernel that still
      covers every input position for larger ``f``); a transposed one (kernel = stride = ``f``)
      when it is smaller by an integer factor. Any other pair of spatial sizes is a ConfigError.
      No ReLU follows the BN, unlike RepDistiller's ConvReg (conv + BN + ReLU): the hint layer
      is any module path, and its output may well be signed (a VGG block here ends before its
      ReLU, a WRN stage is pre-activation), which a ReLU'd regressor could never match.
      The convolutions have no bias: the BN's shift takes its place.
    * Both ``(D,)`` vectors: ``nn.Linear(D_s, D_t)``.
    * Anything else (a conv map against a vector, other ranks): an ``nn.Linear`` between the
      flattened features, if it has at most :data:`MAX_LINEAR_ADAPTER_WEIGHTS` weights;
      otherwise a ConfigError naming both shapes.

    The adapter is made on ``device`` with ``dtype``; ``*_layer`` name the layers in errors.
    """
    where = (f"student feature {student_layer!r} {_shape(student_shape)}, teacher feature "
             f"{teacher_layer!r} {_shape(teacher_shape)}")
    if len(student_shape) == 1 and len(teacher_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0], device=device, dtype=dtype)
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        (c_s, *size_s), (c_t, *size_t) = student_shape, teacher_shape
        if size_s == size_t:
            conv: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False, device=device,
                                        dtype=dtype)
        elif all(s >= t and s % t == 0 for s, t in zip(size_s, size_t)):
            f = tuple(s // t for s, t in zip(size_s, size_t))
            conv = nn.Conv2d(c_s, c_t, kernel_size=tuple(2 * k - 1 for k in f), stride=f,
                             padding=tuple(k - 1 for k in f), bias=False, device=device,
                             dtype=dtype)
        elif all(s <= t and t % s == 0 for s, t in zip(size_s, size_t)):
            f = tuple(t // s for s, t in zip(size_s, size_t))
            conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=f, stride=f, bias=False,
                                      device=device, dtype=dtype)
        else:
            raise ConfigError(f"FitNets hint: the spatial sizes {size_s[0]}x{size_s[1]} and "
                              f"{size_t[0]}x{size_t[1]} are not an integer ratio apart ({where})",
                              "pick layers of matching (or integer-ratio) spatial size")
        return nn.Sequential(conv, nn.BatchNorm2d(c_t, device=device, dtype=dtype))
    d_s, d_t = math.prod(student_shape), math.prod(teacher_shape)
    if d_s * d_t > MAX_LINEAR_ADAPTER_WEIGHTS:
        raise ConfigError(f"FitNets hint: a Linear adapter between the flattened features would "
                          f"have {d_s:,} x {d_t:,} = {d_s * d_t:,} weights, more than "
                          f"{MAX_LINEAR_ADAPTER_WEIGHTS:,} ({where})",
                          "pick layers of the same kind: two [B, C, H, W] conv maps (a conv "
                          "adapter) or two flat [B, D] features, e.g. the layer before each "
                          "model's global pooling")
    return nn.Linear(d_s, d_t, device=device, dtype=dtype)


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
    restored after) finds the feature shapes. ``kind="fitnets"`` learns the adapter
    :func:`fitnets_adapter` picks for them (a conv + BatchNorm between conv maps, an
    ``nn.Linear`` between flat features), on the student feature's device and dtype: train
    ``parameters()`` with the student. ``kind="at"`` has no parameters.

    After the student and teacher have run on a batch, ``forward()`` returns
    ``{"hint": weight * loss}``. ``weight`` defaults to 1 for FitNets and to 1000 for AT, the
    paper's β, which it defines per element of the attention map (β = 10³ divided by the map size
    and the batch size; the authors' code takes a ``.mean()``): the AT loss is therefore
    ``at_loss / map size``. The teacher feature is detached; call ``remove()`` when done.

    The adapter follows the student: each ``forward()`` puts it in the train/eval mode of the
    student's hooked module, so its BatchNorm uses batch statistics (and updates its running
    ones) exactly when the student's layers do, whatever mode this module itself was left in.
    Construction leaves the adapter's running statistics untouched.
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
        # a weak reference: the adapter's mode follows this module's, without owning the student
        self._student_module = weakref.ref(student.get_submodule(self.student_layer))
        self.adapter: nn.Module | None = None
        try:
            student_feature, teacher_feature = self._example_features(student, teacher,
                                                                      example_input)
            if kind == "fitnets":
                self.adapter = fitnets_adapter(
                    tuple(student_feature.shape[1:]), tuple(teacher_feature.shape[1:]),
                    device=student_feature.device, dtype=student_feature.dtype,
                    student_layer=self.student_layer, teacher_layer=self.teacher_layer)
                self.adapter.eval()  # the check below must not move BN running statistics
            self.map_size = attention_map(teacher_feature).shape[1] if kind == "at" else 1
            with torch.no_grad():  # a layer pair that cannot work fails here, not at step one
                self._hint(student_feature, teacher_feature)
            if self.adapter is not None:
                self.adapter.train(self._student_module().training)
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

    def _hint(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.adapter is None:
            return at_loss(student, teacher) / self.map_size
        if isinstance(self.adapter, nn.Linear):
            return fitnets_loss(self.adapter(student.flatten(1)), teacher.flatten(1))
        return fitnets_loss(self.adapter(student), teacher)

    def forward(self) -> dict[str, torch.Tensor]:
        student, teacher = self._features()
        module = self._student_module()
        if self.adapter is not None and module is not None \
                and self.adapter.training != module.training:
            self.adapter.train(module.training)
        return {"hint": self.weight * self._hint(student, teacher)}

    def remove(self) -> None:
        """Take the hooks off both models."""
        self._student_hooks.remove()
        self._teacher_hooks.remove()
