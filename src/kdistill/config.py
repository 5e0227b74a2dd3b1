"""The typed run configuration: defaults beside their meaning, YAML presets, ``key=value`` overrides.

Every key is checked: an unknown key or a bad value is a :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import copy
import os
import reprlib
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      field_validator, model_validator)

from .data.augment import Augment
from .data.batches import per_channel
from .errors import ConfigError
from .suggest import closest, hint


class _Hinted(ValueError):
    """A validator's error with the hint the one-line message ends with."""

    def __init__(self, message: str, hint_text: str) -> None:
        super().__init__(message)
        self.hint = hint_text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_per_channel(value: float | list[float] | None) -> float | list[float] | None:
    if value is not None and not 1 <= len(per_channel(value)) <= 3:
        raise ValueError("give one value or one per channel")
    return value


def _positive(value: float | list[float] | None) -> float | list[float] | None:
    if any(v <= 0 for v in (per_channel(value) if value is not None else ())):
        raise ValueError("std must be positive")
    return value


Mean = Annotated[float | list[float] | None, AfterValidator(_one_per_channel)]
Std = Annotated[float | list[float] | None, AfterValidator(_one_per_channel),
                AfterValidator(_positive)]


class DataConfig(_Strict):
    name: str = Field("mnist", description="registered dataset (mnist, fashion-mnist, cifar10, "
                      "cifar100), or a path: an image folder, an .npz file or an IDX directory")
    root: str | None = Field(None, description="data root; default $KDISTILL_DATA or the user cache")
    mean: Mean = Field(None, description="Normalize mean of pixels in [0, 1]: one value or "
                             "one per channel; default the dataset's customary constants (your "
                             "own data: its training images' mean)")
    std: Std = Field(None, description="Normalize std, like mean")
    image_size: int | list[int] | None = Field(None, description="resize images to N x N or "
                                               "[H, W]; default their own size (mixed sizes in "
                                               "an image folder need it)")
    channels: Literal[1, 3] | None = Field(None, description="convert images to 1 (grey) or 3 "
                                           "(RGB) channels; default as stored")
    labels: Literal["fine", "coarse"] = Field("fine", description="cifar100: the 100 fine classes "
                                              "or the 20 coarse superclasses")
    train_subset: int | None = Field(None, ge=1, description="use only the first N training images")
    translate: int = Field(0, ge=0, le=8, description="augmentation: random shifts of up to N "
                                                      "pixels, for every model trained")
    crop_padding: int = Field(0, ge=0, le=8, description="augmentation: pad by N zero pixels and "
                              "crop the original size at random (CIFAR's 4); the same op as "
                              "translate, under the name CIFAR recipes use")
    hflip: bool = Field(False, description="augmentation: flip each image left-right with "
                                           "probability 1/2")
    rotate: float = Field(0.0, ge=0, le=45, description="augmentation: random rotations of up "
                                                        "to N degrees")
    scale: float = Field(0.0, ge=0, lt=1, description="augmentation: random zoom by a factor in "
                                                      "[1 - scale, 1 + scale]")
    elastic: float = Field(0.0, ge=0, le=100, description="augmentation: elastic distortion of "
                           "strength alpha (Simard et al. 2003 used 34), smoothed over 4 px")
    erase: int = Field(0, ge=0, le=1024, description="augmentation: zero an N x N square at a "
                       "random place in each image (cutout)")
    val_size: int = Field(0, ge=0, description="images held out of the end of the training set "
                                               "for validation (never trained on); ignored when "
                                               "the data has its own val split")

    @model_validator(mode="after")
    def _one_shift(self) -> "DataConfig":
        if self.translate and self.crop_padding:
            raise ValueError("translate and crop_padding are the same op: set one of them")
        return self

    def augment(self) -> Augment:
        """The training augmentations these settings ask for."""
        return Augment(self.translate or self.crop_padding, self.rotate, self.scale,
                       self.elastic, self.erase, self.hflip)


class TrainConfig(_Strict):
    model: str = Field(description="registered name, mlp:784-...-10, or package.module:factory")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model factory")
    epochs: int = Field(5, ge=1, description="passes over the training set")
    batch_size: int = Field(64, ge=1, description="examples per optimisation step (the global "
                                                  "batch under torchrun)")
    micro_batches: int = Field(1, ge=1, description="run each batch as N forward/backward passes "
                                                    "whose gradients add up (less memory)")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="adam, adamw or sgd")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd: momentum")
    nesterov: bool = Field(True, description="sgd: Nesterov momentum")
    schedule: Literal["constant", "cosine", "multistep"] = Field(
        "constant", description="learning-rate schedule: constant, cosine (per step to 0) or "
                                "multistep (x gamma after each epoch in milestones)")
    milestones: list[int] = Field([], description="multistep: the epochs after which the "
                                                  "learning rate is multiplied by gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="multistep: the factor at each milestone")
    features: str | None = Field(None, description="module path whose output feature objectives "
                                                   "(fitnets, at) use; default the penultimate layer")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (adam, sgd) or decoupled "
                                "decay (adamw)")


