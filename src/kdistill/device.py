"""Which device a run computes on, and the mixed-precision context that goes with it."""
from __future__ import annotations

import contextlib
import os

import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU. Under torchrun a bare ``cuda`` means this
    process's GPU (``LOCAL_RANK``). Asking for a device this machine lacks is a ConfigError."""
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise ConfigError(f"config key 'device': unknown device {name!r}",
                          f"choose one of: {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        kind = ("cuda" if torch.cuda.is_available()
                else "mps" if torch.backends.mps.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but this machine has no CUDA GPU",
                              "use device=cpu (or auto)")
        index = int(name.split(":", 1)[1]) if ":" in name else int(os.environ.get("LOCAL_RANK", 0))
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)",
                              "choose an existing GPU index")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} requested but MPS is not available",
                          "use device=cpu (or auto)")
    return torch.device(kind)


def describe(device: torch.device) -> str:
    """A human name for the device, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the training forward pass: ``fp32`` (off), ``bf16`` or ``fp16``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    # no cast cache: a CUDA graph must not capture casts cached outside it (each weight is
    # used once per forward pass here, so the cache saved nothing)
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
