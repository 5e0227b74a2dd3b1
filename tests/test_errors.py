"""Bad input, table-driven: exit code 2, one line on stderr naming the cause, no traceback, and
nothing already written is damaged (an earlier run and the data cache are hashed before/after)."""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kdistill.checkpoint import save_weights
from kdistill.cli import main
from kdistill.data.idx import encode_idx
from kdistill.data.sources import default_root, fetch
from kdistill.models import create_model

from conftest import QUICK, write_idx_dir

FAST = [*QUICK, "bench.enabled=false"]
IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def _idx_variant(tmp: Path, edit) -> str:
    """A copy of the synthetic IDX dataset with one file changed by ``edit(directory)``."""
    directory = write_idx_dir(tmp / "variant", n_train=64, n_test=32)
    edit(directory)
    return str(directory)


def _replace(name: str, data: bytes):
    return lambda d: (d / name).write_bytes(data)


def _weights(tmp: Path, kind: str) -> str:
    path = tmp / "w.safetensors"
    if kind == "pickle":  # a checkpoint that needs a pickled function: refused unrun
        torch.save({"model": create_model("mlp:784-64-10").state_dict(), "hook": os.system}, path)
    elif kind == "raw-pickle":
        path.write_bytes(pickle.dumps({"fc1.weight": [1.0]}))
    else:
        save_weights(path, create_model("mlp:784-64-10" if kind != "misfit" else "mlp:784-32-10"))
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:-100])
        elif kind == "garbage":
            path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    return str(path)


def _huge_header(tmp: Path) -> str:
    """A safetensors file whose 8-byte header length claims 2**60 bytes."""
    path = tmp / "huge.safetensors"
    path.write_bytes((2**60).to_bytes(8, "little") + b'{"a": 1}')
    return str(path)


def _corrupt_cache(tmp: Path) -> str:
    """A data root whose cached MNIST labels file has one flipped byte."""
    root = tmp / "root"
    shutil.copytree(default_root() / "mnist", root / "mnist")
    labels = root / "mnist" / LABELS
    data = bytearray(labels.read_bytes())
    data[100] = (data[100] + 1) % 10
    labels.write_bytes(bytes(data))
    return str(root)


def _user_module(tmp: Path, body: str) -> str:
    (tmp / "usermods").mkdir(exist_ok=True)
    (tmp / "usermods" / "badnets.py").write_text(body)
    return str(tmp / "usermods")

# ---------------------------------------------------------------- your own data, CIFAR archives
def _png(path: Path, size=(8, 8), mode: str = "RGB") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)
    return path


def _folder(tmp: Path, edit=None) -> str:
    """A small image folder (two classes, train and test) changed by ``edit(root)``."""
    root = tmp / "images"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(2):
                _png(root / split / cls / f"{i}.png")
    if edit is not None:
        edit(root)
    return str(root)


def _bomb_png(path: Path) -> None:
    """A PNG whose header claims 20000 x 20000 pixels (Pillow's bomb limit is ~179M)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def _npz(tmp: Path, **change) -> str:
    arrays = {"x_train": np.zeros((8, 8, 8, 3), np.uint8), "y_train": np.arange(8) % 2,
              "x_test": np.zeros((4, 8, 8, 3), np.uint8), "y_test": np.arange(4) % 2}
    arrays.update(change)
    path = tmp / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _cifar_root(tmp: Path, case: str | None) -> str:
    """A data root holding cifar10's archive: garbage (wrong sha256), or one of test_cifar's bad
    archives pinned to its own sha256 (the test-only seam; test_bad_input restores ARCHIVES)."""
    import dataclasses

    from kdistill.data import cifar

    from test_cifar import _bad_archive

    path = cifar.archive_path("cifar10", tmp / "root")
    if case is None:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not the archive")
    else:
        sha = _bad_archive(case, path)
        cifar.ARCHIVES["cifar10"] = dataclasses.replace(cifar.ARCHIVES["cifar10"], sha256=sha)
    return str(tmp / "root")


# ---------------------------------------------------------------- a run directory handed to you
def _copied_run(tmp: Path, edit=None) -> str:
    """A copy of the finished run (its files real, not links), changed by ``edit(copy)``."""
    copy = tmp / "handed"
    shutil.copytree(tmp / "earlier", copy)
    if edit is not None:
        edit(copy)
    return str(copy)


def _names_code(copy: Path, status: str = "complete") -> None:
    """The issue's run: config.yaml edited to build the student by os.system("touch PWNED")."""
    import yaml

    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["student"].update(model="os:system", kwargs={"command": "touch PWNED"})
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["status"] = status
    (copy / "metrics.json").write_text(json.dumps(metrics))


