"""Property-based tests of every parser that reads bytes or text from outside kdistill.

Each parser either returns a valid object or raises kdistill's own error (a one-line
:class:`KdistillError`), never another exception, never a hang and never a huge allocation,
whatever the input. The examples are derandomized (the same on every run and in CI) and no
example database is written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import pickle
import signal
import struct
import tarfile
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from safetensors.torch import save as st_save

from kdistill import checkpoint, config
from kdistill.data import cifar, folders, npz
from kdistill.data.idx import _TYPES, encode_idx, parse_idx
from kdistill.errors import CheckpointError, ConfigError, DataError, KdistillError

# Hypothesis caches source constants (and writes failure patches) in its home directory: keep it
# out of the repository. The example database is off altogether (database=None below).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "kdistill-hypothesis")


def fuzz(examples: int):
    """Settings of every property here: reproducible, no database, no per-example deadline."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    phases=phases,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


class _Hung(BaseException):
    """Raised by the alarm; a BaseException, so parsers' ``except Exception`` cannot hide it."""


@contextlib.contextmanager
def _within(seconds: float):
    def fire(*_):
        raise _Hung(f"the parser took more than {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(error: type[KdistillError], fn, *args, **kwargs):
    """``fn(*args)``'s result, or None if it raised ``error`` (one line, not megabytes).
    Any other exception, or a call taking more than 10 s, fails the test."""
    with _within(10):
        try:
            result = fn(*args, **kwargs)
        except error as exc:
            text = str(exc)
            assert text and "\n" not in text and len(text) < 25_000, text[:3000]
            result = None
    if currently_in_test_context():  # --hypothesis-show-statistics: how often each path ran
        event(f"{fn.__name__}: {'refused' if result is None else 'accepted'}")
    return result


@contextlib.contextmanager
def peak_bytes():
    """Traces Python and numpy allocations; yields a list that gets the peak in bytes."""
    out: list[int] = []
    tracemalloc.start()
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


@st.composite
def mutated(draw, base):
    """A valid file from the ``base`` strategy, then 1-3 of: truncation, bit flip, byte set,
    insertion, deletion."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["truncate", "flip", "set", "insert", "delete"]))
        if kind == "truncate":
            del data[i:]
        elif kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[i] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i:i + draw(st.integers(1, 8))]
    return bytes(data)


def _write(directory: str, name: str, data: bytes) -> Path:
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -------------------------------------------------------------------------------- IDX
_IDX_CODES = sorted(_TYPES)


@fuzz(150)
@given(st.one_of(st.binary(max_size=64),
                 st.tuples(st.sampled_from(_IDX_CODES), st.integers(0, 255),
                           st.binary(max_size=64)).map(
                     lambda t: bytes([0, 0, t[0], t[1]]) + t[2])))
def test_idx_arbitrary_bytes(data):
    array = outcome(DataError, parse_idx, data)
    if array is not None:
        assert array.ndim >= 1 and array.dtype.isnative


_DIM = st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1),
                 st.sampled_from([2**16, 2**31, 2**32 - 1, 2**21 + 1]))


@fuzz(150)
@given(code=st.sampled_from(_IDX_CODES), dims=st.lists(_DIM, min_size=1, max_size=6),
       body=st.one_of(st.none(), st.binary(max_size=64)))
def test_idx_header_claims_never_allocate(code, dims, body):
    """Any dimensions, their product overflowing int64 or claiming gigabytes: the parser
    allocates no more than the input's size."""
    itemsize = _TYPES[code].itemsize
    count = int(np.prod(dims, dtype=object))
    if body is None:  # the exact size where that is small, else a tiny body
        body = bytes(count * itemsize) if count * itemsize <= 4096 else b"\x00" * 7
    data = struct.pack(f">HBB{len(dims)}I", 0, code, len(dims), *dims) + body
    with peak_bytes() as peak:
        array = outcome(DataError, parse_idx, data)
    assert peak[0] < 2 * len(data) + 2**16
    if array is not None:
        assert list(array.shape) == dims and array.nbytes == len(body)


@fuzz(100)
@given(hnp.arrays(st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64]),
                  hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)))
