"""Distillation objectives by name: ``@register_loss("name")`` on a pure function."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from ..errors import ConfigError

LossFn = Callable[..., dict[str, torch.Tensor]]
_LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    def wrap(fn: LossFn) -> LossFn:
        _LOSSES[name] = fn
        return fn
    return wrap


def get_loss(name: str) -> LossFn:
    try:
        return _LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown distillation loss {name!r}",
                          f"choose one of: {', '.join(sorted(_LOSSES))}") from None


def list_losses() -> dict[str, str]:
    """Each objective's name with the first line of its docstring."""
    return {n: (fn.__doc__ or "").strip().splitlines()[0] for n, fn in sorted(_LOSSES.items())}


def bind_loss(name: str, **params: Any) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                                    dict[str, torch.Tensor]]:
    """The loss ``name`` with the config parameters it accepts bound (others are ignored)."""
    fn = get_loss(name)
    accepted = inspect.signature(fn).parameters
    bound = {k: v for k, v in params.items() if k in accepted}
    return lambda s, t, y: fn(s, t, y, **bound)
