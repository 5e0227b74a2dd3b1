"""Images of any shape end to end: [N, C, H, W] datasets, per-channel normalisation, RGB
augmentation, models told the data's shape, and a synthetic 3x32x32 run with every artefact."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import kdistill
import kdistill.rundir
from kdistill.cli import main
from kdistill.data import Dataset, Images, load_dataset, normalize
from kdistill.data.arrays import resize, to_channels
from kdistill.data.augment import Augment, random_erase, random_warp, shift
from kdistill.errors import DataError
from kdistill.models import create_model, list_models

from test_own_data import write_folder

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def colour_images(n: int, seed: int, classes: int = 10, size: int = 32):
    """Learnable 3 x size x size images whatever the crop or flip: class k is a colour (its hue)
    plus noise, so accuracy far above chance needs the three channels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    hues = np.stack([np.cos(2 * np.pi * labels / classes), np.sin(2 * np.pi * labels / classes),
                     np.cos(4 * np.pi * labels / classes)], 1)
    base = (128 + 70 * hues)[:, :, None, None]
    images = base + rng.normal(0, 30, (n, 3, size, size))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def test_per_channel_normalize_matches_the_formula():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    out = normalize(x, CIFAR_MEAN, CIFAR_STD)
    want = (x.double() / 255 - torch.tensor(CIFAR_MEAN).double().view(1, 3, 1, 1)) \
        / torch.tensor(CIFAR_STD).double().view(1, 3, 1, 1)
    assert out.shape == (4, 3, 5, 5) and torch.allclose(out.double(), want, atol=1e-5)
    # one value for every channel is the spec's scalar arithmetic, bit for bit
    grey = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(normalize(grey, 0.5, 0.5), (grey.float() * (1 / 127.5)).sub_(1.0))
    assert torch.equal(normalize(grey[:, 0], (0.5,), (0.5,)), normalize(grey, 0.5, 0.5))
    with pytest.raises(ValueError, match="3 means"):
        normalize(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), CIFAR_MEAN, CIFAR_STD)


def test_shift_moves_every_channel_alike():
    x = torch.randint(0, 256, (6, 3, 9, 7), dtype=torch.uint8)
    dy, dx = torch.randint(0, 5, (6, 1)), torch.randint(0, 5, (6, 1))
    out = shift(x, dy, dx, 2)
    for c in range(3):
        assert torch.equal(out[:, c], shift(x[:, c], dy, dx, 2))
    # pad-and-crop, written out: a zero-padded image cropped at (dy, dx)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        a, b = int(dy[i]), int(dx[i])
        assert torch.equal(out[i], padded[i, :, a:a + 9, b:b + 7])


def test_flips_and_crops_enumerate_their_views():
    augment = Augment(translate=1, hflip=True)
    assert augment.views == 18 and Augment(hflip=True).views == 2 and Augment(hflip=True)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out, view = augment(images, torch.Generator().manual_seed(0))
    flipped = (view >= 9)
    assert 10 < int(flipped.sum()) < 54  # about half the images are flipped
    for i in range(64):
        assert torch.equal(out[i], augment.view(images[i:i + 1], int(view[i]))[0])
    assert torch.equal(augment.view(images, 4), images)  # centre, not flipped
    assert torch.equal(augment.view(images, 13), images.flip(-1))  # centre, flipped
    # a whole epoch's draws at once equal one batch's draws when the epoch is one batch
    drawn = augment.draw_shifts([64], torch.Generator().manual_seed(0))[0]
    assert torch.equal(augment.apply_shifts(images, drawn)[0], out)


