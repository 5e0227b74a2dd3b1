"""Intermediate features of any model by module path, with forward hooks (torchdistill's idea).

``with FeatureHooks(model, "fc1") as hooks: model(x); hooks.features["fc1"]`` — the model's code
needs no edits, so user models work as they are.
"""
from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from ..errors import ConfigError

_LISTED = 40  # module names an error lists before it abbreviates


def _submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        shown = ", ".join(names[:_LISTED])
        if len(names) > _LISTED:
            shown += f", ... ({len(names) - _LISTED} more)"
        raise ConfigError(f"{type(model).__name__} has no module {path!r}",
                          f"available modules: {shown or 'none'}") from None


class FeatureHooks:
    """The latest output of each module named in ``paths`` (``"fc1"``, ``"features.3"``).

    ``features`` maps each path to its module's output in the most recent forward pass, graph
    included, so losses on it train the model. Use as a context manager or call :meth:`remove`.
    A path that names no module raises a ConfigError listing the modules there are.
    """

    def __init__(self, model: nn.Module, paths: str | Iterable[str]) -> None:
        paths = [paths] if isinstance(paths, str) else list(paths)
        modules = {path: _submodule(model, path) for path in paths}  # all found, then hook
        self.features: dict[str, Any] = {}
        self._handles = [module.register_forward_hook(self._keeper(path))
                         for path, module in modules.items()]

    def _keeper(self, path: str):
        def keep(module: nn.Module, inputs: Any, output: Any) -> None:
            self.features[path] = output
        return keep

    def remove(self) -> None:
        """Detach the hooks from the model; ``features`` keeps the last outputs."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureHooks":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def default_feature_layer(model: nn.Module) -> str:
    """The "penultimate layer" FitNets and AT use by default.

    The second-to-last leaf module with parameters, in registration order: ``fc1`` of the MNIST tutorial's
    TeacherNet and StudentNet, ``fc2`` of ``mlp:784-800-800-10``. Registration order is usually
    the order of the forward pass; where a model differs, name the layer.
    """
    layers = [name for name, module in model.named_modules()
              if next(module.children(), None) is None
              and next(module.parameters(recurse=False), None) is not None]
    if len(layers) < 2:
        raise ConfigError(f"{type(model).__name__} has fewer than two layers with parameters",
                          "name the feature layer to distil explicitly")
    return layers[-2]
