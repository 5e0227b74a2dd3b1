"""The settings of ``kdistill reproduce hinton-mnist``, checked as ``kdistill run`` checks its
config: typed pydantic fields with bounds and descriptions, ``key=value`` values read by
:func:`kdistill.config.parse_value`, an unknown key answered with the closest one. The recipe
is the protocol's own (the paper's models, epochs and temperatures), not a :class:`RunConfig`:
no run of ``kdistill run`` trains a transfer set without 3s or a temperature study.
"""
from __future__ import annotations

import typing
from dataclasses import replace
from typing import Annotated, Sequence

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from .config import parse_value
from .errors import ConfigError
from .suggest import hint

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _listed(value: object) -> object:
    """One temperature or a list of them, as a tuple (``temperatures=4`` means ``[4]``)."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


Temperatures = Annotated[tuple[Positive, ...], BeforeValidator(_listed), Field(min_length=1)]
TEMPERATURES = (1.0, 2.0, 2.5, 4.0, 8.0, 20.0)


@dataclass(frozen=True, config=ConfigDict(extra="forbid", strict=True))
class Recipe:
    """Every setting of the reproduction. ``FULL`` is the benchmark (a GPU); ``QUICK`` keeps
    every experiment with short schedules on fewer images, for a few minutes on two CPU cores."""

    teacher_epochs: int = Field(200, ge=1, description="the teacher's passes over the images")
    student_epochs: int = Field(100, ge=1, description="every 800-800 student's, distilled or not")
    small_epochs: int = Field(50, ge=1, description="the 30-30 students' of the temperature study")
    batch_size: int = Field(128, ge=1, description="examples per step, every model")
    lr: Positive = Field(1e-3, description="Adam's learning rate, cosine decay to 0")
    temperature: Positive = Field(20.0, description="the paper's T, for the main and "
                                                    "transfer-set students")
    alpha: float = Field(0.9, ge=0, le=1, description="hinton loss: alpha·T²·KL + (1 - alpha)·CE "
                                                      "on labels")
    translate: int = Field(2, ge=0, description="the teacher's jitter in pixels (the paper's)")
    student_translate: int = Field(2, ge=0, description=(
        "two rows beyond the paper: the 800-800 student distilled on images jittered by this "
        "many pixels (the teacher live on each batch), and its labels-only control; every other "
        "student sees unjittered images, as in the paper; 0 leaves both rows out"))
    temperatures: Temperatures = Field(TEMPERATURES, description="800-800 temperature study")
    small_temperatures: Temperatures = Field(TEMPERATURES, description="30-30 temperature study")
    val_size: int = Field(10_000, ge=1, description="validation images held out of the end of "
                                                    "the 60,000 training images")
    train_size: int | None = Field(None, ge=1, description="use only the first N training "
                                                           "images; null: all before validation")


FULL = Recipe()
# Quick: the first 10,000 training images, so that short schedules still give a teacher clearly
# better than the labels-only student, and a student that distillation visibly improves (on all
# 50,000, a few epochs leave the teacher barely better than the plain student).
QUICK = Recipe(teacher_epochs=30, student_epochs=20, small_epochs=20, train_size=10_000)


def settings(recipe: Recipe) -> dict:
    """The recipe as JSON values (tuples as lists), as ``results.json`` records it."""
    return TypeAdapter(Recipe).dump_python(recipe, mode="json")


# ``kdistill run``'s dotted config keys for the recipe settings that mean the same; any other
# ``a.b`` is read as ``a_b`` (``small.epochs``, ``student.translate``, ``small.temperatures``).
DOTTED_KEYS = {"teacher.epochs": "teacher_epochs", "student.epochs": "student_epochs",
               "distill.temperature": "temperature", "distill.alpha": "alpha",
               "data.val_size": "val_size", "data.train_subset": "train_size"}


def setting_name(key: str) -> str:
    """The :class:`Recipe` field a ``key=value`` names: its own name or a dotted key like
    ``kdistill run``'s (``student.epochs``: ``student_epochs``)."""
    return DOTTED_KEYS.get(key, key.replace(".", "_"))


def with_overrides(recipe: Recipe, overrides: Sequence[str]) -> Recipe:
    """``recipe`` with ``key=value`` settings changed (``student_epochs=300`` or, as for
    ``kdistill run``, ``student.epochs=300``; ``lr=2e-3``, ``temperatures=[2,20]``,
    ``train_size=null``), each value checked against its field."""
    names = list(Recipe.__pydantic_fields__)
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"setting {item!r} is not key=value", "write e.g. student.epochs=300")
        name = setting_name(key)
        if name not in names:
            raise ConfigError(f"unknown setting {key!r}",
                              hint(key, [*names, *DOTTED_KEYS], f"choose from: {', '.join(names)}"))
        changes[name] = parse_value(text)
    try:
        return replace(recipe, **changes)
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])
        raise ConfigError(f"setting {name}={changes[name]!r} must be {_takes(name)}") from None


def _takes(name: str) -> str:
    """What the field ``name`` takes, in words read from its type and bounds."""
    field = Recipe.__pydantic_fields__[name]
    if typing.get_origin(field.annotation) is tuple:
        return "a list of positive numbers, e.g. [2, 4, 20]"
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le")
              if getattr(m, k, None) is not None}
    if "le" in bounds:
        return f"a number from {bounds['ge']} to {bounds['le']}"
    if "gt" in bounds:
        return "a positive finite number"
    return f"a whole number ≥ {bounds['ge']}" + (", or null" if field.default is None else "")