def _link(copy: Path, name: str, target: Path, directory: bool = False) -> None:
    path = copy / name
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    target.mkdir(exist_ok=True) if directory else target.write_text("{}")
    path.symlink_to(target)


def _metrics_text(text: str):
    return lambda copy: (copy / "metrics.json").write_text(text)


def _metrics_edit(edit):
    def apply(copy: Path) -> None:
        metrics = json.loads((copy / "metrics.json").read_text())
        edit(metrics)
        (copy / "metrics.json").write_text(json.dumps(metrics))
    return apply


def _sparse(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)  # claims the size without taking the disk
    return str(path)


def _resumed_elsewhere(copy: Path, root: str) -> None:
    """A stopped run whose config.yaml now names MNIST under another (corrupt) data root."""
    import yaml

    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["data"].update(name="mnist", root=root)
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    _metrics_edit(lambda m: m.update(status="running"))(copy)



# id -> (argv builder, expected pattern in the error line)
CASES = {
    "unknown-preset": (lambda t, d: ["run", "--preset", "nope"], r"unknown preset 'nope'"),
    "config-missing": (lambda t, d: ["run", "--config", str(t / "none.yaml")], r"does not exist"),
    "config-not-yaml": (lambda t, d: (t / "c.yaml").write_text("a: [b\n") and
                        ["run", "--config", str(t / "c.yaml")], r"not valid YAML"),
    "config-not-mapping": (lambda t, d: (t / "c.yaml").write_text("- 1\n") and
                           ["run", "--config", str(t / "c.yaml")], r"must be a YAML mapping"),
    "config-unknown-key": (lambda t, d: (t / "c.yaml").write_text("teacher: {depth: 3}\n") and
                           ["run", "--config", str(t / "c.yaml")], r"unknown config key 'teacher.depth'"),
    "override-unknown-key": (lambda t, d: ["run", "student.width=3"], r"unknown config key 'student.width'"),
    "override-syntax": (lambda t, d: ["run", "teacher.epochs"], r"not key=value"),
    "wrong-type": (lambda t, d: ["run", "teacher.epochs=many"], r"'teacher.epochs'"),
    "epochs<1": (lambda t, d: ["run", "student.epochs=0"], r"'student.epochs'.*greater than or equal to 1"),
    "batch<1": (lambda t, d: ["run", "teacher.batch_size=0"], r"'teacher.batch_size'"),
    "print-config-resume": (lambda t, d: ["run", "--resume", str(t), "--print-config"],
                            r"--print-config shows the config of a new run"),
    "micro>batch": (lambda t, d: ["run", f"data.name={d}", "student.batch_size=4",
                                  "student.micro_batches=5"], r"'student.micro_batches': 5 is more"),
    "lr<=0": (lambda t, d: ["run", "student.lr=0"], r"'student.lr'.*greater than 0"),
    "T<=0": (lambda t, d: ["run", "distill.temperature=-1"], r"'distill.temperature'"),
    "alpha>1": (lambda t, d: ["run", "distill.alpha=1.1"], r"'distill.alpha'"),
    "alpha<0": (lambda t, d: ["run", "distill.alpha=-0.5"], r"'distill.alpha'"),
    "unknown-dataset": (lambda t, d: ["run", "data.name=cifar-1000"], r"unknown dataset 'cifar-1000'"),
    "unknown-model": (lambda t, d: ["run", f"data.name={d}", "teacher.model=vgg99"],
                      r"'teacher.model'.*unknown model 'vgg99'"),
    "unknown-loss": (lambda t, d: ["run", "distill.loss=mse2"], r"unknown distillation loss 'mse2'"),
    "unknown-device": (lambda t, d: ["run", f"data.name={d}", "--device", "tpu"],
                       r"config key 'device': unknown device 'tpu'"),
    "missing-gpu": (lambda t, d: ["run", f"data.name={d}", "device=cuda:99"],
                    r"device 'cuda:99'"),
    "fp16-on-cpu": (lambda t, d: ["run", f"data.name={d}", "device=cpu", "precision=fp16"],
                    r"fp16 training needs a CUDA device"),
    "rotate>45": (lambda t, d: ["run", "data.rotate=90"], r"'data.rotate'"),
    "import-missing": (lambda t, d: ["run", f"data.name={d}", "student.model=no_pkg_here.nets:make"],
                       r"'student.model'.*cannot import"),
    "import-no-attr": (lambda t, d: ["run", f"data.name={d}", "student.model=kdistill.models:nothing"],
                       r"has no attribute 'nothing'"),
    "import-not-model": (lambda t, d: ["run", f"data.name={d}", "student.model=builtins:dict"],
                         r"not a torch nn.Module"),
    "class-mismatch": (lambda t, d: ["run", f"data.name={d}", "teacher.model=mlp:784-16-3"],
                       r"outputs \[3\].*10 classes"),
    "idx-missing-file": (lambda t, d: ["run", "data.name=" + _idx_variant(t, lambda v: (v / LABELS).unlink())],
                         r"has no train-labels-idx1-ubyte"),
    "idx-empty": (lambda t, d: ["run", "data.name=" + _idx_variant(t, _replace(IMAGES, b""))], r"too short"),
    "idx-truncated": (lambda t, d: ["run", "data.name=" + _idx_variant(
        t, lambda v: (v / IMAGES).write_bytes((v / IMAGES).read_bytes()[:-7]))], r"truncated or padded"),
    "idx-wrong-magic": (lambda t, d: ["run", "data.name=" + _idx_variant(
        t, lambda v: (v / IMAGES).write_bytes(b"\x1f\x8b" + (v / IMAGES).read_bytes()[2:]))], r"bad magic"),
    "idx-wrong-size": (lambda t, d: ["run", "data.name=" + _idx_variant(
        t, lambda v: (v / IMAGES).write_bytes((v / IMAGES).read_bytes() + b"\0" * 9))], r"truncated or padded"),
    "idx-bad-gzip": (lambda t, d: ["run", "data.name=" + _idx_variant(
        t, lambda v: ((v / LABELS).unlink(), (v / f"{LABELS}.gz").write_bytes(b"\x1f\x8bnot gzip")))],
                     r"cannot read"),
    "count-mismatch": (lambda t, d: ["run", "data.name=" + _idx_variant(
        t, _replace(LABELS, encode_idx(np.zeros(63, np.uint8))))], r"64 images but 63 labels"),
    "labels-out-of-range": (lambda t, d: ["run", "data.name=" + _idx_variant(
        t, lambda v: (v / "classes.txt").write_text("a\nb\nc\n"))], r"label 9 but only 3 classes"),
    "checksum-mismatch": (lambda t, d: ["run", "--data-root", _corrupt_cache(t)], r"sha256"),
    "weights-pickle": (lambda t, d: ["run", f"data.name={d}", *FAST, "teacher.weights=" + _weights(t, "pickle")],
                       r"arbitrary pickled objects \(posix\.system\).*refused"),
    "weights-raw-pickle": (lambda t, d: ["run", f"data.name={d}", *FAST,
                                         "teacher.weights=" + _weights(t, "raw-pickle")], r"pickle"),
    "weights-truncated": (lambda t, d: ["run", f"data.name={d}", *FAST,
                                        "teacher.weights=" + _weights(t, "truncated")], r"not a valid safetensors"),
    "weights-garbage": (lambda t, d: ["run", f"data.name={d}", *FAST,
                                      "teacher.weights=" + _weights(t, "garbage")], r"not a valid safetensors"),
    "weights-misfit": (lambda t, d: ["run", f"data.name={d}", *FAST,
                                     "teacher.weights=" + _weights(t, "misfit")], r"does not fit the model"),
    "weights-missing": (lambda t, d: ["run", f"data.name={d}", *FAST, f"teacher.weights={t}/no.safetensors"],
                        r"does not exist"),
    "out-unwritable": (lambda t, d: (t / "file").write_text("x") and
                       ["run", f"data.name={d}", *FAST, "--out", str(t / "file" / "run")],
                       r"cannot write to output directory"),
    "out-holds-run": (lambda t, d: ["run", f"data.name={d}", *FAST, "--out", str(t / "earlier")],
                      r"already holds a run"),
    "teacher-mean-channels": (lambda t, d: ["run", f"data.name={d}", *FAST, "teacher.mean=[0.1,0.2,0.3]"],
                              r"'teacher.mean': 3 values for 1-channel images"),
    "val-too-large": (lambda t, d: ["run", f"data.name={d}", "data.val_size=100000"], r"'data.val_size'"),
    "resume-nothing": (lambda t, d: ["run", "--resume", str(t / "nowhere")],
                       r"is not a kdistill run directory \(no such directory\)"),
    "resume-complete": (lambda t, d: ["run", "--resume", str(t / "earlier")], r"already complete"),
    "resume-with-overrides": (lambda t, d: ["run", "--resume", str(t / "earlier"), "seed=3"],
                              r"--resume continues a run with its own config"),
    "report-no-run": (lambda t, d: ["report", str(t / "nowhere")],
                      r"is not a kdistill run directory \(no such directory\)"),
    "fetch-unknown": (lambda t, d: ["data", "fetch", "svhn"], r"unknown dataset 'svhn'"),
    "folder-no-images": (lambda t, d: ["run", "data.name=" + _folder(t, lambda r: [
        p.unlink() for p in r.rglob("*.png")])], r"no images|empty|no image"),
    "folder-empty-class": (lambda t, d: ["run", "data.name=" + _folder(
        t, lambda r: (r / "train" / "bird").mkdir())], r"bird"),
    "folder-truncated-image": (lambda t, d: ["run", "data.name=" + _folder(t, lambda r: (
        r / "train/cat/0.png").write_bytes((r / "train/cat/0.png").read_bytes()[:40]))], r"0\.png"),
    "folder-decompression-bomb": (lambda t, d: ["run", "data.name=" + _folder(
        t, lambda r: _bomb_png(r / "train/cat/0.png"))], r"(?i)decompression bomb|pixels"),
    "folder-mixed-sizes": (lambda t, d: ["run", "data.name=" + _folder(
        t, lambda r: _png(r / "train/cat/0.png", (9, 8)))], r"image_size"),
    "npz-object-array": (lambda t, d: ["run", "data.name=" + _npz(
        t, x_train=np.array([np.zeros(3), "x"], dtype=object))], r"object array"),
    "npz-float": (lambda t, d: ["run", "data.name=" + _npz(
        t, x_train=np.zeros((8, 8, 8, 3), np.float32))], r"uint8"),
    "npz-int16": (lambda t, d: ["run", "data.name=" + _npz(
        t, x_train=np.zeros((8, 8, 8, 3), np.int16))], r"uint8"),
    "npz-labels-out-of-range": (lambda t, d: ["run", "data.name=" + _npz(
        t, classes=np.array(["a", "b"]), y_test=np.array([0, 1, 2, 1]))], r"label 2"),
    "npz-labels-wrong-length": (lambda t, d: ["run", "data.name=" + _npz(
        t, y_train=np.arange(7) % 2)], r"7 labels"),
    "cifar-offline-missing": (lambda t, d: ["run", "data.name=cifar10", "--data-root", str(t / "empty")],
                              r"cifar-10-python\.tar\.gz.*6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
    "cifar-wrong-sha256": (lambda t, d: ["run", "data.name=cifar10", "--data-root", _cifar_root(t, None)],
                           r"sha256"),
    "cifar-not-gzip": (lambda t, d: ["run", "data.name=cifar10", "--data-root",
                                     _cifar_root(t, "not gzip")], r"(?i)gzip"),
    "cifar-not-tar": (lambda t, d: ["run", "data.name=cifar10", "--data-root",
                                    _cifar_root(t, "gzip, not tar")], r"(?i)tar"),
    "cifar-member-dotdot": (lambda t, d: ["run", "data.name=cifar10", "--data-root",
                                          _cifar_root(t, "member ../evil")], r"\.\./evil"),
    "cifar-symlink-member": (lambda t, d: ["run", "data.name=cifar10", "--data-root",
                                           _cifar_root(t, "symlink member")], r"(?i)link"),
    "run-names-code-bench": (lambda t, d: ["bench", _copied_run(t, _names_code)],
                             r"names code to run: os:system.*--trust-code"),
    "run-names-code-export": (lambda t, d: ["export", _copied_run(t, _names_code)],
                              r"names code to run: os:system.*--trust-code"),
    "run-names-code-resume": (lambda t, d: ["run", "--resume", _copied_run(
        t, lambda c: _names_code(c, "running"))], r"names code to run: os:system.*--trust-code"),
    "run-metrics-symlink": (lambda t, d: ["report", _copied_run(
        t, lambda c: _link(c, "metrics.json", t / "elsewhere.json"))], r"symbolic link"),
    "run-plots-symlink": (lambda t, d: ["report", _copied_run(
        t, lambda c: _link(c, "plots", t / "outside", directory=True))], r"symbolic link"),
    "run-report-html-symlink": (lambda t, d: ["report", _copied_run(
        t, lambda c: _link(c, "report.html", t / "victim.html"))], r"symbolic link"),
    "run-metrics-truncated": (lambda t, d: ["report", _copied_run(t, _metrics_text('{"models": '))],
                              r"is not a kdistill run directory \(metrics.json is not valid JSON"),
    "run-metrics-list": (lambda t, d: ["report", _copied_run(t, _metrics_text("[]"))],
                         r"is not a kdistill run directory \(metrics.json"),
    "run-metrics-empty-models": (lambda t, d: ["report", _copied_run(t, _metrics_text('{"models": {}}'))],
                                 r"metrics.json: status: field required"),
    "run-metrics-wrong-type": (lambda t, d: ["bench", _copied_run(t, _metrics_edit(
        lambda m: m["models"]["student"].update(test_accuracy="high")))],
        r"metrics.json: models.student.test_accuracy"),
    "run-metrics-huge": (lambda t, d: ["report", _copied_run(t, lambda c: _sparse(
        c / "metrics.json", 65 * 2**20))], r"metrics.json is 68,157,440 bytes, more than"),
    "run-missing-everywhere-bench": (lambda t, d: ["bench", str(t / "nowhere")],
                                     r"is not a kdistill run directory \(no such directory\)"),
    "resume-changed-data-root": (lambda t, d: ["run", "--resume", _copied_run(
        t, lambda c: _resumed_elsewhere(c, _corrupt_cache(t)))], r"sha256"),
    "config-huge": (lambda t, d: ["run", "--config", _sparse(t / "big.yaml", 2 * 2**20)],
                    r"more than the 1,048,576 a config may take"),
    "config-deep-yaml": (lambda t, d: (t / "deep.yaml").write_text("a: " + "[" * 50000) and
                         ["run", "--config", str(t / "deep.yaml")], r"nests too deeply|not valid YAML"),
    "idx-header-claims-terabytes": (lambda t, d: ["run", "data.name=" + _idx_variant(
        t, _replace(IMAGES, bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") * 3 + b"\0" * 64))],
        r"truncated or padded"),
    "weights-header-claims-exabytes": (lambda t, d: ["run", f"data.name={d}", *FAST,
                                                     "teacher.weights=" + _huge_header(t)],
                                       r"not a valid safetensors"),
}


def _snapshot(*dirs: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A finished run and the real data cache: neither may change when bad input is refused."""
    base = tmp_path_factory.mktemp("errors")
    data = write_idx_dir(base / "data")
    fetch("mnist")
    assert main(["run", "--quiet", "--out", str(base / "earlier"), f"data.name={data}", *FAST]) == 0
    return base, data


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, earlier, tmp_path, capsys, monkeypatch):
    base, data = earlier
    for name in ("earlier",):
        (tmp_path / name).symlink_to(base / name)
    from kdistill.data import cifar

    monkeypatch.setattr(cifar, "ARCHIVES", dict(cifar.ARCHIVES))  # rows may pin a test archive
    build, pattern = CASES[case]
    argv = build(tmp_path, data)
    monkeypatch.syspath_prepend(str(tmp_path))
    protected = [base / "earlier", default_root() / "mnist"]
    before = _snapshot(*protected)
    code = main(["run", "--quiet", *argv[1:]] if argv[0] == "run" else argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("kdistill: error: ") and re.search(pattern, lines[0]), lines[0]
    assert _snapshot(*protected) == before


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


def test_disk_full_mid_run_keeps_earlier_files(earlier, tmp_path, capsys, monkeypatch):
    """ENOSPC on the 4th fsync (the teacher's first checkpoint): one line, no temp files left,
    and what was written before is still valid."""
    base, data = earlier
    real_fsync, calls = os.fsync, []

    def full(fd):
        calls.append(fd)
        if len(calls) >= 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    code = main(["run", "--quiet", "--out", str(out), f"data.name={data}", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left" in err, err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((out / "metrics.json").read_text())["name"]
    assert (out / "config.yaml").read_text().startswith("description")


def test_nan_loss_names_epoch_and_step_and_keeps_last_checkpoint(earlier, tmp_path, capsys, monkeypatch):
    base, data = earlier
    _user_module(tmp_path, (
        "import torch\nfrom torch import nn\n"
        "class Bomb(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.fc = nn.Linear(784, 10); self.calls = 0\n"
        "    def forward(self, x):\n"
        "        self.calls += self.training\n"
        "        out = self.fc(x.flatten(1))\n"
        "        return out * float('nan') if self.calls > 20 else out\n"))
    monkeypatch.syspath_prepend(str(tmp_path / "usermods"))
    out = tmp_path / "run"
    code = main(["run", "--quiet", "--out", str(out), f"data.name={data}", *FAST,
                 "teacher.model=badnets:Bomb", "teacher.batch_size=32"])  # 16 steps per epoch
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "loss became nan at epoch 2, step 5" in err
    from kdistill.checkpoint import read_weights
    _, meta = read_weights(out / "checkpoints" / "teacher.safetensors")
    assert meta["epoch"] == 1
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"