def test_idx_roundtrip(array):
    back = parse_idx(encode_idx(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()  # NaN payloads and -0.0 included


def test_idx_dims_whose_product_wraps_to_zero_are_refused():
    # 2**16 ** 4 == 2**64 wrapped to 0 in int64, so the 20-byte header alone "matched".
    with pytest.raises(DataError, match="truncated or padded"):
        parse_idx(struct.pack(">HBB4I", 0, 8, 4, *(2**16,) * 4))


def test_idx_empty_with_dims_too_large_to_index_is_refused():
    with pytest.raises(DataError, match="too large"):
        parse_idx(struct.pack(">HBB3I", 0, 8, 3, 0, 2**32 - 1, 2**32 - 1))


def test_idx_claiming_gigabytes_is_refused_without_allocating():
    data = struct.pack(">HBB3I", 0, 0x0E, 3, 60000, 1000, 1000) + b"\x00" * 16
    with peak_bytes() as peak, pytest.raises(DataError, match="truncated or padded"):
        parse_idx(data)
    assert peak[0] < 2**16


# ------------------------------------------------------------------------- checkpoints
def _safetensors(tensors: dict, meta: dict | None) -> bytes:
    metadata = {checkpoint.METADATA_KEY: json.dumps(meta)} if meta is not None else None
    return st_save(tensors, metadata=metadata)


_VALID_ST = st.builds(
    _safetensors,
    st.sampled_from([{"w": torch.zeros(2, 3)},
                     {"a.weight": torch.ones(4, dtype=torch.int64), "b": torch.zeros(0)},
                     {"x": torch.arange(6, dtype=torch.float16).reshape(3, 2)}]),
    st.one_of(st.none(), st.just({"epoch": 3, "kind": "weights"})))


def _huge_header(data: bytes, length: int) -> bytes:
    return struct.pack("<Q", length) + data[8:]


def _check_weights(result):
    tensors, meta = result
    assert isinstance(tensors, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items())
    assert isinstance(meta, dict)


@fuzz(120)
@given(st.one_of(
    st.binary(max_size=96),
    st.binary(max_size=64).map(lambda b: struct.pack("<Q", len(b)) + b),
    mutated(_VALID_ST),
    st.tuples(_VALID_ST, st.one_of(st.integers(0, 2**64 - 1),
                                   st.sampled_from([2**63, 2**64 - 1, 2**40]))).map(
        lambda t: _huge_header(*t))))
def test_read_weights_any_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "w.safetensors", data)
        result = outcome(CheckpointError, checkpoint.read_weights, path)
    if result is not None:
        _check_weights(result)


def _torch_bytes(obj, zip_format: bool) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=zip_format)
    return buffer.getvalue()


_VALID_TORCH = st.builds(_torch_bytes,
                         st.sampled_from([{"w": torch.zeros(3)},
                                          {"model": {"module.w": torch.ones(2, 2)}}]),
                         st.booleans())


@fuzz(80)
@given(st.one_of(
    st.tuples(st.sampled_from([b"PK", b"PK\x03\x04", b"\x80", b"\x80\x02", b"\x80\x04\x95"]),
              st.binary(max_size=96)).map(lambda t: t[0] + t[1]),
    mutated(_VALID_TORCH)))
def test_read_any_weights_pickle_or_zip_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        tensors = outcome(CheckpointError, checkpoint.read_any_weights, _write(tmp, "t.pt", data))
    if tensors is not None:
        assert tensors and all(isinstance(v, torch.Tensor) for v in tensors.values())


def test_read_weights_deeply_nested_metadata(tmp_path):
    data = st_save({"w": torch.zeros(2)},
                   metadata={checkpoint.METADATA_KEY: "[" * 100_000 + "]" * 100_000})
    with pytest.raises(CheckpointError):
        checkpoint.read_weights(_write(str(tmp_path), "w.safetensors", data))


