"""Users' own arrays in one ``.npz`` file, and the in-memory limit shared with image folders.

The file holds ``x_train``, ``y_train``, ``x_test``, ``y_test``, optionally ``x_val`` and
``y_val`` (both or neither) and optionally ``classes`` (a 1-D array of class names). It is read
with ``allow_pickle=False``: object arrays are refused, never unpickled.

Images must be ``uint8`` and are returned as contiguous ``[N, C, H, W]`` with ``C`` 1 or 3.
The layout is decided by shape alone:

* 3-D ``[N, H, W]`` is greyscale, ``C = 1``;
* 4-D with axis 1 of size 1 or 3 is taken as ``[N, C, H, W]``;
* otherwise 4-D with the last axis of size 1 or 3 is taken as ``[N, H, W, C]``;
* anything else (2-D, 5-D, 4-D with no 1- or 3-sized channel axis) is refused.

Axis 1 wins a tie, so an ``[N, H, W, C]`` array whose height is 1 or 3 is misread; such an
array then fails the check that every split has the same image shape unless all agree.

Labels are 1-D integer arrays (any integer dtype, values >= 0), as long as their images, and
are returned as ``int64``. Without ``classes`` the names are ``"0" .. "K-1"`` with ``K`` the
largest label + 1 over all splits.

Every problem is a :class:`~kdistill.errors.DataError` of one line. The array headers are read
before any array data, so a wrong dtype or shape, or a file that would not fit in memory, is
refused without loading it.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError, one_line
from .arrays import as_nchw, check_memory

MAX_CLASSES = 100_000  # more than this many label values are not class indices
_IMAGE_KEYS = ("x_train", "x_test", "x_val")
_LABEL_KEYS = {"x_train": "y_train", "x_test": "y_test", "x_val": "y_val"}
_SPLITS = {"x_train": "train", "x_test": "test", "x_val": "val"}
_SAVE_HINT = "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
_MAX_DEFLATE_RATIO = 1032  # deflate expands data by at most this factor


# ------------------------------------------------------------------------------ headers
def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise DataError(f"no such file: {path}", "check the path")
    if not path.is_file():
        raise DataError(f"{path} is not a file", "pass the path of an .npz file")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path} is not an .npz file (not a zip archive)", _SAVE_HINT) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}", "check the file") from None


def _headers(zf: zipfile.ZipFile, path: Path) -> dict[str, tuple[tuple[int, ...] | None,
                                                                   np.dtype | None, int]]:
    """``key -> (shape, dtype, uncompressed size)`` of every ``.npy`` member, read from the
    headers only. Shape and dtype are ``None`` for a header version this reader does not parse
    (they are then checked after loading)."""
    out: dict = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        key = info.filename[:-4]
        shape = dtype = None
        try:
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):  # 3.0: 2.0 with utf-8 (field names)
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                header_bytes = f.tell()
        except Exception as exc:  # BadZipFile, RuntimeError (encrypted), zlib.error, ValueError…
            raise DataError(f"{path}: array {key} is not a valid .npy member: {one_line(exc)}",
                            _SAVE_HINT) from None
        if shape is not None and dtype is not None and not dtype.hasobject:
            _check_size(path, key, info, header_bytes, shape, dtype)
        out[key] = (tuple(shape) if shape is not None else None, dtype, info.file_size)
    return out


def _check_size(path: Path, key: str, info: zipfile.ZipInfo, header_bytes: int,
                shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a header claiming more data than its member can hold, before numpy allocates it."""
    room = info.file_size
    if info.compress_type == zipfile.ZIP_STORED:
        room = min(room, info.compress_size)
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        room = min(room, _MAX_DEFLATE_RATIO * info.compress_size)
    room -= header_bytes
    need = math.prod(shape) * dtype.itemsize
    if min(shape, default=0) < 0 or need > room:
        raise DataError(f"cannot read {key} from {path}: its header says {dtype} {list(shape)} "
                        f"({need} bytes) but it holds {max(room, 0)}",
                        "the file is truncated or corrupt: save it again")


def _result_bytes(key: str, shape: tuple[int, ...] | None, dtype: np.dtype | None,
                  file_size: int) -> int:
    if shape is None or dtype is None:
        return file_size
    count = math.prod(shape)  # exact: an int64 product can wrap around to a small number
    if key.startswith("y_"):
        return count * 8  # labels become int64
    return count * dtype.itemsize


