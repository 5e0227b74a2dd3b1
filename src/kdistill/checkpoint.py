"""Weights on disk: safetensors with JSON metadata, written atomically, refused when foreign.

Loading never unpickles: a pickle or ``torch.save`` archive offered as weights is rejected.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

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
    """Refuse files that are plainly not safetensors before handing them to the parser."""
    if data[:1] == b"\x80" or data[:2] == b"PK":
        raise CheckpointError(f"{path} is a pickle or torch.save archive, not safetensors",
                              "pickled weights can run code and are never loaded; convert them "
                              "with safetensors.torch.save_file")
    if len(data) < 8:
        raise CheckpointError(f"{path} is too short to be a safetensors file", "it is truncated")
    (header,) = struct.unpack("<Q", data[:8])
    if header > len(data) - 8 or data[8:9] != b"{":
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
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}",
                              "it is truncated or corrupt; re-create it") from None
    return tensors, meta


def load_weights(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` (names and shapes must match exactly); return the metadata."""
    tensors, meta = read_weights(path)
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
    return meta