class TeacherConfig(TrainConfig):
    epochs: int = Field(5, ge=0, description="0: use the teacher as built (e.g. a pretrained "
                                             "factory), not trained here")
    weights: str | None = Field(None, description="use the teacher with these weights, not trained "
                                "here: safetensors, or a PyTorch checkpoint read with "
                                "weights_only=True (a state_dict, or one under model / state_dict "
                                "/ model_state_dict; a 'module.' prefix is dropped)")
    mean: Mean = Field(None, description="the teacher's own input Normalize mean (e.g. an "
                             "ImageNet-pretrained teacher); default the data's")
    std: Std = Field(None, description="the teacher's own Normalize std, like mean")
    ensemble: int = Field(1, ge=1, le=16, description="train N teachers (seeds seed..seed+N-1) "
                                                      "and distil from their averaged soft targets")


class DistillConfig(_Strict):
    loss: str = Field("kl", description="objective name (kdistill losses)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature T")
    alpha: float = Field(1.0, ge=0, le=1, description="weight of the soft (teacher) term; 1 - alpha "
                                                     "goes to labels (dkd: the TCKD weight)")
    beta: float = Field(8.0, ge=0, description="dkd: the NCKD weight")
    standardize: bool = Field(False, description="z-score logits before softening (Sun et al. 2024)")
    feature_weight: float | None = Field(None, ge=0, description="weight of the fitnets/at hint "
                                                                 "(default 1 and 1000)")
    teacher_table_gb: float = Field(
        4.0, ge=0, description="largest table of precomputed teacher logits (one per training "
                               "image, or per crop/flip view of each) kept in memory; beyond it, "
                               "or at 0, the teacher runs live on every batch")
    warmup_epochs: int = Field(0, ge=0, description="ramp the distillation terms (all but "
                               "cross-entropy) linearly over the first N epochs (DKD: 20)")

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        from .losses import list_losses  # imported here: losses import nothing from config

        if name not in list_losses():
            raise _Hinted(f"unknown distillation loss {name!r}",
                          hint(name, list_losses(), f"choose one of: {', '.join(list_losses())}"))
        return name


class BenchConfig(_Strict):
    enabled: bool = Field(True, description="measure latency and throughput after training")
    onnx: bool = Field(True, description="also export to ONNX (parity-checked) and int8, and time them")
    latency_repeats: int = Field(200, ge=1, description="timed batch-1 calls per model and runtime")
    throughput_batches: list[int] = Field([1, 64, 1024], min_length=1,
                                          description="batch sizes whose throughput is measured")
    throughput_repeats: int = Field(10, ge=1, description="timed calls per batch size")

    @field_validator("throughput_batches")
    @classmethod
    def _positive(cls, batches: list[int]) -> list[int]:
        if any(b < 1 for b in batches):
            raise ValueError("batch sizes must be at least 1")
        return sorted(set(batches))


class RunConfig(_Strict):
    description: str = Field("", description="one line saying what this run is")
    seed: int = Field(0, description="seeds initialisation, shuffling and dropout")
    threads: int | None = Field(None, ge=1, description="torch threads; default all cores")
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="training forward pass in mixed precision (fp16: CUDA only, with a "
                            "gradient scaler)")
    compile: bool = Field(False, description="run the student through torch.compile while training")
    cuda_graphs: bool = Field(True, description="on CUDA, record each training step as a CUDA graph "
                                                "and replay it (far fewer kernel launches)")
    channels_last: bool = Field(False, description="hold conv models in channels-last memory "
                                "format (faster convolutions with oneDNN on CPU and on CUDA)")
    control: bool = Field(True, description="also train the student from scratch on labels only")
    control_pass: Literal["separate", "shared"] = Field(
        "separate", description="train the control after the distilled student, or beside it "
                                "in the same pass on the same batches (shared: bitwise the same "
                                "models)")
    eval_batch_size: int | None = Field(None, ge=1, description="batch size of evaluation and "
                                        "teacher logits; default 64 on a CPU (faster per image "
                                        "there), 256 on a GPU")
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint_every: int = Field(1, ge=0, description="save a resumable checkpoint every N epochs "
                                                       "(0: only when a model finishes)")
    teacher: TeacherConfig = Field(default_factory=lambda: TeacherConfig(model="spec-teacher"))
    student: TrainConfig = Field(default_factory=lambda: TrainConfig(model="spec-student"))
    distill: DistillConfig = Field(default_factory=DistillConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)


# --------------------------------------------------------------------------- loading
DEFAULT_PRESET = "mnist-spec"
# Old preset names, accepted for one release with a note on stderr.
PRESET_ALIASES = {"seed": "mnist-spec", "best": "mnist-best", "fashion": "fashion-spec"}