def test_read_weights_metadata_that_is_not_an_object(tmp_path):
    data = st_save({"w": torch.zeros(2)}, metadata={checkpoint.METADATA_KEY: "[1]"})
    path = _write(str(tmp_path), "w.safetensors", data)
    result = outcome(CheckpointError, checkpoint.read_weights, path)
    assert result is None or isinstance(result[1], dict)


# ------------------------------------------------------------------------------ config
_CONFIG_KEYS = ["seed", "threads", "device", "precision", "description", "data", "data.name",
                "data.mean", "data.std", "data.image_size", "data.channels", "data.rotate",
                "teacher.model", "teacher.epochs", "teacher.kwargs", "teacher.kwargs.a.b",
                "teacher.mean", "student.milestones", "distill.loss", "distill.temperature",
                "bench.throughput_batches", "seed.x", "x", "a..b", ".a", "a.", "é.ü", "data=x"]
_YAML_VALUES = ["1", "-1", "0", "0.5", "1e-3", "1e999", ".nan", "-.inf", "true", "~", "",
                "[1, 2]", "[0.5, 0.5, 0.5]", "[0, -1]", "{a: 1}", "[", "{", "]", "}", "'",
                "\"\\q\"", "!!float x", "!!int x", "!!timestamp x", "2020-02-30",
                "2020-01-01", "2001-12-14t21:59:43.10-05:00", "!!binary '@@'", "!!set {a}",
                "&a [1]", "*a", "- a", "a: b", "0x1F", "0o17", "1_000", ":", "? a",
                "!!python/object/apply:os.system [ls]", "%YAML 1.1", "---", "...", "\t", "é",
                "kl", "mlp:784-10", "[&a [1, 1], [*a, *a]]", "!!str 1", "<<: {a: 1}",
                "{a: 1, a: 2}", "!!merge x", "!!null x", "!!bool x", "!!map [1]"]
_SCALAR_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


def _join(parts) -> str:
    return "".join(parts)


_OVERRIDE = st.one_of(
    st.tuples(st.one_of(st.sampled_from(_CONFIG_KEYS), _SCALAR_TEXT), st.just("="),
              st.one_of(st.sampled_from(_YAML_VALUES), _SCALAR_TEXT,
                        st.lists(st.sampled_from(_YAML_VALUES + ["[", "]", ",", " "]),
                                 max_size=5).map(_join))).map(_join),
    _SCALAR_TEXT)


@fuzz(200)
@given(base=st.sampled_from([{}, {"teacher": {"model": "mlp:784-10"}}, {"data": 1}]),
       overrides=st.lists(_OVERRIDE, max_size=4))
def test_overrides_then_validate(base, overrides):
    data = outcome(ConfigError, config.apply_overrides, json.loads(json.dumps(base)), overrides)
    if data is not None:
        result = outcome(ConfigError, config.validate, data)
        assert result is None or isinstance(result, config.RunConfig)


_YAML_LINE = st.tuples(st.integers(0, 6).map(lambda n: " " * n),
                       st.sampled_from(_CONFIG_KEYS + ["- ", "-", "", "teacher:", "data:"]),
                       st.sampled_from([": ", ":", " ", ""]),
                       st.one_of(st.sampled_from(_YAML_VALUES), _SCALAR_TEXT)).map(_join)


@fuzz(200)
@given(st.one_of(st.text(max_size=80),
                 st.tuples(st.sampled_from(_CONFIG_KEYS), st.sampled_from(_YAML_VALUES)).map(
                     lambda kv: f"{kv[0]}: {kv[1]}"),
                 st.lists(_YAML_LINE, max_size=8).map("\n".join)))
def test_read_yaml_then_validate(text):
    data = outcome(ConfigError, config._read_yaml, text, "test.yaml")
    if data is not None:
        assert isinstance(data, dict)
        result = outcome(ConfigError, config.validate, data)
        assert result is None or isinstance(result, config.RunConfig)


@pytest.mark.parametrize("text", [
    "[" * 10_000,
    "{" * 10_000,
    "[" * 10_000 + "]" * 10_000,
    "- " * 5_000 + "a",
    "".join(" " * i + "a:\n" for i in range(3_000)),
    "".join(" " * i + "- \n" for i in range(3_000)),
], ids=["open-brackets", "open-braces", "closed-brackets", "dashes", "indented-keys",
        "indented-dashes"])