def estimate_bytes(path: str | Path) -> int:
    """Bytes the arrays of the ``.npz`` at ``path`` take once loaded (labels as int64), from the
    array headers alone, without reading any array data."""
    path = Path(path)
    with _open_zip(path) as zf:
        headers = _headers(zf, path)
    return sum(_result_bytes(k, *v) for k, v in headers.items()
               if k in _IMAGE_KEYS or k in _LABEL_KEYS.values())


# ---------------------------------------------------------------------------- checks
def _check_images(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise DataError(f"{path}: {key} is an object array, which is not read "
                        "(allow_pickle=False)", "save plain uint8 arrays, e.g. np.stack(images)")
    if dtype != np.uint8:
        if dtype.kind == "f":
            hint = ("convert with np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) for "
                    "values in [0, 1], or x.astype(np.uint8) for values already in 0..255")
        else:
            hint = "convert with x.astype(np.uint8) after checking the values are in 0..255"
        raise DataError(f"{path}: images must be uint8 (0..255), but {key} is {dtype}", hint)
    if len(shape) not in (3, 4):
        raise DataError(f"{path}: {key} has {len(shape)} dimensions {list(shape)}, expected "
                        "[N, H, W], [N, H, W, C] or [N, C, H, W]", "reshape the images")
    if len(shape) == 4 and shape[1] not in (1, 3) and shape[-1] not in (1, 3):
        raise DataError(f"{path}: {key} has shape {list(shape)} with no channel axis of size "
                        "1 or 3", "store [N, H, W], [N, H, W, C] or [N, C, H, W] with C 1 or 3")
    if shape[0] == 0:
        raise DataError(f"{path}: {key} holds no images", "every split needs images")


def _check_labels(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype,
                  n_images: int) -> None:
    if dtype.hasobject:
        raise DataError(f"{path}: {key} is an object array, which is not read "
                        "(allow_pickle=False)", "save labels as an integer array")
    if dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be integers, but {key} is {dtype}",
                        "convert with y.astype(np.int64) (class indices 0..K-1)")
    if len(shape) != 1:
        hint = ("one-hot labels: convert with y.argmax(axis=1)" if len(shape) == 2
                and shape[1] > 1 else "flatten with y.reshape(-1)")
        raise DataError(f"{path}: {key} has shape {list(shape)}, labels must be 1-D", hint)
    if shape[0] != n_images:
        image_key = key.replace("y_", "x_")
        raise DataError(f"{path}: {key} has {shape[0]} labels but {image_key} has {n_images} "
                        "images", "give one label per image")


