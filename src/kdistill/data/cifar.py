"""CIFAR-10 and CIFAR-100 from the official python archives (www.cs.toronto.edu/~kriz).

The archive is downloaded once (streamed to disk, pinned by sha256) or placed by hand. Its pickled
batches are read straight from the tar members, never extracted, and unpickled by an allowlist
that admits only numpy arrays and plain containers, so a hostile archive cannot write files or run
code. The decoded arrays are cached as verified ``.npy`` files so later loads skip the archive.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import pickle
import tarfile
import tempfile
import time
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError, one_line
from ..files import _file_mode, atomic_write_bytes, atomic_write_json
from . import sources

MAX_ARCHIVE_BYTES = 512 * 2**20   # the real archives are ~163 MiB
MAX_MEMBER_BYTES = 512 * 2**20    # per tar member, guards against decompression bombs
DOWNLOAD_TIMEOUT_S = 30.0         # per socket operation
DOWNLOAD_DEADLINE_S = 3600.0      # whole download
CHUNK_BYTES = 2**20
CACHE_FORMAT = 1
PIXELS = 3 * 32 * 32

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR100_CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle
    bowl boy bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud
    cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster
    house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
    mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
    plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew
    skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank
    telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf
    woman worm""".split())
CIFAR100_COARSE_CLASSES = tuple("""aquatic_mammals fish flowers food_containers
    fruit_and_vegetables household_electrical_devices household_furniture insects large_carnivores
    large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores
    medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1
    vehicles_2""".split())


@dataclass(frozen=True)
class CifarArchive:
    """One official archive: its origin, its pin and the layout of its members."""

    name: str
    filename: str
    sha256: str
    url: str
    folder: str                       # member prefix inside the tar
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    label_key: str                    # batch key of the labels returned by default
    names_key: str                    # meta key of their class names
    classes: tuple[str, ...]
    coarse_classes: tuple[str, ...] = ()
    description: str = ""


ARCHIVES: dict[str, CifarArchive] = {
    "cifar10": CifarArchive(
        "cifar10", "cifar-10-python.tar.gz",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
        "labels", "label_names", CIFAR10_CLASSES,
        description="CIFAR-10 colour images, 50k train / 10k test, 3x32x32, 10 classes"),
    "cifar100": CifarArchive(
        "cifar100", "cifar-100-python.tar.gz",
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python",
        ("train",), "test", "meta", "fine_labels", "fine_label_names", CIFAR100_CLASSES,
        CIFAR100_COARSE_CLASSES,
        description="CIFAR-100 colour images, 50k train / 10k test, 3x32x32, 100 (20) classes"),
}


def _spec(name: str) -> CifarArchive:
    return sources.lookup(ARCHIVES, name, "CIFAR dataset")


def archive_path(name: str, root: str | Path | None = None) -> Path:
    """Where the archive of ``name`` lives: ``root/<name>/<filename>``."""
    return Path(root if root is not None else sources.default_root()) / name / _spec(name).filename


# ----------------------------------------------------------------------------- fetching
def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_placed(spec: CifarArchive, path: Path) -> None:
    try:
        actual = _sha256_file(path)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {one_line(exc.strerror or exc)}",
                        "check that it is a readable file") from None
    if actual != spec.sha256:  # kept: a file the user placed is never deleted for them
        raise DataError(f"{path} has sha256 {actual}, not the official {spec.filename} "
                        f"(sha256 {spec.sha256})", "delete it, then download it again or place "
                        f"the official archive in {path.parent}")


