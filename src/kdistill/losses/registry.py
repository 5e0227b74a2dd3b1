"""Distillation objectives by name: ``@register_loss("name")`` on a pure function.

A *feature* objective (``@register_feature_loss``) is a logit loss plus a hint term on
intermediate features, which :class:`~kdistill.losses.features.FeatureDistillation` computes;
``bind_loss`` of its name gives the logit part, so the logit side works unchanged.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, TypeVar

import torch

from ..errors import ConfigError
from ..suggest import hint

LossFn = Callable[..., dict[str, torch.Tensor]]
_LOSSES: dict[str, LossFn] = {}


class FeatureObjective(NamedTuple):
    kind: str  # the hint FeatureDistillation computes: "fitnets" or "at"
    logits: str  # the registered logit loss whose terms come with the hint
    description: str


_FEATURE_LOSSES: dict[str, FeatureObjective] = {}
Fn = TypeVar("Fn", bound=Callable[..., Any])


def _first_line(fn: Callable[..., Any]) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0]


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    def wrap(fn: LossFn) -> LossFn:
        _LOSSES[name] = fn
        return fn
    return wrap


def register_feature_loss(name: str, *, kind: str, logits: str = "hinton") -> Callable[[Fn], Fn]:
    """Decorator on a feature loss: ``name`` is the ``logits`` terms plus a ``kind`` hint term."""
    def wrap(fn: Fn) -> Fn:
        _FEATURE_LOSSES[name] = FeatureObjective(kind, logits,
                                                 f"{_first_line(fn)} Logit terms: {logits}.")
        return fn
    return wrap


def is_feature_loss(name: str) -> bool:
    return name in _FEATURE_LOSSES


def feature_kind(name: str) -> str:
    """The hint kind of the feature objective ``name`` (for ``FeatureDistillation(kind=...)``)."""
    if name not in _FEATURE_LOSSES:
        raise ConfigError(f"{name!r} is not a feature distillation loss",
                          f"choose one of: {', '.join(sorted(_FEATURE_LOSSES))}")
    return _FEATURE_LOSSES[name].kind


def get_loss(name: str) -> LossFn:
    """The logit loss ``name``; for a feature objective, its logit part."""
    logit_name = _FEATURE_LOSSES[name].logits if name in _FEATURE_LOSSES else name
    try:
        return _LOSSES[logit_name]
    except KeyError:
        raise ConfigError(f"unknown distillation loss {name!r}",
                          hint(name, list_losses(), f"choose one of: {', '.join(list_losses())}")
                          ) from None


def list_losses() -> dict[str, str]:
    """Each objective's name with one line: its docstring's first, or a feature objective's."""
    lines = {n: _first_line(fn) for n, fn in _LOSSES.items()}
    lines.update({n: f.description for n, f in _FEATURE_LOSSES.items()})
    return dict(sorted(lines.items()))


def bind_loss(name: str, **params: Any) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                                    dict[str, torch.Tensor]]:
    """The loss ``name`` with the config parameters it accepts bound (others are ignored)."""
    fn = get_loss(name)
    accepted = inspect.signature(fn).parameters
    bound = {k: v for k, v in params.items() if k in accepted}
    return lambda s, t, y: fn(s, t, y, **bound)
