"""Datasets as whole uint8 tensors [N, C, H, W] in memory, from any of the supported sources.

``data.name`` is a registered dataset (``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``:
verified by sha256) or a path to your own data: an image-folder tree (``train/<class>/*.png``),
a ``.npz`` file, or a directory of the four MNIST-style IDX files (optional ``classes.txt``).
The whole dataset lives in memory: what does not fit is refused before it is decoded.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..suggest import hint
from . import cifar, folders, npz, sources
from .arrays import (as_labels, as_nchw, channel_stats, check_split, parse_size, resize,
                     to_channels)
from .idx import parse_idx

SPLITS = ("train", "val", "test")
# customary normalisation constants (the MNIST tutorial's 0.5 / 0.5 for the MNIST family)
NORMALIZATION = {
    "mnist": ((0.5,), (0.5,)),
    "fashion-mnist": ((0.5,), (0.5,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


@dataclass
class Dataset:
    """A labelled image dataset in memory: images uint8 [N, C, H, W], labels int64 [N], class
    names, the normalisation customary for it (per channel), and an optional validation split
    that came with the data (else ``data.val_size`` holds one out of the training set)."""

    name: str
    classes: tuple[str, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: dict = field(default_factory=dict)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's (C, H, W)."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def subset(self, n_train: int | None) -> "Dataset":
        """The first ``n_train`` training examples (all of them when None); other splits kept."""
        if n_train is None or n_train >= len(self.train_labels):
            return self
        return replace(self, train_images=self.train_images[:n_train],
                       train_labels=self.train_labels[:n_train])

    def converted(self, channels: int | None = None, size: Any = None) -> "Dataset":
        """Every split with ``channels`` (1 or 3) and resized to ``size`` (N or [H, W])."""
        hw = parse_size(size)
        if channels is None and (hw is None or hw == self.shape[1:]):
            return self
        out = {}
        for split in SPLITS:
            images = getattr(self, f"{split}_images")
            if images is not None:
                images = to_channels(images, channels) if channels else images
                out[f"{split}_images"] = resize(images, hw) if hw else images
        c = out["train_images"].shape[1]
        stats = {} if len(self.mean) in (1, c) else dict(zip(("mean", "std"),
                                                              channel_stats(out["train_images"])))
        return replace(self, **out, **stats)

    @classmethod
    def from_arrays(cls, train_x: Any, train_y: Any, test_x: Any, test_y: Any, *,
                    classes: Sequence[str] | None = None, val_x: Any = None, val_y: Any = None,
                    name: str = "arrays", mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> "Dataset":
        """A dataset from numpy arrays or tensors: uint8 images [N, H, W], [N, H, W, C] or
        [N, C, H, W] (C = 1 or 3) and integer labels. Normalisation defaults to the training
        images' per-channel mean and std."""
        arrays = {"train_images": train_x, "train_labels": train_y,
                  "test_images": test_x, "test_labels": test_y}
        if val_x is not None or val_y is not None:
            arrays.update(val_images=val_x, val_labels=val_y)
        arrays = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
                  for k, v in arrays.items()}
        dataset = build(name, arrays, tuple(classes) if classes is not None else None,
                        {"source": "arrays"})
        if mean is not None and std is not None:
            return replace(dataset, mean=tuple(mean), std=tuple(std))
        return dataset

    @classmethod
    def from_torch(cls, train: Any, test: Any, *, classes: Sequence[str] | None = None,
                   name: str = "torch") -> "Dataset":
        """A dataset from map-style torch datasets yielding (PIL image or tensor, label): read
        once into memory. Float tensors are taken as pixels in [0, 1] (``ToTensor``'s output)."""
        arrays = [_materialise(data, split) for data, split in ((train, "train"), (test, "test"))]
        classes = classes if classes is not None else getattr(train, "classes", None)
        return cls.from_arrays(*arrays[0], *arrays[1], classes=classes, name=name)


def _pixels(item: Any, where: str) -> np.ndarray:
    """One image from a torch dataset as a uint8 array [C, H, W] (PIL, tensor or array)."""
    if hasattr(item, "convert") and hasattr(item, "mode"):  # a PIL image
        array = np.asarray(item.convert("L" if item.mode in ("L", "1", "I", "I;16", "F")
                                        else "RGB"))
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    tensor = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item)
    if tensor.is_floating_point():
        tensor = (tensor.clamp(0, 1) * 255).round()
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise DataError(f"{where} is {list(tensor.shape)}, not one image",
                        "a torch dataset must yield (image, label) with one image [C, H, W]")
    return tensor.to(torch.uint8).numpy()


