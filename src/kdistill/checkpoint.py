"""Weights on disk: safetensors with JSON metadata, written atomically, refused when foreign.

kdistill writes only safetensors. A teacher you bring may also be a PyTorch checkpoint, read
with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only: one
that needs any other pickled object (a function, a class) is refused before it can run.
"""
from __future__ import annotations

import json
import random
import re
import struct
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .errors import CheckpointError
from .files import atomic_write_bytes

METADATA_KEY = "kdistill"


def save_weights(path: str | Path, model: nn.Module, metadata: dict[str, Any] | None = None) -> int:
    """Write ``model``'s state dict as safetensors (atomically); return the file size in bytes."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    data = st_save(state, metadata={METADATA_KEY: json.dumps(metadata or {}, sort_keys=True)})
    atomic_write_bytes(path, data)
    return len(data)


def _sniff(path: Path, data: bytes) -> None:
    """Refuse files that are plainly not safetensors before handing them to the parser.

    A safetensors file starts with its header's length (8 bytes, little-endian) and then ``{``;
    only a file without that shape is told apart as a pickle (``\x80``) or zip (``PK``) archive,
    since a header length can itself begin with those bytes.
    """
    header = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else None
    if header is not None and header <= len(data) - 8 and data[8:9] == b"{":
        return
    if data[:1] == b"\x80" or data[:2] == b"PK":
        raise CheckpointError(f"{path} is a pickle or torch.save archive, not safetensors",
                              "pickled weights can run code and are never loaded; convert them "
                              "with safetensors.torch.save_file")
    if header is None:
        raise CheckpointError(f"{path} is too short to be a safetensors file", "it is truncated")
    raise CheckpointError(f"{path} is not a valid safetensors file (truncated or foreign)",
                          "re-create it from the run that made it")


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and kdistill metadata of a safetensors file, with clear errors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} does not exist", "check the path") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}", "check permissions") from None
    _sniff(path, data)
    try:
        tensors = st_load(data)
        header_len = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "{}"))
    except (SafetensorError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}",
                              "it is truncated or corrupt; re-create it") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has kdistill metadata that is not a JSON object",
                              "it was not written by kdistill; re-create it")
    return tensors, meta


def load_weights(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Load safetensors weights into ``model`` (names and shapes must match exactly); return the
    metadata."""
    tensors, meta = read_weights(path)
    fit_state(path, model, tensors)
    return meta


STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")  # RepDistiller, Lightning, ...


def _torch_checkpoint(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, its refusals as one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4"
            with path.open("rb") as f:  # a file, not a path: torch guesses formats by suffix
                return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} does not exist", "check the path") from None
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        text = str(exc)
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", text)
        if found or "Weights only load failed" in text:
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(f"{path} needs arbitrary pickled objects{what}, which can run "
                                  "code: refused", "save only the state_dict, e.g. "
                                  "torch.save({'model': model.state_dict()}, path)") from None
        raise CheckpointError(f"{path} is not a readable safetensors file or PyTorch checkpoint: "
                              f"{text.split('. ')[0] if text else type(exc).__name__}",
                              "it is truncated or corrupt") from None


def _state_dict(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a state_dict, or one under a :data:`STATE_DICT_KEYS` key,
    with DataParallel / DDP's ``module.`` prefix removed."""
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} holds no state_dict (a dict of tensors, or one under "
                              f"{', '.join(repr(k) for k in STATE_DICT_KEYS)})",
                              "save model.state_dict()")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read_any_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from safetensors (kdistill's format) or a PyTorch checkpoint you bring."""
    path = Path(path)
    try:
        head = path.open("rb").read(9)
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} does not exist", "check the path") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}", "check permissions") from None
    is_torch = head[:2] == b"PK" or head[:1] == b"\x80"  # a torch.save zip, or a legacy pickle
    if not is_torch:
        return read_weights(path)[0]
    return _state_dict(path, _torch_checkpoint(path))


def fit_state(path: str | Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load ``tensors`` into ``model``: names and shapes must match exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in expected.keys() & tensors.keys() if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
                  if unexpected else f"shape of {wrong[0]} is {list(tensors[wrong[0]].shape)}, "
                  f"model needs {list(expected[wrong[0]].shape)}")
        raise CheckpointError(f"{path} does not fit the model: {detail}",
                              "load it into the architecture that saved it")
    model.load_state_dict(tensors)


def load_teacher_weights(path: str | Path, model: nn.Module) -> None:
    """A teacher's weights from safetensors or a PyTorch checkpoint (see :func:`read_any_weights`)."""
    fit_state(path, model, read_any_weights(path))


# ------------------------------------------------------------------ resumable train state
def _rng_states(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    tensors = {"rng/torch": torch.get_rng_state(), "rng/shuffle": generator.get_state(),
               "rng/numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_initialized():  # dropout on a GPU draws from the CUDA generator
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    meta = {"python": _jsonable(random.getstate()), "numpy": [np_state[0], *np_state[2:]]}
    return tensors, meta


def _jsonable(obj: Any) -> Any:
    return [_jsonable(x) for x in obj] if isinstance(obj, (tuple, list)) else obj


def _tupled(obj: Any) -> Any:
    return tuple(_tupled(x) for x in obj) if isinstance(obj, list) else obj


def save_train_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
                     epoch: int, history: list[dict]) -> None:
    """Everything needed to continue training after ``epoch`` exactly as if never stopped:
    weights, optimizer and scheduler state, the shuffling generator and the torch, numpy and
    Python RNGs."""
    tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_meta: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
    for index, entries in opt["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().contiguous().cpu()
            else:
                opt_meta["state"].setdefault(str(index), {})[key] = value
    rng_tensors, rng_meta = _rng_states(generator)
    tensors.update(rng_tensors)
    meta = {"kind": "train_state", "epoch": epoch, "history": history, "optimizer": opt_meta,
            "scheduler": scheduler.state_dict(), "rng": rng_meta}
    atomic_write_bytes(path, st_save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))


def _scheduler_state(saved: dict) -> dict:
    """A scheduler's state as read back from JSON: MultiStepLR's milestones are a Counter of
    step numbers, whose int keys JSON turned into strings (the decay would never come again)."""
    if isinstance(saved.get("milestones"), dict):
        return {**saved, "milestones": Counter({int(k): v for k, v in saved["milestones"].items()})}
    return saved


def load_train_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler,
                     generator: torch.Generator) -> tuple[int, list[dict]]:
    """Restore what :func:`save_train_state` wrote; return (epoch done, history so far)."""
    tensors, meta = read_weights(path)
    if meta.get("kind") != "train_state":
        raise CheckpointError(f"{path} is not a kdistill training checkpoint",
                              "resume only from the run directory that wrote it")
    model_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    expected = model.state_dict()
    if set(model_tensors) != set(expected) or any(
            model_tensors[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"{path} does not fit the model", "the run's config has changed")
    model.load_state_dict(model_tensors)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta["optimizer"]["state"].items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    scheduler.load_state_dict(_scheduler_state(meta["scheduler"]))
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    generator.set_state(tensors["rng/shuffle"])
    name, *rest = meta["rng"]["numpy"]
    np.random.set_state((name, tensors["rng/numpy"].numpy().astype(np.uint32), *rest))
    random.setstate(_tupled(meta["rng"]["python"]))
    return int(meta["epoch"]), list(meta["history"])