def test_warp_and_erase_treat_channels_alike():
    x = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8).expand(-1, 3, -1, -1)
    warped = random_warp(x, 20, 0.1, torch.Generator().manual_seed(1))
    erased = random_erase(x, 4, torch.Generator().manual_seed(1))
    assert warped.shape == erased.shape == (5, 3, 12, 12)
    for out in (warped, erased):
        assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_channel_and_size_conversion():
    rgb = torch.randint(0, 256, (3, 3, 6, 6), dtype=torch.uint8)
    grey = to_channels(rgb, 1)
    pil = np.stack([np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).convert("L"))
                    for im in rgb])
    assert grey.shape == (3, 1, 6, 6) and np.array_equal(grey[:, 0].numpy(), pil)
    assert torch.equal(to_channels(grey, 3)[:, 2], grey[:, 0])
    assert resize(rgb, (12, 10)).shape == (3, 3, 12, 10)
    flat = torch.full((2, 1, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(resize(flat, (32, 32)), torch.full((2, 1, 32, 32), 77, dtype=torch.uint8))


def test_dataset_from_arrays_and_from_torch():
    x, y = colour_images(20, 0)
    nhwc = x.transpose(0, 2, 3, 1)
    a = Dataset.from_arrays(nhwc, y, torch.from_numpy(x[:8]), torch.from_numpy(y[:8]),
                            classes=[f"c{i}" for i in range(10)])
    assert a.shape == (3, 32, 32) and torch.equal(a.train_images, torch.from_numpy(x))
    assert a.num_classes == 10 and len(a.mean) == 3 and all(0 < s < 1 for s in a.std)

    class Pils(torch.utils.data.Dataset):
        classes = [f"c{i}" for i in range(10)]

        def __len__(self):
            return 20

        def __getitem__(self, i):
            return Image.fromarray(nhwc[i]), int(y[i])

    class Floats(Pils):
        def __getitem__(self, i):
            return torch.from_numpy(x[i]).float() / 255, int(y[i])  # ToTensor's output

    b = Dataset.from_torch(Pils(), Floats())
    assert torch.equal(b.train_images, a.train_images) and torch.equal(b.test_images[:8], a.test_images)
    assert b.classes == a.classes
    with pytest.raises(DataError, match="label 9 but only 2 classes"):
        Dataset.from_arrays(x, y, x, y, classes=["a", "b"])
    with pytest.raises(DataError, match="uint8"):
        Dataset.from_arrays(x.astype(np.float32), y, x, y)


def test_models_are_told_the_data():
    net = create_model("cnn", data_shape=(3, 32, 32), num_classes=7, width=4)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert create_model("mlp:auto-16-5", data_shape=(3, 8, 8))(torch.zeros(1, 3, 8, 8)).shape == (1, 5)
    assert create_model("spec-student", data_shape=(3, 32, 32), num_classes=4).fc1.in_features == 3072
    assert create_model("resnet8", data_shape=(1, 28, 28), num_classes=10)(
        torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # what the user's kwargs say wins over what the data says
    assert create_model("spec-student", data_shape=(1, 28, 28), num_classes=10,
                        in_features=784).fc1.in_features == 784
    described = list_models()
    assert "told: num_classes, in_channels, image_size" in described["cnn"]
    assert "in_channels" in described["resnet32x4"]


def test_registered_normalisation_and_conversion():
    mnist = load_dataset("mnist")
    assert mnist.shape == (1, 28, 28) and mnist.mean == (0.5,) and mnist.std == (0.5,)
    rgb = load_dataset("mnist", channels=3, image_size=32)
    assert rgb.shape == (3, 32, 32) and rgb.train_images.dtype == torch.uint8
    assert torch.equal(rgb.train_images[:, 0], rgb.train_images[:, 2])


FAST = ["teacher.model=cnn", "teacher.kwargs={width: 8}", "teacher.epochs=3",
        "teacher.batch_size=32", "teacher.lr=0.003", "student.model=mlp:auto-32-10",
        "student.epochs=3", "student.batch_size=32", "student.lr=0.003",
        "distill.loss=hinton", "distill.temperature=4", "distill.alpha=0.9",
        "data.crop_padding=4", "data.hflip=true",
        "bench.latency_repeats=5", "bench.throughput_repeats=2", "bench.throughput_batches=[1,32]"]


@pytest.mark.parametrize("form", ["npz", "folder"])
def test_synthetic_rgb_runs_end_to_end(form, tmp_path):
    """3x32x32, ten classes, crop + flip: report, plots, ONNX with parity, int8 and bench."""
    train, test = colour_images(400, 1), colour_images(100, 2)
    if form == "npz":
        data = tmp_path / "colours.npz"
        np.savez(data, x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
    else:
        data = tmp_path / "colours"
        write_folder(data, {"train": train, "test": test}, classes=[f"k{i}" for i in range(10)])
    out = tmp_path / "run"
    assert main(["run", "--quiet", "--out", str(out), f"data.name={data}", *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["dataset"]["shape"] == [3, 32, 32]
    assert len(metrics["dataset"]["mean"]) == 3
    models = metrics["models"]
    assert models["teacher"]["test_accuracy"] > 0.6 and models["student"]["test_accuracy"] > 0.6
    runtimes = metrics["deployment"]["student"]["runtimes"]
    assert {"eager", "onnx", "int8"} <= set(runtimes)
    assert (out / "report.html").is_file() and (out / "plots").is_dir()
    assert main(["export", str(out), "--onnx"]) == 0
    session = __import__("onnxruntime").InferenceSession(str(out / "student.onnx"))
    assert session.get_inputs()[0].shape[1:] == [3, 32, 32]


def test_python_api_runs_on_arrays(tmp_path):
    (tx, ty), (sx, sy) = colour_images(200, 3), colour_images(50, 4)
    data = Dataset.from_arrays(tx, ty, sx, sy, name="colours")
    result = kdistill.run("mnist-spec", out=tmp_path / "run", data=data, quiet=True,
                          overrides=[*FAST[:-3], "bench.enabled=false", "data.mean=null",
                                     "data.std=null"])
    assert result.metrics["dataset"]["name"] == "colours"
    assert result.metrics["dataset"]["mean"] == list(data.mean)
    assert result.metrics["config"]["data"]["name"] == "python:colours"
    assert result.metrics["models"]["student"]["test_accuracy"] > 0.5
    with pytest.raises(DataError, match="given in Python"):
        kdistill.rundir.load_run(tmp_path / "run")
    assert kdistill.rundir.load_run(tmp_path / "run", data)[3].images.shape[1:] == (3, 32, 32)
