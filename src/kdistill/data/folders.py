"""Users' own images as a folder tree, decoded once with Pillow and cached as an ``.npz``.

Layout::

    PATH/train/<class>/<image>.png    (.png .jpg .jpeg .bmp .webp, any letter case)
    PATH/test/<class>/...
    PATH/val/<class>/...              (optional)

* The classes are the sorted names of the ``train/`` subfolders; ``test/`` and ``val/`` may
  hold a subset of them but no other class. Images are read in sorted file-name order within
  each class, classes in sorted order, so the arrays are the same on every run.
* Names starting with ``.`` (``.DS_Store``, ``.ipynb_checkpoints``) are skipped, and so are
  files without an image suffix. An image lying directly in a split folder, outside any class
  folder, is refused rather than silently dropped.
* Every image is converted to ``L`` (``channels=1``) or ``RGB`` (``channels=3``). By default
  ``channels`` is 1 when every image is greyscale (modes ``1``, ``L``, ``LA``, ``I``, ``I;16``…)
  and 3 otherwise. Alpha is dropped, not composited; 16-bit greyscale is scaled to 8 bits;
  EXIF orientation is not applied.
* ``image_size`` (``int`` for square, or ``(height, width)``) resizes every image whose size
  differs with :data:`RESAMPLE` (bilinear; Pillow widens the filter when shrinking, so it
  antialiases). Without it all images must have the same size.

Image headers are read first (``Image.open`` does not decode), so a folder that would not fit in
memory is refused before anything is decoded. Each image is then fully decoded (``.load()``),
so a truncated file is an error; Pillow's decompression-bomb warning is an error too, with the
global pixel limit left as it is.

The decoded arrays are cached in ``cache_dir`` (default ``<data root>/folders``) as
``<sha256 of the key>.npz``, written atomically; the key holds the resolved folder path, every
image's relative path, size and mtime, ``image_size``, ``channels`` and the Pillow version, so
adding, removing or changing an image (or asking for another size) misses the cache. Old cache
files are not deleted.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from ..errors import DataError, one_line
from . import sources
from .arrays import check_memory
from .npz import estimate_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLITS = ("train", "test", "val")
RESAMPLE = Image.Resampling.BILINEAR
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
CACHE_VERSION = 1
_LAYOUT_HINT = "lay images out as PATH/train/<class>/<image>.png and PATH/test/<class>/..."


@dataclass
class _Image:
    path: Path
    rel: str  # relative to the dataset folder, with "/"
    label: int
    split: str


def _is_image(entry: os.DirEntry) -> bool:
    return entry.name.lower().endswith(IMAGE_SUFFIXES)


def _entries(folder: Path) -> list[os.DirEntry]:
    """The visible entries of ``folder`` sorted by name (DataError if it cannot be listed)."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}",
                        "check permissions") from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def is_image_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like an image folder: a ``train/`` subfolder with class subfolders."""
    try:
        train = Path(path) / "train"
        if not train.is_dir():
            return False
        with os.scandir(train) as it:
            return any(not e.name.startswith(".") and _is_dir(e) for e in it)
    except OSError:
        return False


# ------------------------------------------------------------------------------- scan
def _scan_split(root: Path, split: str, classes: list[str] | None) -> list[_Image]:
    folder = root / split
    entries = _entries(folder)
    class_dirs = [e for e in entries if _is_dir(e)]
    loose = [e for e in entries if _is_file(e) and _is_image(e)]
    if loose:
        raise DataError(f"{folder / loose[0].name} is not inside a class folder",
                        f"move the images of {folder} into {folder}/<class>/")
    if not class_dirs:
        raise DataError(f"{folder} has no class subfolders", _LAYOUT_HINT)
    names = [e.name for e in class_dirs]
    if classes is not None:
        foreign = [n for n in names if n not in classes]
        if foreign:
            known = ", ".join(classes[:10]) + (", …" if len(classes) > 10 else "")
            raise DataError(f"{folder / foreign[0]} is a class that {root / 'train'} does not have",
                            f"{split}/ may only use the train classes: {known}")
    index = {name: i for i, name in enumerate(classes if classes is not None else names)}
    found: list[_Image] = []
    empty: list[str] = []
    for e in class_dirs:
        files = [f for f in _entries(Path(e.path)) if _is_image(f) and _is_file(f)]
        if not files:
            empty.append(e.name)
        found.extend(_Image(Path(f.path), f"{split}/{e.name}/{f.name}", index[e.name], split)
                     for f in files)
    if not found:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class "
                        "folders", _LAYOUT_HINT)
    if empty:
        raise DataError(f"class folder {folder / empty[0]} holds no images "
                        f"({', '.join(IMAGE_SUFFIXES)})", "add images or remove the folder")
    return found


def _scan(root: Path) -> tuple[tuple[str, ...], list[_Image]]:
    if not root.exists():
        raise DataError(f"no such folder: {root}", "check the path")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder", _LAYOUT_HINT)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder", _LAYOUT_HINT)
    train = _scan_split(root, "train", None)
    classes = sorted(e.name for e in _entries(root / "train") if _is_dir(e))
    images = list(train)
    for split in ("test", "val"):
        if split == "test" or (root / split).is_dir():
            images.extend(_scan_split(root, split, classes))
    return tuple(classes), images


# ----------------------------------------------------------------------------- options
def _target_size(image_size) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)``."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif (isinstance(image_size, (tuple, list)) and len(image_size) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                  for v in image_size)):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise DataError(f"image_size must be an integer or (height, width), not {image_size!r}",
                        "e.g. image_size=32 or (32, 48)")
    if min(size) < 1:
        raise DataError(f"image_size must be positive, not {image_size!r}", "e.g. image_size=32")
    return size


# ------------------------------------------------------------------------------ cache
def _cache_key(root: Path, images: list[_Image], size, channels) -> str:
    files = []
    for im in images:
        try:
            st = im.path.stat()
        except OSError as exc:
            raise DataError(f"cannot read {im.path}: {exc.strerror or exc}",
                            "check the file and its permissions") from None
        files.append([im.rel, st.st_size, st.st_mtime_ns])
    key = {"version": CACHE_VERSION, "path": str(root), "files": files,
           "image_size": list(size) if size else None, "channels": channels,
           "pillow": PIL.__version__}
    return hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()


def _load_cache(path: Path, max_bytes: int | None) -> dict | None:
    """The cached arrays, or None if there is no usable cache file (a broken one is rebuilt)."""
    if not path.is_file():
        return None
    try:
        need = estimate_bytes(path)
    except DataError:
        return None
    check_memory(need, max_bytes, f"the cached image folder {path}",
                 "pass a smaller image_size, use fewer images, or raise max_bytes")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except Exception:  # a truncated or foreign cache file is rebuilt, never trusted
        return None
    if not {"train_images", "train_labels", "test_images", "test_labels", "classes"} <= set(out):
        return None
    out["classes"] = tuple(str(c) for c in out["classes"].tolist())
    return out


def _save_cache(path: Path, arrays: dict) -> None:
    """Write the cache file atomically (temporary file, fsync, rename), streamed to disk so that
    no second in-memory copy of the arrays is made. Best effort: a cache that cannot be written
    (read-only folder, disk full) only costs time on the next load."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: (np.array(v, dtype=str) if k == "classes" else v)
                           for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- decode
