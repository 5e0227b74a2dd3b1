"""Trained teachers kept between runs, keyed by a hash of everything that determines them.

An entry is a directory ``<root>/<key>/`` holding ``teacher.safetensors``, ``teacher.json`` (the
teacher's metrics as the run that trained it recorded them) and, once a run with fixed inputs
asked for them, ``train_logits-<hash>.safetensors`` (the teacher's logits on the training split).
The root is ``$KDISTILL_CACHE`` or ``<user cache>/kdistill/teachers``. Entries are written
into a temporary directory and renamed into place; an entry that fails to load is ignored (and
replaced by the next run), never half-used.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import platformdirs
import torch
from safetensors.torch import save as st_save
from torch import nn

from . import __version__
from .checkpoint import METADATA_KEY, load_weights, read_weights, save_weights
from .errors import KdistillError
from .files import atomic_write_bytes


def cache_root() -> Path:
    env = os.environ.get("KDISTILL_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("kdistill")) / "teachers"


def data_fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 of the bytes of the dataset's tensors (what a teacher was trained and tested on)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def teacher_key(recipe: dict) -> str:
    """The cache key of a teacher: a hash of its recipe (model, data, schedule, seed, ...) and
    the package version."""
    text = json.dumps({**recipe, "kdistill_version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class TeacherCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()

    def load(self, key: str, model: nn.Module) -> dict | None:
        """Load the cached teacher into ``model``; its recorded metrics, or None on a miss."""
        entry = self.root / key
        try:
            metrics = json.loads((entry / "teacher.json").read_text())
            load_weights(entry / "teacher.safetensors", model)
        except (OSError, ValueError, KdistillError):
            return None
        metrics["cached"] = str(entry)
        return metrics

    def store(self, key: str, model: nn.Module, metrics: dict, meta: dict) -> None:
        """Save a trained teacher under ``key`` (replacing any entry there)."""
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
            save_weights(tmp / "teacher.safetensors", model, meta)
            (tmp / "teacher.json").write_text(json.dumps(metrics))
            old = self.root / key
            if old.exists():
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, old)
        except OSError:  # a cache that cannot be written costs time later, never a run
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def load_logits(self, key: str, name: str) -> torch.Tensor | None:
        """Logits stored with the teacher ``key`` under ``name`` (None when absent or foreign)."""
        try:
            tensors, meta = read_weights(self.root / key / f"{name}.safetensors")
        except KdistillError:
            return None
        return tensors.get("logits") if meta.get("name") == name else None

    def store_logits(self, key: str, name: str, logits: torch.Tensor) -> None:
        data = st_save({"logits": logits.detach().cpu().contiguous()},
                       metadata={METADATA_KEY: json.dumps({"name": name})})
        try:
            atomic_write_bytes(self.root / key / f"{name}.safetensors", data)
        except OSError:
            pass