def test_read_yaml_deep_nesting_is_a_config_error(text):
    with pytest.raises(ConfigError):
        with _within(20):
            config._read_yaml(text, "deep.yaml")


def test_override_deep_nesting_is_a_config_error():
    outcome(ConfigError, config.apply_overrides, {}, ["seed=" + "[" * 10_000])


@pytest.mark.parametrize("override", ["data.name=2020-02-30", "seed=!!float x", "seed=!!int x",
                                      "seed=!!timestamp x"])
def test_override_unconstructible_yaml_is_a_config_error(override):
    data = outcome(ConfigError, config.apply_overrides, {}, [override])
    if data is not None:
        outcome(ConfigError, config.validate, data)


@pytest.mark.parametrize("text", ["seed: 2020-02-30", "seed: !!float x", "seed: !!timestamp x"])
def test_read_yaml_unconstructible_scalar_is_a_config_error(text):
    outcome(ConfigError, config._read_yaml, text, "test.yaml")


def test_validation_message_of_an_alias_bomb_is_bounded():
    value = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]" + "".join(
        f", &{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcde", "bcdef")) + ", *f]"
    data = outcome(ConfigError, config.apply_overrides, {}, ["seed=" + value])
    outcome(ConfigError, config.validate, data)


# ------------------------------------------------------------------------------- CIFAR
def _pixels(n: int, width: int, dtype, fill: int) -> np.ndarray:
    return np.full((n, width), fill, dtype=dtype)


_ANY_LABEL = st.one_of(st.integers(-2, 12), st.integers(), st.sampled_from([2**63, 2**70, -2**70]),
                       st.booleans(), st.floats(allow_nan=True), st.none(), st.text(max_size=2))
_DATA = st.one_of(
    st.builds(_pixels, st.integers(0, 3), st.sampled_from([3072, 3072, 3071, 1, 0]),
              st.sampled_from([np.uint8, np.uint8, np.int8, np.float32, np.int64]),
              st.integers(0, 100)),
    hnp.arrays(st.sampled_from([np.uint8, np.float64]),
               hnp.array_shapes(min_dims=0, max_dims=3, max_side=3)),
    st.lists(st.integers(0, 255), max_size=4), st.none(), st.text(max_size=3))


@st.composite
def cifar_batches(draw, max_faults: int = 2):
    """Dict-shaped objects like a CIFAR batch (str or bytes keys): a valid one, then faults."""
    n = draw(st.integers(0, 3))
    fields = {"data": np.full((n, 3072), draw(st.integers(0, 255)), np.uint8),
              "labels": draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))}
    for _ in range(draw(st.integers(0, max_faults))):
        fault = draw(st.sampled_from(["data", "labels", "one label", "drop", "extra"]))
        if fault == "data":
            fields["data"] = draw(_DATA)
        elif fault == "labels":
            fields["labels"] = draw(st.one_of(st.lists(_ANY_LABEL, min_size=n, max_size=n),
                                              st.lists(_ANY_LABEL, max_size=4),
                                              hnp.arrays(np.int64, st.just((n,))),
                                              st.integers(), st.none()))
        elif fault == "one label" and isinstance(fields["labels"], list) and fields["labels"]:
            fields["labels"][draw(st.integers(0, len(fields["labels"]) - 1))] = draw(_ANY_LABEL)
        elif fault == "drop":
            fields.pop(draw(st.sampled_from(sorted(fields))), None)
        else:
            fields[draw(st.text(max_size=3))] = draw(st.integers())
    out = {(k.encode() if k in ("data", "labels") and draw(st.booleans()) else k): v
           for k, v in fields.items()}
    if max_faults and not draw(st.integers(0, 19)):
        return draw(st.one_of(st.none(), st.just([out])))
    return out