def _check_classes(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise DataError(f"{path}: classes is an object array, which is not read "
                        "(allow_pickle=False)", "save names as np.array(names, dtype=str)")
    if dtype.kind not in "US" or len(shape) != 1:
        raise DataError(f"{path}: classes must be a 1-D array of strings, got {dtype} "
                        f"{list(shape)}", "save names as np.array(names, dtype=str)")


# ------------------------------------------------------------------------------ reader
def _check_headers(path: Path, headers: dict, max_bytes: int | None) -> list[str]:
    """Everything the array headers can tell, before any data is read; the image keys."""
    present = sorted(headers)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key not in headers:
            raise DataError(f"{path} has no array {key!r} (it has: {', '.join(present) or 'none'})",
                            "an .npz dataset needs x_train, y_train, x_test, y_test")
    if ("x_val" in headers) != ("y_val" in headers):
        have, lack = ("x_val", "y_val") if "x_val" in headers else ("y_val", "x_val")
        raise DataError(f"{path} has {have} but no {lack}", "give both or neither")
    image_keys = [k for k in _IMAGE_KEYS if k in headers]
    for key in image_keys:
        shape, dtype, _ = headers[key]
        if shape is not None and dtype is not None:
            _check_images(path, key, shape, dtype)
            lshape, ldtype, _ = headers[_LABEL_KEYS[key]]
            if lshape is not None and ldtype is not None:
                _check_labels(path, _LABEL_KEYS[key], lshape, ldtype, shape[0])
    if "classes" in headers and headers["classes"][0] is not None:
        _check_classes(path, headers["classes"][0], headers["classes"][1])
    loaded = image_keys + [_LABEL_KEYS[k] for k in image_keys]
    need = sum(_result_bytes(k, *headers[k]) for k in loaded)
    check_memory(need, max_bytes, f"{path}",
                 "use a smaller dataset or a machine with more memory, or pass a larger max_bytes")
    return image_keys


def _load(path: Path, wanted: list[str]) -> dict[str, np.ndarray]:
    """The arrays ``wanted`` of the npz at ``path`` (allow_pickle=False), errors as one line."""
    arrays: dict[str, np.ndarray] = {}
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}", _SAVE_HINT) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a .npy with a zip appended, say
        raise DataError(f"{path} is not an .npz file (numpy reads it as a single array)",
                        _SAVE_HINT)
    with npz:
        for key in wanted:
            try:
                arrays[key] = npz[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "bject arrays" in str(exc):
                    raise DataError(f"{path}: {key} is an object array, which is not read "
                                    "(allow_pickle=False)", "save plain numeric arrays") from None
                raise DataError(f"cannot read {key} from {path}: {one_line(exc)}",
                                _SAVE_HINT) from None
            except Exception as exc:  # OSError, BadZipFile, zlib.error… from a corrupt member
                raise DataError(f"cannot read {key} from {path}: {one_line(exc)}",
                                "the file is truncated or corrupt: save it again") from None
    return arrays


def _splits(path: Path, arrays: dict[str, np.ndarray], image_keys: list[str]) -> dict:
    """The same checks on the loaded arrays (headers of unknown versions were skipped); each
    split's images as contiguous NCHW and its labels."""
    out: dict = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for key in image_keys:
        images, labels = arrays[key], arrays[_LABEL_KEYS[key]]
        _check_images(path, key, images.shape, images.dtype)
        _check_labels(path, _LABEL_KEYS[key], labels.shape, labels.dtype, len(images))
        if labels.size and labels.min() < 0:
            raise DataError(f"{path}: {_LABEL_KEYS[key]} has a negative label ({labels.min()})",
                            "labels are class indices 0..K-1")
        images = np.ascontiguousarray(as_nchw(images, f"{path}: {key}"))  # Fortran-order too
        shapes[key] = images.shape[1:]
        split = _SPLITS[key]
        out[f"{split}_images"] = images
        out[f"{split}_labels"] = labels
    for key in image_keys[1:]:
        if shapes[key] != shapes["x_train"]:
            raise DataError(f"{path}: {key} images are {list(shapes[key])} (C, H, W) but x_train "
                            f"images are {list(shapes['x_train'])}",
                            "every split needs the same image size and channels")
    return out


def _classes(path: Path, names: np.ndarray | None, out: dict, image_keys: list[str]) -> tuple:
    """The class names (given, or "0".."K-1"), checked against the largest label."""
    top = max(int(out[f"{_SPLITS[k]}_labels"].max()) for k in image_keys)
    if names is None:
        if top + 1 > MAX_CLASSES:
            raise DataError(f"{path}: the largest label is {top}, more than {MAX_CLASSES} "
                            "classes", "labels must be class indices 0..K-1")
        return tuple(str(i) for i in range(top + 1))
    _check_classes(path, names.shape, names.dtype)
    if names.dtype.kind == "S":
        try:
            classes = tuple(n.decode("utf-8") for n in names.tolist())
        except UnicodeDecodeError:
            raise DataError(f"{path}: classes are not UTF-8 text",
                            "save names as np.array(names, dtype=str)") from None
    else:
        classes = tuple(str(n) for n in names.tolist())
    if len(set(classes)) != len(classes):
        raise DataError(f"{path}: classes has duplicate names", "give each class one name")
    if top >= len(classes):
        key = next(_LABEL_KEYS[k] for k in image_keys
                   if int(out[f"{_SPLITS[k]}_labels"].max()) == top)
        raise DataError(f"{path}: {key} has label {top}, out of range for {len(classes)} "
                        "classes", "labels are indices into classes (0..K-1)")
    return classes


def read_npz(path: str | Path, *, max_bytes: int | None = None) -> dict:
    """Read a dataset saved as an ``.npz`` (see the module docstring for keys and layouts).

    Returns ``{"train_images", "train_labels", "test_images", "test_labels"[, "val_images",
    "val_labels"], "classes"}`` with uint8 ``[N, C, H, W]`` images, int64 labels and a tuple of
    class names. ``max_bytes`` caps the memory the arrays may take (default: half the available
    RAM); the check uses the array headers, before any data is read.
    """
    path = Path(path)
    with _open_zip(path) as zf:
        headers = _headers(zf, path)
    image_keys = _check_headers(path, headers, max_bytes)
    wanted = image_keys + [_LABEL_KEYS[k] for k in image_keys]
    arrays = _load(path, wanted + (["classes"] if "classes" in headers else []))
    out = _splits(path, arrays, image_keys)
    classes = _classes(path, arrays.get("classes"), out, image_keys)
    for key in image_keys:
        split = _SPLITS[key]
        out[f"{split}_labels"] = out[f"{split}_labels"].astype(np.int64)
    out["classes"] = classes
    return out