def canonical_preset(name: str) -> str:
    """A preset's current name (an old name from :data:`PRESET_ALIASES` gives its new one)."""
    return PRESET_ALIASES.get(name, name)


def list_presets() -> dict[str, str]:
    """Preset names with their one-line descriptions."""
    out = {}
    for entry in sorted(resources.files("kdistill.presets").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            out[entry.name[:-5]] = (yaml.safe_load(entry.read_text()) or {}).get("description", "")
    return out


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{origin} is not valid YAML{at}", "fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"{origin} nests too deeply", "a config is a few levels of keys") from None
    except (ValueError, TypeError, AttributeError) as exc:  # a tag or date YAML cannot build
        raise ConfigError(f"{origin} holds a value YAML cannot read: {exc}",
                          "fix the value") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a YAML mapping of config keys, got {type(data).__name__}",
                          "see the config reference in the README")
    return data


def preset_dict(name: str) -> dict[str, Any]:
    presets = list_presets()
    if name in PRESET_ALIASES:
        if os.environ.get("RANK", "0") == "0":  # once, not once per torchrun process
            print(f"kdistill: note: preset {name!r} is now {PRESET_ALIASES[name]!r} (the old "
                  "name goes in a later release)", file=sys.stderr)
        name = PRESET_ALIASES[name]
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}",
                          hint(name, presets, f"choose one of: {', '.join(presets)}"))
    return _read_yaml(resources.files("kdistill.presets").joinpath(f"{name}.yaml").read_text(),
                      f"preset {name}")


MAX_CONFIG_BYTES = 2**20  # a config file: a few kB in practice


def file_dict(path: str | Path) -> dict[str, Any]:
    try:
        size = Path(path).stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {size:,} bytes, more than the "
                              f"{MAX_CONFIG_BYTES:,} a config may take", "check the path")
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}", "check the path") from None
    return _read_yaml(text, f"config file {path}")


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars and lists (``true``, ``0.5``, ``[1, 2]``), else a string."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, RecursionError):
        return text  # YAML constructors raise plain errors too (`!!int x`, 2020-02-30)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 leaves "1e-3" as a string
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted keys: ``["teacher.epochs=3", "distill.loss=hinton"]``."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not key=value", "write e.g. teacher.epochs=3")
        node = data
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config key {'.'.join(parents[:i + 1])!r} is not a section",
                                  f"cannot set {key}")
            node = child
        node[leaf] = parse_value(text)
    return data


def config_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted config key, sections included: ``seed``, ``student``, ``student.epochs``..."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += config_keys(field.annotation, f"{prefix}{name}.")
    return keys


def _key_hint(key: str, rest: str) -> str:
    """``rest``, led by the known key ``key`` was most likely meant to be: the same name in
    another section (``student.temperature``: ``distill.temperature``), else a key of the same
    section spelled alike (``student.epoch``: ``student.epochs``)."""
    keys = config_keys()
    parent, _, leaf = key.rpartition(".")
    match = next((k for k in keys if k.rpartition(".")[2] == leaf), None)
    if match is None:
        sibling = closest(leaf, [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent])
        match = sibling and (f"{parent}.{sibling}" if parent else sibling)
    return f"did you mean {match!r}? {rest}" if match else rest


def _short(value: Any) -> str:
    """``repr(value)`` bounded in depth and length (a YAML alias bomb expands to millions)."""
    brief = reprlib.Repr()
    brief.maxlevel, brief.maxstring, brief.maxother = 3, 60, 60
    return brief.repr(value)


def _describe(exc: ValidationError) -> ConfigError:
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # typos first
    key = ".".join(str(p) for p in err["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if err["type"] == "extra_forbidden":
        return ConfigError(f"unknown config key {key!r}{more}",
                           _key_hint(key, "`kdistill run --print-config` lists every key "
                                          "with its value"))
    if err["type"] == "missing":
        return ConfigError(f"config key {key!r} is required{more}", "set it in the file or as key=value")
    if err["type"] == "value_error":  # raised by one of our validators, e.g. unknown loss
        error = err["ctx"]["error"]
        return ConfigError(f"config key {key!r}: {error}{more}",
                           getattr(error, "hint", "fix the value"))
    return ConfigError(f"config key {key!r}: {err['msg'].lower()}, got {_short(err.get('input'))}{more}",
                       "fix the value")


def validate(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _describe(exc) from None


def from_dict(data: dict[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """Validate a plain dict of config keys (left unchanged) after applying overrides."""
    return validate(apply_overrides(copy.deepcopy(data), overrides))


def load_config(preset: str | None = None, path: str | Path | None = None,
                overrides: Sequence[str] = ()) -> RunConfig:
    """Build a config from a preset (default ``mnist-spec``) or a YAML file, then ``key=value``
    overrides."""
    if preset and path:
        raise ConfigError("give either a preset or a config file, not both", "drop one of them")
    return from_dict(file_dict(path) if path else preset_dict(preset or DEFAULT_PRESET), overrides)


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