@fuzz(300)
@given(cifar_batches())
def test_cifar_batch_validation(obj):
    result = outcome(DataError, cifar._batch, obj, "labels", 10, "data_batch_1")
    if result is not None:
        images, labels = result
        assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)
        assert labels.dtype == np.int64 and labels.shape == images.shape[:1]
        assert labels.size == 0 or (labels.min() >= 0 and labels.max() < 10)


@fuzz(60)
@given(st.one_of(st.none(), st.integers(), st.lists(st.one_of(st.text(max_size=3),
                                                              st.binary(max_size=3),
                                                              st.integers()), max_size=11),
                 st.dictionaries(st.sampled_from(["label_names", b"label_names", "x"]),
                                 st.lists(st.text(max_size=2), min_size=9, max_size=11))))
def test_cifar_meta_validation(meta):
    names = outcome(DataError, cifar._names, meta, "label_names", 10, "batches.meta")
    if names is not None:
        assert len(names) == 10 and all(isinstance(n, str) for n in names)


def _pickled(obj, protocol: int) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


_VALID_PICKLE = st.builds(_pickled, cifar_batches(), st.sampled_from([2, 4, 5]))
# Protocol 4 only: numpy pickles arrays at protocol 5 (and empty ones at 2) with globals that
# the CIFAR unpickler rightly refuses.
_GOOD_PICKLE = st.builds(_pickled, cifar_batches(max_faults=0), st.just(4))
_EVIL = [pickle.dumps(print), pickle.dumps(Path("x")), b"cos\nsystem\n(S'true'\ntR.",
         b"\x80\x02c__builtin__\neval\nq\x00."]


@fuzz(150)
@given(st.one_of(st.binary(max_size=64),
                 st.binary(max_size=64).map(lambda b: b"\x80\x02" + b),
                 st.sampled_from(_EVIL), mutated(_VALID_PICKLE)))
def test_cifar_unpickle_any_bytes(raw):
    outcome(DataError, cifar._unpickle, raw, "data_batch_1")