def _materialise(data: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        items = [data[i] for i in range(len(data))]
    except (TypeError, IndexError) as exc:
        raise DataError(f"cannot read the {split} torch dataset: {exc}",
                        "give a map-style dataset (len() and [i]) yielding (image, label)") from None
    if not items:
        raise DataError(f"the {split} torch dataset is empty", "give at least one example")
    images = [_pixels(x, f"{split} example {i}") for i, (x, _) in enumerate(items)]
    if len({im.shape for im in images}) > 1:
        raise DataError(f"the {split} torch dataset holds images of several sizes",
                        "resize them to one size in the dataset's transform")
    return np.stack(images), np.asarray([int(y) for _, y in items], dtype=np.int64)


def build(name: str, arrays: dict[str, np.ndarray], classes: tuple[str, ...] | None,
          source: dict, normalization: tuple | None = None) -> Dataset:
    """Check arrays of any accepted layout and hold them as a :class:`Dataset`; without a
    class list, classes are "0".."K-1"; without customary constants, the per-channel stats."""
    images = {s: as_nchw(arrays[f"{s}_images"], f"{name} {s} images")
              for s in SPLITS if arrays.get(f"{s}_images") is not None}
    labels = {s: as_labels(arrays[f"{s}_labels"], f"{name} {s} labels") for s in images}
    if "train" not in images or "test" not in images:
        raise DataError(f"{name} needs train and test images", "give both splits")
    if classes is None:
        top = max(int(v.max()) + 1 if v.size else 0 for v in labels.values())
        classes = tuple(str(i) for i in range(top))
    for split in images:
        check_split(name, split, images[split], labels[split], len(classes),
                    None if split == "train" else tuple(images["train"].shape[1:]))
    tensors = {f"{s}_{k}": torch.from_numpy(np.array(v[s])) for k, v in
               (("images", images), ("labels", labels)) for s in images}
    mean, std = normalization or channel_stats(tensors["train_images"])
    return Dataset(name, tuple(classes), source=source, mean=tuple(mean), std=tuple(std),
                   **tensors)


# -------------------------------------------------------------------------- the registry
def list_datasets() -> list[str]:
    return [*sources.SOURCES, *cifar.ARCHIVES]


def describe_registered(name: str) -> dict:
    """What ``kdistill data info`` shows of a registered dataset, without loading it."""
    if name in cifar.ARCHIVES:
        a = cifar.ARCHIVES[name]
        return {"description": a.description, "shape": [3, 32, 32], "classes": len(a.classes),
                "files": {a.filename: a.sha256}}
    s = sources.get_source(name)
    return {"description": s.description, "shape": [1, 28, 28], "classes": len(s.classes),
            "files": {f.filename: f.sha256 for f in s.files.values()}}


def fetch_registered(name: str, root: str | Path | None = None,
                     offline: bool | None = None) -> Path:
    """Materialise and verify a registered dataset; return where it lives."""
    if name not in list_datasets():
        raise DataError(f"unknown dataset {name!r}",
                        hint(name, list_datasets(), f"choose one of: {', '.join(list_datasets())}"))
    if name in cifar.ARCHIVES:
        path = cifar.fetch_archive(name, root, offline=offline)
        cifar.load_cifar(name, root)  # decode and verify once
        return path.parent
    directory = sources.fetch(name, root, offline=offline)
    sources.read_verified(name, root)
    return directory


def _registered(name: str, root: str | Path | None, labels: str) -> Dataset:
    normalization = NORMALIZATION.get(name, ((0.5,), (0.5,)))
    if name in cifar.ARCHIVES:
        arrays = cifar.load_cifar(name, root, coarse=labels == "coarse")
        classes = arrays.pop("classes")
        origin = str(cifar.archive_path(name, root))
        return build(name, arrays, classes, {"source": "archive", "origin": origin,
                                             "files": describe_registered(name)["files"]},
                     normalization)
    arrays = sources.read_verified(name, root)
    return build(name, arrays, sources.SOURCES[name].classes, sources.provenance(name, root),
                 normalization)


def _read_idx_dir(directory: Path) -> dict[str, np.ndarray]:
    """Your own IDX dataset: the four MNIST file names, plain or ``.gz``."""
    arrays = {}
    for role, f in sources.MNIST.files.items():
        plain, packed = directory / f.filename, directory / f"{f.filename}.gz"
        path = plain if plain.is_file() else packed
        try:
            data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{directory} has no {f.filename} and no train/ image folder",
                            "a data directory holds train/<class>/ images or the four IDX "
                            "files") from None
        except (OSError, EOFError) as exc:
            raise DataError(f"cannot read {path}: {exc}", "check the file") from None
        arrays[role] = parse_idx(data, str(path))
    return arrays


def _own(path: Path, size: Any, channels: int | None) -> Dataset:
    """Your own data at ``path``: an .npz file, an image-folder tree or an IDX directory."""
    origin = {"origin": str(path.resolve())}
    if path.is_file():
        return build(path.stem, npz.read_npz(path), None, {"source": "npz", **origin})
    if folders.is_image_folder(path):
        arrays = folders.read_image_folder(path, image_size=parse_size(size), channels=channels)
        classes = arrays.pop("classes")
        return build(path.name, arrays, classes, {"source": "image folder", **origin})
    names = path / "classes.txt"  # optional: one class name per line
    classes = (tuple(c.strip() for c in names.read_text().splitlines() if c.strip())
               if names.is_file() else None)
    # MNIST-style data, normalised like MNIST unless data.mean / data.std say otherwise
    return build(path.name, _read_idx_dir(path), classes, {"source": "directory", **origin},
                 NORMALIZATION["mnist"])


def load_dataset(name: str, root: str | Path | None = None, *, image_size: Any = None,
                 channels: int | None = None, labels: str = "fine") -> Dataset:
    """Load a registered dataset (fetching and verifying it once) or your own data at a path,
    with ``channels`` (1 or 3) and ``image_size`` (N or [H, W]) if given; ``labels="coarse"``
    takes CIFAR-100's 20 superclasses."""
    if labels != "fine" and name != "cifar100":
        raise DataError(f"data.labels={labels} is only for cifar100", "drop data.labels")
    if name in sources.SOURCES or name in cifar.ARCHIVES:
        dataset = _registered(name, root, labels)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise DataError(f"unknown dataset {name!r}",
                            hint(name, list_datasets(), f"use one of {', '.join(list_datasets())}, "
                                 "an image folder, an .npz file or a directory of IDX files"))
        dataset = _own(path, image_size, channels)
    return dataset.converted(channels, image_size)