def _write_source(spec: CifarArchive, directory: Path, how: str) -> None:
    atomic_write_json(directory / "SOURCE.json", {
        "dataset": spec.name, "file": spec.filename, "sha256": spec.sha256, "source": how,
        "url": spec.url if how == "download" else None,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _download(spec: CifarArchive, path: Path) -> None:
    """Stream ``spec.url`` to a temporary file beside ``path``; rename it if the sha256 matches."""
    sources._check_url(spec.url)
    request = urllib.request.Request(spec.url, headers={"User-Agent": "kdistill"})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, \
                urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            sources._check_url(response.geturl())  # a redirect must not leave HTTPS either
            digest, deadline = hashlib.sha256(), time.monotonic() + DOWNLOAD_DEADLINE_S
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                if out.tell() > MAX_ARCHIVE_BYTES:
                    raise DataError(f"more than {MAX_ARCHIVE_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise DataError(f"took longer than {DOWNLOAD_DEADLINE_S:.0f} s")
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != spec.sha256:
            raise DataError(f"the downloaded file has sha256 {digest.hexdigest()}")
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_archive(name: str, root: str | Path | None = None, *,
                  offline: bool | None = None) -> Path:
    """The verified official archive of ``name``: checked by sha256 if in place (and deleted if
    wrong), else downloaded unless ``offline`` (default ``$KDISTILL_OFFLINE``). When that is not
    possible the error says which file to put where."""
    spec = _spec(name)
    path = archive_path(name, root)
    directory = path.parent
    if path.exists():
        _verify_placed(spec, path)
        if not (directory / "SOURCE.json").is_file():
            _write_source(spec, directory, "placed by hand")
        return path
    by_hand = f"place it by hand in {directory} (sha256 {spec.sha256})"
    if offline if offline is not None else sources.offline_only():
        raise DataError(f"cannot download {spec.filename} (downloads are disabled); {by_hand}",
                        "unset KDISTILL_OFFLINE to download it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data directory {directory}: {one_line(exc.strerror)}",
                        "pass a writable --data-root or set KDISTILL_DATA") from None
    try:
        _download(spec, path)
    except DataError as exc:
        reason = exc.message
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
        reason = str(exc) or type(exc).__name__
    else:
        _write_source(spec, directory, "download")
        return path
    raise DataError(f"cannot download {spec.filename} from {spec.url} ({one_line(reason)}); "
                    f"{by_hand}")


# ------------------------------------------------------------------------------ reading
def _foreign(message: str) -> DataError:
    return DataError(message, "it is not the official archive: delete it and fetch it again")


class _CifarUnpickler(pickle.Unpickler):
    """Admits numpy arrays (and the globals they need) inside dicts, lists, strings and ints."""

    _ALLOWED = sources._NumpyArraysOnly._ALLOWED

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise _foreign(f"refusing to unpickle {module}.{name} from a CIFAR batch") from None


def _unpickle(raw: bytes, what: str) -> object:
    try:  # latin1: how Python 2 strings (the official pickles) and numpy buffers round-trip
        return _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:  # malformed pickle streams raise many types
        raise _foreign(f"cannot unpickle CIFAR member {what}: {one_line(exc)}") from None


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise _foreign(f"{archive.name} has a member that leaves the archive: {member.name!r}")
    if not (member.isreg() or member.isdir()):
        raise _foreign(f"{archive.name} has a link or special file: {member.name!r}")


def _read_members(path: Path, spec: CifarArchive) -> dict[str, object]:
    """Unpickle the needed members straight from the tar in one pass, checking every member."""
    wanted = {f"{spec.folder}/{m}": m for m in (*spec.train_members, spec.test_member,
                                                 spec.meta_member)}
    found: dict[str, object] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                _check_member(member, path)
                short = wanted.get(member.name)
                if short is None or not member.isreg():
                    continue
                if short in found or member.size > MAX_MEMBER_BYTES:
                    raise _foreign(f"{path.name} has a duplicate or oversized {member.name!r}")
                handle = tar.extractfile(member)
                found[short] = _unpickle(handle.read() if handle else b"", member.name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise _foreign(f"{path} is not a readable gzipped tar archive: {one_line(exc)}") from None
    missing = [name for name, short in wanted.items() if short not in found]
    if missing:
        raise _foreign(f"{path.name} lacks {', '.join(missing)}")
    return found


def _field(obj: object, key: str, what: str) -> object:
    """``obj[key]`` for a dict whose keys may be str (latin1) or bytes (Python 2 pickles)."""
    if not isinstance(obj, dict):
        raise _foreign(f"CIFAR member {what} is not a dict")
    for k in (key, key.encode()):
        if k in obj:
            return obj[k]
    raise _foreign(f"CIFAR member {what} has no {key!r}")


def _names(meta: object, key: str, count: int, what: str) -> tuple[str, ...]:
    names = _field(meta, key, what)
    if (not isinstance(names, list) or len(names) != count
            or not all(isinstance(n, (str, bytes)) for n in names)):
        raise _foreign(f"CIFAR member {what}: {key} is not a list of {count} names")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


def _check_split(images: object, labels: object, n_classes: int, what: str) -> None:
    """Images uint8 [N, 3, 32, 32], labels int64 [N] within [0, n_classes)."""
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8
            and images.shape[1:] == (3, 32, 32) and isinstance(labels, np.ndarray)
            and labels.dtype == np.int64 and labels.shape == images.shape[:1]):
        raise _foreign(f"CIFAR {what}: images or labels have the wrong type or shape")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise _foreign(f"CIFAR {what}: labels outside 0..{n_classes - 1}")


def _batch(obj: object, label_key: str, n_classes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = _field(obj, "data", what), _field(obj, label_key, what)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == PIXELS):
        raise _foreign(f"CIFAR member {what}: data is not a uint8 N x {PIXELS} array")
    if not (isinstance(labels, list) and all(type(v) is int for v in labels)):
        raise _foreign(f"CIFAR member {what}: {label_key} is not a list of ints")
    if not all(0 <= v < n_classes for v in labels):  # checked before int64 can overflow
        raise _foreign(f"CIFAR member {what}: labels outside 0..{n_classes - 1}")
    if len(labels) != len(data):
        raise _foreign(f"CIFAR member {what}: {len(data)} images but {len(labels)} labels")
    images = np.ascontiguousarray(data).reshape(-1, 3, 32, 32)
    array = np.asarray(labels, dtype=np.int64).reshape(-1)
    _check_split(images, array, n_classes, f"member {what}")
    return images, array


def _array_keys(spec: CifarArchive) -> list[str]:
    keys = ["train_images", "train_labels", "test_images", "test_labels"]
    return keys + (["train_coarse_labels", "test_coarse_labels"] if spec.coarse_classes else [])


def _decode_archive(path: Path, spec: CifarArchive) -> dict:
    """Arrays (see ``_array_keys``) plus ``classes`` and ``coarse_classes`` from the archive."""
    objs = _read_members(path, spec)
    meta = objs.pop(spec.meta_member)
    out: dict = {"classes": _names(meta, spec.names_key, len(spec.classes), spec.meta_member),
                 "coarse_classes": ()}
    label_sets = [("labels", spec.label_key, len(spec.classes))]
    if spec.coarse_classes:
        n_coarse = len(spec.coarse_classes)
        out["coarse_classes"] = _names(meta, "coarse_label_names", n_coarse, spec.meta_member)
        label_sets.append(("coarse_labels", "coarse_labels", n_coarse))
    for split, members in (("train", spec.train_members), ("test", (spec.test_member,))):
        parts: dict[str, list[np.ndarray]] = {"images": []}
        for member in members:
            obj = objs.pop(member)  # dropped after use: only the decoded arrays stay in memory
            for out_key, key, n in label_sets:
                images, labels = _batch(obj, key, n, member)
                parts.setdefault(out_key, []).append(labels)
            parts["images"].append(images)
        for key, arrays in parts.items():
            out[f"{split}_{key}"] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return out


# -------------------------------------------------------------------------------- cache
def _write_cache(directory: Path, spec: CifarArchive, decoded: dict) -> None:
    """Save the arrays as ``.npy`` files, then a manifest of their sha256 (best effort)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "manifest.json").unlink(missing_ok=True)
        files = {}
        for key in _array_keys(spec):
            buffer = io.BytesIO()
            np.save(buffer, decoded[key], allow_pickle=False)
            view = buffer.getbuffer()
            files[f"{key}.npy"] = hashlib.sha256(view).hexdigest()
            atomic_write_bytes(directory / f"{key}.npy", view)
        atomic_write_json(directory / "manifest.json", {
            "format": CACHE_FORMAT, "dataset": spec.name, "archive_sha256": spec.sha256,
            "classes": list(decoded["classes"]), "coarse_classes": list(decoded["coarse_classes"]),
            "files": files})
    except OSError as exc:
        warnings.warn(f"could not cache decoded {spec.name} in {directory}: {one_line(exc)}",
                      stacklevel=3)


def _read_cache(directory: Path, spec: CifarArchive) -> dict | None:
    """The cached arrays if the manifest, each file's sha256 and each array check out, else None."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        if (manifest["format"] != CACHE_FORMAT or manifest["archive_sha256"] != spec.sha256
                or set(manifest["files"]) != {f"{k}.npy" for k in _array_keys(spec)}):
            return None
        out: dict = {"classes": tuple(manifest["classes"]),
                     "coarse_classes": tuple(manifest["coarse_classes"])}
        for key in _array_keys(spec):
            path = directory / f"{key}.npy"
            if _sha256_file(path) != manifest["files"][f"{key}.npy"]:
                return None
            out[key] = np.load(path, allow_pickle=False)
        names = {"labels": spec.classes, "coarse_labels": spec.coarse_classes}
        if (len(out["classes"]), len(out["coarse_classes"])) != tuple(map(len, names.values())):
            return None
        for key in _array_keys(spec):
            split, _, kind = key.partition("_")
            if kind != "images":
                _check_split(out[f"{split}_images"], out[key], len(names[kind]), f"cached {key}")
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return None
    return out


def load_cifar(name: str, root: str | Path | None = None, *, coarse: bool = False,
               offline: bool | None = None) -> dict:
    """``train_images``/``test_images`` uint8 [N, 3, 32, 32], ``train_labels``/``test_labels``
    int64 [N] and ``classes`` of ``cifar10`` or ``cifar100`` (``coarse=True``: its 20 superclass
    labels and names). Served from the verified cache in ``root/<name>/decoded`` when it checks out,
    else decoded from the archive (see :func:`fetch_archive`) and cached."""
    spec = _spec(name)
    if coarse and not spec.coarse_classes:
        raise DataError(f"{name} has no coarse labels", "coarse labels exist for cifar100 only")
    cache = archive_path(name, root).parent / "decoded"
    decoded = _read_cache(cache, spec)
    if decoded is None:
        decoded = _decode_archive(fetch_archive(name, root, offline=offline), spec)
        _write_cache(cache, spec, decoded)
    labels = "coarse_labels" if coarse else "labels"
    return {"train_images": decoded["train_images"], "train_labels": decoded[f"train_{labels}"],
            "test_images": decoded["test_images"], "test_labels": decoded[f"test_{labels}"],
            "classes": decoded["coarse_classes" if coarse else "classes"]}