def _tar_gz(members: list[tuple[str, bytes, bytes]]) -> bytes:
    """A gzipped tar of (name, type, payload) members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


_CIFAR10 = cifar.ARCHIVES["cifar10"]
_MEMBER_NAMES = [*(f"{_CIFAR10.folder}/{m}" for m in (*_CIFAR10.train_members,
                                                     _CIFAR10.test_member, _CIFAR10.meta_member)),
                 "../evil", "/abs", f"{_CIFAR10.folder}/readme.html", _CIFAR10.folder]
_GOOD_META = pickle.dumps({"label_names": list(_CIFAR10.classes)}, protocol=2)


@st.composite
def cifar_archives(draw):
    """A gzipped tar laid out like the cifar10 archive, with 0-2 faults: a member missing,
    duplicated, replaced by another (or a corrupt) pickle, or one that leaves the archive."""
    folder = _CIFAR10.folder
    members = [(f"{folder}/{m}", tarfile.REGTYPE, draw(_GOOD_PICKLE))
               for m in (*_CIFAR10.train_members, _CIFAR10.test_member)]
    members.append((f"{folder}/{_CIFAR10.meta_member}", tarfile.REGTYPE, _GOOD_META))
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(members) - 1))
        fault = draw(st.sampled_from(["drop", "duplicate", "payload", "evil"]))
        if fault == "drop":
            del members[i]
        elif fault == "duplicate":
            members.append(members[i])
        elif fault == "payload":
            members[i] = (members[i][0], tarfile.REGTYPE,
                          draw(st.one_of(mutated(_VALID_PICKLE), _VALID_PICKLE,
                                         st.sampled_from(_EVIL))))
        else:
            members.append((draw(st.sampled_from(_MEMBER_NAMES)),
                            draw(st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE,
                                                  tarfile.DIRTYPE])), b""))
        if not members:
            break
    return _tar_gz(draw(st.permutations(members)))


def _load_placed_archive(data: bytes):
    """``load_cifar`` with ``data`` placed as the cifar10 archive, its sha256 pinned."""
    spec = dataclasses.replace(_CIFAR10, sha256=hashlib.sha256(data).hexdigest())
    saved = cifar.ARCHIVES["cifar10"]
    cifar.ARCHIVES["cifar10"] = spec
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _write(tmp, f"cifar10/{spec.filename}", data)
            return outcome(DataError, cifar.load_cifar, "cifar10", tmp, offline=True)
    finally:
        cifar.ARCHIVES["cifar10"] = saved


@fuzz(60)
@given(st.one_of(st.binary(max_size=128), st.binary(max_size=128).map(gzip.compress),
                 st.binary(max_size=128).map(lambda b: gzip.compress(b"\x00" * 512 + b)),
                 mutated(cifar_archives()), cifar_archives()))
def test_load_cifar_any_archive(data):
    result = _load_placed_archive(data)
    if result is not None:
        for split in ("train", "test"):
            images, labels = result[f"{split}_images"], result[f"{split}_labels"]
            assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)
            assert labels.dtype == np.int64 and labels.shape == images.shape[:1]
            assert labels.size == 0 or (labels.min() >= 0 and labels.max() < 10)
        assert result["classes"] == _CIFAR10.classes


def test_cifar_label_beyond_int64_is_a_data_error():
    batch = {"data": np.zeros((1, 3072), np.uint8), "labels": [2**70]}
    with pytest.raises(DataError, match="labels"):
        cifar._batch(batch, "labels", 10, "data_batch_1")


# --------------------------------------------------------------------------------- npz
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val", "classes")
_ANY_DTYPE = st.sampled_from([np.uint8, np.int16, np.int64, np.uint64, np.float32, np.bool_,
                              np.dtype("U3"), np.dtype("S3"), np.dtype(object)])


@st.composite
def any_arrays(draw):
    dtype = np.dtype(draw(_ANY_DTYPE))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=3))
    if dtype.hasobject:
        return np.full(shape, draw(st.integers()), dtype=object)
    return draw(hnp.arrays(dtype, shape))


@st.composite
def npz_members(draw):
    """Arrays of a valid npz dataset (with or without val and classes), then 0-2 faults: a key
    missing, an array of another dtype or shape, images of another size, a label out of range."""
    n, n_classes = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    layout = draw(st.sampled_from([(h, w), (1, h, w), (3, h, w), (h, w, 3), (h, w, 1)]))
    splits = ["train", "test"] + (["val"] if draw(st.booleans()) else [])
    members = {}
    for split in splits:
        images = draw(hnp.arrays(np.uint8, (n, *layout)))
        members[f"x_{split}"] = np.asfortranarray(images) if draw(st.booleans()) else images
        dtype = draw(st.sampled_from([np.uint8, np.int8, np.int64, np.uint64, np.int16]))
        members[f"y_{split}"] = draw(hnp.arrays(dtype, (n,), elements=st.integers(
            0, n_classes - 1)))
    if draw(st.booleans()):
        names = draw(st.lists(st.text(max_size=3), min_size=n_classes, max_size=n_classes,
                              unique=True))
        bytes_ok = all(name.isascii() and "\x00" not in name for name in names)
        members["classes"] = np.array(names, dtype=bytes if bytes_ok and draw(st.booleans())
                                      else str)
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(_NPZ_KEYS))
        fault = draw(st.sampled_from(["drop", "any", "size", "label"]))
        if fault == "drop":
            members.pop(key, None)
        elif fault == "any":
            members[key] = draw(any_arrays())
        elif fault == "size" and key.startswith("x_"):
            members[key] = np.zeros(draw(st.sampled_from([(n + 1, *layout), (n, h + 1, w),
                                                          (0, *layout), (n, 2, h, w, 3)])),
                                    np.uint8)
        elif fault == "label" and key.startswith("y_") and key in members:
            labels = members[key].astype(np.int64)
            labels[0] = draw(st.sampled_from([-1, n_classes, 2**40]))
            members[key] = labels
    return members


def _npz_bytes(members: dict, compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **members)
    return buffer.getvalue()


_VALID_NPZ = st.builds(_npz_bytes, npz_members(), st.booleans())


def _check_npz(out: dict) -> None:
    classes = out["classes"]
    assert isinstance(classes, tuple) and all(isinstance(c, str) for c in classes)
    assert len(set(classes)) == len(classes)
    shapes = set()
    for split in ("train", "test", "val"):
        if f"{split}_images" not in out:
            assert split == "val" and "val_labels" not in out
            continue
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[1] in (1, 3)
        assert images.flags.c_contiguous and len(images) > 0
        assert labels.dtype == np.int64 and labels.shape == (len(images),)
        assert labels.min() >= 0 and labels.max() < len(classes)
        shapes.add(images.shape[1:])
    assert len(shapes) == 1


@st.composite
def flagged(draw, base):
    """A valid zip with other general-purpose flags (bit 0: encrypted) or another compression
    method (deflate, bzip2, lzma, unknown) in one of its central directory entries."""
    data = bytearray(draw(base))
    starts = [i for i in range(len(data)) if data.startswith(b"PK\x01\x02", i)]
    if starts:
        at = draw(st.sampled_from(starts))
        if draw(st.booleans()):
            data[at + 8] |= draw(st.integers(1, 255))
        else:
            data[at + 10:at + 12] = struct.pack("<H", draw(st.sampled_from([0, 8, 12, 14, 99])))
    return bytes(data)


@fuzz(120)
@given(st.one_of(st.binary(max_size=96),
                 st.binary(max_size=96).map(lambda b: b"PK\x03\x04" + b),
                 _VALID_NPZ, mutated(_VALID_NPZ), flagged(_VALID_NPZ)))
def test_read_npz_any_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        out = outcome(DataError, npz.read_npz, _write(tmp, "d.npz", data))
    if out is not None:
        _check_npz(out)


def _npy_header(shape, descr="|u1", body=b"") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue() + body


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for key, value in members.items():
            zf.writestr(f"{key}.npy", value)
    return buffer.getvalue()


_SMALL = {"x_train": _npy_header((2, 4, 4), body=bytes(32)),
          "y_train": _npy_header((2,), "<i8", bytes(16)),
          "x_test": _npy_header((2, 4, 4), body=bytes(32)),
          "y_test": _npy_header((2,), "<i8", bytes(16))}


@st.composite
def claimed_shapes(draw):
    """Image and label shapes of one split that agree with each other (so that the header
    checks pass), their sizes anything from 0 to far beyond int64."""
    n = draw(_DIM)
    image = (n, *draw(st.lists(_DIM, min_size=2, max_size=2)), draw(st.sampled_from([1, 3])))
    return draw(st.sampled_from([image, image[:3]])), (n,)


@fuzz(80)
@given(st.lists(st.sampled_from(["train", "test"]), min_size=1, max_size=2, unique=True),
       claimed_shapes(), st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
def test_read_npz_header_claims_never_allocate(splits, shapes, compression):
    """Array headers claiming any shape over a tiny body: refused before allocating."""
    members = dict(_SMALL)
    for split in splits:
        members[f"x_{split}"] = _npy_header(shapes[0], "|u1", bytes(8))
        members[f"y_{split}"] = _npy_header(shapes[1], "<i8", bytes(8))
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "d.npz", _zip(members, compression))
        with peak_bytes() as peak:
            out = outcome(DataError, npz.read_npz, path)
    assert peak[0] < 2**22
    if out is not None:
        _check_npz(out)


@pytest.mark.parametrize("n", [2**70, -2])
def test_npz_shape_beyond_int64_or_negative_is_a_data_error(tmp_path, n):
    members = {**_SMALL, "x_train": _npy_header((n, 4, 4)), "y_train": _npy_header((n,), "<i8")}
    with pytest.raises(DataError):
        npz.read_npz(_write(str(tmp_path), "d.npz", _zip(members)))


def test_npz_header_claiming_gigabytes_over_a_tiny_body_is_refused_without_allocating(tmp_path):
    members = {**_SMALL, "x_train": _npy_header((2 * 10**8, 4, 4)),
               "y_train": _npy_header((2 * 10**8,), "<i8")}
    path = _write(str(tmp_path), "d.npz", _zip(members))
    with peak_bytes() as peak, pytest.raises(DataError, match="x_train"):
        npz.read_npz(path)
    assert peak[0] < 2**22


def test_npz_version_3_header_claiming_gigabytes_is_refused_without_allocating(tmp_path):
    def v3(shape, descr):
        header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
        header += b" " * (-(12 + len(header) + 1) % 64) + b"\n"
        return b"\x93NUMPY\x03\x00" + struct.pack("<I", len(header)) + header

    members = {**_SMALL, "x_train": v3((2 * 10**8, 4, 4), "|u1"),
               "y_train": v3((2 * 10**8,), "<i8")}
    path = _write(str(tmp_path), "d.npz", _zip(members))
    with peak_bytes() as peak, pytest.raises(DataError, match="x_train"):
        npz.read_npz(path)
    assert peak[0] < 2**22


def test_npz_that_is_also_an_npy_file_is_a_data_error(tmp_path):
    # An .npy followed by a zip: zipfile reads the zip at the end, np.load the .npy at the start.
    data = _npy_header((2,), body=b"ab") + _zip(_SMALL)
    with pytest.raises(DataError):
        npz.read_npz(_write(str(tmp_path), "d.npz", data))


def test_npz_with_an_encrypted_member_is_a_data_error(tmp_path):
    data = bytearray(_zip(_SMALL))
    data[data.find(b"PK\x01\x02") + 8] |= 1  # central directory flag bit 0: RuntimeError
    with pytest.raises(DataError, match="x_train"):
        npz.read_npz(_write(str(tmp_path), "d.npz", bytes(data)))


def test_npz_with_a_corrupt_deflate_stream_is_a_data_error(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in _SMALL.items():
            zf.writestr(f"{key}.npy", value)
    data = bytearray(buffer.getvalue())
    start = 30 + len("x_train.npy")  # the first member's compressed data
    data[start:start + 4] = b"\xff\xff\xff\xff"
    with pytest.raises(DataError, match="x_train"):
        npz.read_npz(_write(str(tmp_path), "d.npz", bytes(data)))


def test_npz_fortran_order_images_come_back_contiguous(tmp_path):
    buffer = io.BytesIO()
    images = np.asfortranarray(np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2))
    np.savez(buffer, x_train=images, y_train=np.array([0, 1]), x_test=images,
             y_test=np.array([1, 0]))
    out = npz.read_npz(_write(str(tmp_path), "d.npz", buffer.getvalue()))
    assert out["train_images"].flags.c_contiguous
    np.testing.assert_array_equal(out["train_images"], images)


# ------------------------------------------------------------------------ image folders
_FORMATS = ["PNG", "PNG", "BMP", "JPEG", "GIF", "TIFF", "WEBP", "PPM"]


def _image_bytes(pixels: np.ndarray, mode: str, fmt: str) -> bytes:
    if mode == "I;16":
        image = Image.fromarray(pixels.astype(np.uint16) * 257)
    elif mode == "RGB":
        image = Image.fromarray(np.stack([pixels] * 3, axis=-1))
    else:
        image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # a mode this format cannot store
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


_VALID_IMAGE = st.builds(_image_bytes,
                         hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.integers(1, 4))),
                         st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "LA"]),
                         st.sampled_from(_FORMATS))


@fuzz(80)
@given(st.one_of(st.binary(max_size=96), mutated(_VALID_IMAGE), _VALID_IMAGE,
                 _VALID_IMAGE.map(lambda b: b[:len(b) // 2])))
def test_read_image_folder_any_image_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        _write(tmp, "ds/train/a/x.png", data)  # the same bytes twice: a valid image is read
        _write(tmp, "ds/test/a/y.png", data)
        out = outcome(DataError, folders.read_image_folder, Path(tmp) / "ds",
                      cache_dir=Path(tmp) / "cache")
    if out is not None:
        assert out["classes"] == ("a",)
        for split in ("train", "test"):
            images, labels = out[f"{split}_images"], out[f"{split}_labels"]
            assert images.dtype == np.uint8 and images.shape[:2] in ((1, 1), (1, 3))
            assert labels.tolist() == [0]
