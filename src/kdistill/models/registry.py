"""Models by name, timm style: ``create_model("spec-teacher")``, ``create_model("mlp:784-800-10")``
or any factory of your own as ``"package.module:factory"`` with keyword arguments."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError
from .nets import MLP, ConvNet, StudentNet, TeacherNet

_MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {}


def register_model(name: str, description: str):
    """Decorator: make a factory reachable by ``name`` from configs and the CLI."""
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = (factory, description)
        return factory
    return wrap


register_model("spec-teacher", "the spec's CNN teacher (67,786 params)")(TeacherNet)
register_model("spec-student", "the spec's 784-128-10 MLP student (101,770 params)")(StudentNet)
register_model("cnn", "a stronger CNN teacher: 4 conv-BN-ReLU, 2 pools, fc 256 "
                      "(kwargs: width=32, dropout=0.3)")(ConvNet)
register_model("hinton-teacher", "Hinton et al.'s MLP teacher 784-1200-1200-10, dropout 0.5 "
                                 "(input 0.2)")(lambda num_classes=10: MLP(
                                     (784, 1200, 1200, num_classes), dropout=0.5, input_dropout=0.2))


def list_models() -> dict[str, str]:
    """Registered names with one line each, plus the two name patterns."""
    return {**{n: d for n, (_, d) in _MODELS.items()},
            "mlp:784-H1-...-10": "a ReLU MLP with the given layer sizes (kwargs: dropout)",
            "package.module:factory": "your own nn.Module factory, called with kwargs"}


def _import_factory(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import model module {module_name!r}: {exc}",
                          "check the import path and that the package is installed") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}",
                          "name a function or class that builds an nn.Module") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model called ``name``; errors say what went wrong in one line."""
    if name in _MODELS:
        factory = _MODELS[name][0]
    elif name.startswith("mlp:"):
        try:
            sizes = [int(s) for s in name[4:].split("-")]
        except ValueError:
            raise ConfigError(f"bad MLP spec {name!r}", "write sizes like mlp:784-800-800-10") from None
        factory = lambda **kw: MLP(sizes, **kw)  # noqa: E731
    elif ":" in name:
        factory = _import_factory(name)
    else:
        raise ConfigError(f"unknown model {name!r}",
                          f"use one of {', '.join(_MODELS)}, mlp:784-...-10 or package.module:factory")
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build model {name!r}: {exc}", "check its kwargs") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{name!r} returned {type(model).__name__}, not a torch nn.Module",
                          "a model factory must return an nn.Module")
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