def _open(path: Path) -> Image.Image:
    """Open one image (header only), with the decompression-bomb warning made an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def _image_error(path: Path, exc: BaseException) -> DataError:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return DataError(f"{path} is too large to decode safely (decompression bomb check: "
                         f"{one_line(exc, named=True)})", "remove the file or shrink the image")
    return DataError(f"cannot read image {path}: {one_line(exc, named=True)}",
                     "the file is corrupt, truncated or not an image: replace or remove it")


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` from the header alone."""
    try:
        with _open(path) as im:
            return im.size, im.mode
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, bomb errors...
        raise _image_error(path, exc) from None


def _decode(path: Path, channels: int, size_hw: tuple[int, int]) -> np.ndarray:
    """The image at ``path`` fully decoded as uint8 ``[C, H, W]``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # the whole file: a truncated image raises here
                if im.mode in _SIXTEEN_BIT:
                    wide = np.asarray(im).astype(np.int64)
                    eight = ((np.clip(wide, 0, 65535) + 128) // 257).astype(np.uint8)
                    im = Image.fromarray(eight, "L")
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (size_hw[1], size_hw[0]):
                    im = im.resize((size_hw[1], size_hw[0]), RESAMPLE)
                array = np.asarray(im)
    except Exception as exc:
        raise _image_error(path, exc) from None
    if array.shape[:2] != size_hw:  # the file changed since its header was read
        raise DataError(f"{path} decoded to {array.shape[1]}x{array.shape[0]}, not the "
                        f"{size_hw[1]}x{size_hw[0]} its header said", "read the folder again")
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


# ------------------------------------------------------------------------------ reader
def _shape_from_headers(images: list[_Image], size: tuple[int, int] | None,
                        channels: int | None) -> tuple[tuple[int, int], int]:
    """(H, W) and channels from the image headers alone (sizes and modes, nothing decoded):
    the common size unless ``size`` is given, grey only when every image is."""
    headers = [_header(im.path) for im in images]
    if size is None:
        first_wh = headers[0][0]
        for im, (wh, _) in zip(images, headers):
            if wh != first_wh:
                raise DataError(
                    f"images differ in size: {images[0].path} is {first_wh[0]}x{first_wh[1]} but "
                    f"{im.path} is {wh[0]}x{wh[1]} (width x height)",
                    "pass image_size to resize them all to one size")
        size = (first_wh[1], first_wh[0])
    if channels is None:
        channels = 1 if all(mode in GREY_MODES for _, mode in headers) else 3
    return size, channels


def read_image_folder(path: str | Path, *, image_size: int | tuple[int, int] | None = None,
                      channels: int | None = None, cache_dir: str | Path | None = None,
                      max_bytes: int | None = None) -> dict:
    """Read an image folder (layout in the module docstring) into uint8 ``[N, C, H, W]`` arrays.

    Returns ``{"train_images", "train_labels", "test_images", "test_labels"[, "val_images",
    "val_labels"], "classes"}``; labels are int64 indices into the ``classes`` tuple.
    ``image_size``: ``int`` or ``(height, width)``, default the images' own (common) size.
    ``channels``: 1 or 3, default 1 if every image is greyscale. ``cache_dir``: where decoded
    arrays are cached (default ``<data root>/folders``). ``max_bytes``: the in-memory limit
    (default half the available RAM), checked before anything is decoded.
    """
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise DataError(f"channels must be 1 or 3, not {channels!r}",
                        "1 for greyscale, 3 for RGB, or leave it unset to detect")
    size = _target_size(image_size)
    try:
        root = Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise DataError(f"cannot resolve {path}: {one_line(exc, named=True)}", "check the path") from None
    classes, images = _scan(root)

    cache_root = Path(cache_dir) if cache_dir is not None else sources.default_root() / "folders"
    cache_path = cache_root / f"{_cache_key(root, images, size, channels)}.npz"
    cached = _load_cache(cache_path, max_bytes)
    if cached is not None:
        return cached

    size, channels = _shape_from_headers(images, size, channels)
    counts = {split: sum(im.split == split for im in images) for split in SPLITS}
    n = len(images)
    need = n * channels * size[0] * size[1] + 8 * n
    check_memory(need, max_bytes,
                 f"image folder {root} ({n} images of {channels}x{size[0]}x{size[1]})",
                 "pass a smaller image_size, use fewer images, or raise max_bytes")

    out: dict = {}
    for split in SPLITS:
        if counts[split]:
            out[f"{split}_images"] = np.empty((counts[split], channels, *size), dtype=np.uint8)
            out[f"{split}_labels"] = np.empty(counts[split], dtype=np.int64)
    position = dict.fromkeys(SPLITS, 0)
    for im in images:
        i = position[im.split]
        out[f"{im.split}_images"][i] = _decode(im.path, channels, size)
        out[f"{im.split}_labels"][i] = im.label
        position[im.split] = i + 1
    out["classes"] = classes
    _save_cache(cache_path, out)
    return out
