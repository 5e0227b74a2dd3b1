"""Shared fixtures: a small synthetic IDX dataset, real MNIST from the offline source, a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdistill.data.idx import encode_idx

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _offline_and_isolated(tmp_path_factory):
    """No test reaches the network unless it says so; real data is fetched once per session
    into a fresh root, and no test reads or fills the user's teacher cache: module-scoped
    fixtures, set up before ``_own_teacher_cache``, get a fresh session cache (a teacher cached
    by other code or on another CPU would not be the one the test trains). Set before any other
    fixture runs; subprocesses inherit it."""
    base = tmp_path_factory.getbasetemp()
    (base / "data-cache").mkdir(exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("KDISTILL_OFFLINE", "KDISTILL_DATA", "KDISTILL_CACHE")}
    os.environ.update(KDISTILL_OFFLINE="1", KDISTILL_DATA=str(base / "data-cache"),
                      KDISTILL_CACHE=str(base / "session-teacher-cache"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _own_teacher_cache(tmp_path, monkeypatch):
    """Each test starts with an empty teacher cache of its own (runs within a test share it)."""
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "teacher-cache"))


def make_images(n: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 uint8 images: class k lights up a 4-pixel-wide band at row 2k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 * k + 2: 2 * k + 6, 4:24] = 220
    return images, labels


def write_idx_dir(directory: Path, n_train: int = 512, n_test: int = 128, classes: int = 10) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tx, ty = make_images(n_train, classes, seed=1)
    sx, sy = make_images(n_test, classes, seed=2)
    for name, arr in {"train-images-idx3-ubyte": tx, "train-labels-idx1-ubyte": ty,
                      "t10k-images-idx3-ubyte": sx, "t10k-labels-idx1-ubyte": sy}.items():
        (directory / name).write_bytes(encode_idx(arr))
    return directory


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    """A directory with a small synthetic MNIST-style dataset (usable as data.name)."""
    return write_idx_dir(tmp_path / "synthetic")


# Overrides that make a run on the synthetic data take a second or two.
QUICK = ["teacher.model=mlp:784-64-10", "teacher.epochs=2", "student.epochs=2",
         "bench.latency_repeats=5", "bench.throughput_repeats=2", "bench.throughput_batches=[1,64]",
         "bench.onnx=false"]


def kdistill(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "kdistill", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def assert_same_file(a: Path, b: Path, what: str = "") -> None:
    """``a`` and ``b`` hold the same bytes. A mismatch of weight files names the tensors that
    differ and by how much, instead of pytest diffing the raw bytes (hundreds of KB through
    difflib: minutes on a slow machine, and no clue which tensor moved)."""
    if a.read_bytes() == b.read_bytes():
        return
    detail = ""
    if a.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        x, y = load_file(a), load_file(b)
        moved = sorted(k for k in x.keys() & y.keys()
                       if x[k].shape != y[k].shape or not x[k].equal(y[k]))
        worst = {k: float((x[k].double() - y[k].double()).abs().max()) for k in moved
                 if x[k].shape == y[k].shape}
        with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
            same_meta = fa.metadata() == fb.metadata()
        detail = (f": tensors only in one {sorted(x.keys() ^ y.keys())}, differing {moved} "
                  f"(largest |difference| {worst}), metadata {'same' if same_meta else 'differs'}")
    pytest.fail(f"{what or a.name}: {a} and {b} differ{detail}")
