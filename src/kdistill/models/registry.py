"""Models by name, timm style: ``create_model("spec-teacher")``, ``create_model("mlp:784-800-10")``
or any factory of your own as ``"package.module:factory"`` with keyword arguments.

The data tells the model its shape: a factory whose signature names ``num_classes``,
``in_channels`` (timm: ``in_chans``), ``image_size`` or ``in_features`` is given them from the
dataset unless its kwargs set them; ``mlp:`` sizes may start with ``auto`` (C x H x W).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Sequence

from torch import nn

from ..errors import ConfigError
from ..suggest import hint
from .nets import MLP, ConvNet, StudentNet, TeacherNet

_MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {}


def register_model(name: str, description: str):
    """Decorator: make a factory reachable by ``name`` from configs and the CLI."""
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = (factory, description)
        return factory
    return wrap


register_model("spec-teacher", "the MNIST tutorial's CNN teacher")(TeacherNet)
register_model("spec-student", "the MNIST tutorial's 784-128-10 MLP student")(StudentNet)
register_model("cnn", "a stronger CNN teacher: 4 conv-BN-ReLU, 2 pools, fc 256")(ConvNet)
register_model("hinton-teacher", "Hinton et al.'s MLP teacher 784-1200-1200-10, dropout 0.5 "
                                 "(input 0.2)")(lambda num_classes=10, in_features=784: MLP(
                                     (in_features, 1200, 1200, num_classes), dropout=0.5,
                                     input_dropout=0.2))


DATA_KWARGS = ("num_classes", "in_channels", "in_chans", "image_size", "in_features")


def data_kwargs(factory: Callable[..., Any], shape: Sequence[int] | None,
                num_classes: int | None) -> dict[str, Any]:
    """What the data tells ``factory``: each of :data:`DATA_KWARGS` its signature names (timm's
    ``create_model`` takes ``num_classes`` and ``in_chans`` through its ``**kwargs``)."""
    try:
        params = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # some builtins have no signature
        return {}
    if getattr(factory, "__module__", "").split(".")[0] == "timm":
        params |= {"num_classes", "in_chans"}
    known: dict[str, Any] = {}
    if num_classes is not None:
        known["num_classes"] = num_classes
    if shape is not None:
        c, h, w = shape
        known.update(in_channels=c, in_chans=c, image_size=h if h == w else (h, w),
                     in_features=c * h * w)
    return {k: v for k, v in known.items() if k in params}


def _default_size(factory: Callable[..., Any]) -> str:
    """' (N params at its default num_classes)', counted by building it."""
    classes = inspect.signature(factory).parameters.get("num_classes")
    default = classes.default if classes is not None and classes.default is not inspect.Parameter.empty else None
    count = count_params(factory())
    return f" ({count:,} params" + (f" at {default} classes)" if default else ")")


def own_kwargs(factory: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments of ``factory`` a config's ``kwargs`` may set, with their defaults
    (read from its signature; those the data tells it, :data:`DATA_KWARGS`, left out)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.name not in DATA_KWARGS
            and p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def list_models(params: bool = False) -> dict[str, str]:
    """Registered names with one line each: its keyword arguments and their defaults (from its
    signature) and what the data tells it, plus the patterns; with ``params``, each registered
    model is built once to count its parameters."""
    def kwargs(factory: Callable[..., Any]) -> str:
        own = own_kwargs(factory)
        return f" (kwargs: {', '.join(f'{k}={v!r}' for k, v in own.items())})" if own else ""

    def told(factory: Callable[..., Any]) -> str:
        names = list(data_kwargs(factory, (1, 1, 1), 1))
        return f" [told: {', '.join(names)}]" if names else ""
    return {**{n: d + kwargs(f) + (_default_size(f) if params else "") + told(f)
               for n, (f, d) in _MODELS.items()},
            "mlp:auto-H1-...-10": "a ReLU MLP with the given layer sizes; auto = C x H x W of "
                                  "the data (kwargs: dropout)",
            "package.module:factory": "your own nn.Module factory, called with kwargs (and "
                                      "told the data's shape by the names above)"}


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


def _mlp(name: str, shape: Sequence[int] | None) -> Callable[..., nn.Module]:
    """The factory of ``mlp:784-800-10`` or ``mlp:auto-800-10`` (auto: the data's C x H x W)."""
    parts = name[4:].split("-")
    if parts[0] == "auto":
        if shape is None:
            raise ConfigError(f"{name!r} needs the data's shape", "write the input size instead")
        parts[0] = str(int(shape[0]) * int(shape[1]) * int(shape[2]))
    try:
        sizes = [int(s) for s in parts]
    except ValueError:
        raise ConfigError(f"bad MLP spec {name!r}", "write sizes like mlp:auto-800-800-10") from None
    return lambda **kw: MLP(sizes, **kw)


def create_model(name: str, *, data_shape: Sequence[int] | None = None,
                 num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build the model called ``name``; errors say what went wrong in one line. With
    ``data_shape`` (C, H, W) and ``num_classes``, the factory is told what it accepts of them
    (:func:`data_kwargs`); ``kwargs`` win over what the data says."""
    if name in _MODELS:
        factory = _MODELS[name][0]
    elif name.startswith("mlp:"):
        factory = _mlp(name, data_shape)
    elif ":" in name:
        factory = _import_factory(name)
    else:
        raise ConfigError(f"unknown model {name!r}",
                          hint(name, _MODELS, f"use one of {', '.join(_MODELS)}, mlp:auto-...-10 "
                                              "or package.module:factory"))
    kwargs = {**data_kwargs(factory, data_shape, num_classes), **kwargs}
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
