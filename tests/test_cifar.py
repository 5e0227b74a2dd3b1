"""CIFAR-10/100 from tiny archives in the exact official format (tar.gz of protocol-2 pickles)."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import struct
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from kdistill.data import cifar
from kdistill.errors import DataError

N = 20  # images per batch


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` opcodes, as cPickle did for the official batches."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def dump_py2(obj) -> bytes:
    out = io.BytesIO()
    _Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def dump_py3(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def official_objects(name: str, n: int = N, seed: int = 0) -> dict[str, object]:
    """Member short name -> the dict the official pickle holds (bytes keys, as Python 2 wrote)."""
    spec = cifar.ARCHIVES[name]
    rng = np.random.default_rng(seed)

    def batch(label: str) -> dict:
        out = {b"batch_label": label.encode(), b"data": rng.integers(0, 256, (n, 3072), np.uint8),
               b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        if spec.coarse_classes:
            out[b"fine_labels"] = [int(v) for v in rng.integers(0, 100, n)]
            out[b"coarse_labels"] = [int(v) for v in rng.integers(0, 20, n)]
        else:
            out[b"labels"] = [int(v) for v in rng.integers(0, 10, n)]
        return out

    objs = {m: batch(f"training batch {i}") for i, m in enumerate(spec.train_members)}
    objs[spec.test_member] = batch("testing batch")
    if spec.coarse_classes:
        objs[spec.meta_member] = {b"fine_label_names": [c.encode() for c in spec.classes],
                                  b"coarse_label_names": [c.encode() for c in spec.coarse_classes]}
    else:
        objs[spec.meta_member] = {b"label_names": [c.encode() for c in spec.classes],
                                  b"num_cases_per_batch": n, b"num_vis": 3072}
    return objs


def pack(path: Path, name: str, members: dict[str, bytes],
         extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> str:
    """Write a gzipped tar with the official folder, ``members`` and any ``extra`` entries."""
    folder = cifar.ARCHIVES[name].folder
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for member, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def independent_decode(name: str, members: dict[str, bytes], coarse: bool = False) -> dict:
    """The CIFAR web page's recipe: pickle.load(encoding='bytes'), reshape(-1, 3, 32, 32)."""
    spec = cifar.ARCHIVES[name]
    key = b"coarse_labels" if coarse else (b"fine_labels" if spec.coarse_classes else b"labels")
    out = {}
    for split, batches in (("train", spec.train_members), ("test", [spec.test_member])):
        dicts = [pickle.loads(members[m], encoding="bytes") for m in batches]
        out[f"{split}_images"] = np.concatenate([d[b"data"].reshape(-1, 3, 32, 32) for d in dicts])
        out[f"{split}_labels"] = np.concatenate([np.array(d[key], np.int64) for d in dicts])
    return out


def assert_same(got: dict, want: dict) -> None:
    for key, array in want.items():
        if key == "classes":
            assert got[key] == array
            continue
        assert got[key].dtype == array.dtype and got[key].shape == array.shape, key
        assert np.array_equal(got[key], array), key  # a bytes diff would print every pixel


def pin(monkeypatch, name: str, sha256: str, url: str | None = None) -> None:
    spec = cifar.ARCHIVES[name]
    monkeypatch.setitem(cifar.ARCHIVES, name,
                        dataclasses.replace(spec, sha256=sha256, url=url or spec.url))


def place(tmp_path, monkeypatch, name: str, members: dict[str, bytes], extra=()) -> Path:
    """Put an archive by hand under a fresh root, pinned to its own sha256; return the root."""
    root = tmp_path / "root"
    pin(monkeypatch, name, pack(cifar.archive_path(name, root), name, members, extra))
    return root


def dumped(name: str, dump=dump_py2, **changes) -> dict[str, bytes]:
    """Pickled members, plus the stray non-pickle file each official archive also holds."""
    objs = official_objects(name)
    objs.update(changes)
    out = {m: dump(obj) if not isinstance(obj, bytes) else obj for m, obj in objs.items()}
    out["file.txt~" if name == "cifar100" else "readme.html"] = b"<html>not a pickle</html>"
    return out


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server over ``tmp_path / 'served'``; yields (directory, base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that stops reading early (the size cap) is expected

    httpd = Server(("127.0.0.1", 0), partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


# ------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("name,dump", [("cifar10", dump_py2), ("cifar10", dump_py3),
                                       ("cifar100", dump_py2)])
def test_download_matches_an_independent_decode(name, dump, server, tmp_path, monkeypatch):
    served, base = server
    members = dumped(name, dump)
    spec = cifar.ARCHIVES[name]
    pin(monkeypatch, name, pack(served / spec.filename, name, members), base + spec.filename)
    monkeypatch.delenv("KDISTILL_OFFLINE")
    root = tmp_path / "root"
    got = cifar.load_cifar(name, root)
    assert_same(got, independent_decode(name, members))
    n_train = N * len(spec.train_members)
    assert got["train_images"].shape == (n_train, 3, 32, 32) and got["test_labels"].shape == (N,)
    assert got["classes"] == spec.classes
    raw = official_objects(name)[spec.train_members[0]][b"data"]  # the generator's own pixels
    assert np.array_equal(got["train_images"][:N].reshape(N, -1), raw)
    source = json.loads((root / name / "SOURCE.json").read_text())
    assert source["source"] == "download" and source["url"] == base + spec.filename
    assert sorted(p.name for p in (root / name).iterdir()) == sorted(["SOURCE.json", "decoded",
                                                                       spec.filename])


def test_placed_by_hand_offline_then_served_from_the_cache(tmp_path, monkeypatch):
    members = dumped("cifar10")
    root = place(tmp_path, monkeypatch, "cifar10", members)
    monkeypatch.setenv("KDISTILL_DATA", str(root))  # the default root
    first = cifar.load_cifar("cifar10")
    assert_same(first, independent_decode("cifar10", members))
    assert json.loads((root / "cifar10" / "SOURCE.json").read_text())["source"] == "placed by hand"
    manifest = json.loads((root / "cifar10" / "decoded" / "manifest.json").read_text())
    assert manifest["archive_sha256"] == cifar.ARCHIVES["cifar10"].sha256
    cifar.archive_path("cifar10").unlink()  # only the cache can answer now (offline, no archive)
    second = cifar.load_cifar("cifar10")
    assert_same(second, first)
    assert second["classes"] == first["classes"]


def test_a_tampered_cache_is_decoded_again(tmp_path, monkeypatch):
    members = dumped("cifar10")
    root = place(tmp_path, monkeypatch, "cifar10", members)
    want = independent_decode("cifar10", members)
    cifar.load_cifar("cifar10", root)
    decoded = root / "cifar10" / "decoded"
    np.save(decoded / "train_images.npy", np.zeros((100, 3, 32, 32), np.uint8))
    assert_same(cifar.load_cifar("cifar10", root), want)          # re-decoded from the archive
    (decoded / "manifest.json").write_text("{not json")
    assert_same(cifar.load_cifar("cifar10", root), want)
    assert json.loads((decoded / "manifest.json").read_text())["format"] == cifar.CACHE_FORMAT
    (decoded / "test_labels.npy").write_bytes(b"garbage")
    cifar.archive_path("cifar10", root).unlink()
    with pytest.raises(DataError, match="cannot download"):     # no crash: asks for the archive
        cifar.load_cifar("cifar10", root)


def test_cifar100_coarse_labels_and_names(tmp_path, monkeypatch):
    members = dumped("cifar100")
    root = place(tmp_path, monkeypatch, "cifar100", members)
    fine = cifar.load_cifar("cifar100", root)
    coarse = cifar.load_cifar("cifar100", root, coarse=True)
    assert_same(coarse, independent_decode("cifar100", members, coarse=True))
    assert coarse["classes"] == cifar.CIFAR100_COARSE_CLASSES and len(coarse["classes"]) == 20
    assert len(fine["classes"]) == 100
    assert np.array_equal(coarse["train_images"], fine["train_images"])
    assert not np.array_equal(coarse["train_labels"], fine["train_labels"])


def test_official_class_names_are_hard_coded():
    assert cifar.ARCHIVES["cifar10"].classes[:3] == ("airplane", "automobile", "bird")
    fine = cifar.ARCHIVES["cifar100"].classes
    assert len(fine) == 100 and list(fine) == sorted(fine) and fine[1] == "aquarium_fish"
    assert len(set(cifar.ARCHIVES["cifar100"].coarse_classes)) == 20
    assert cifar.archive_path("cifar100", "/x") == Path("/x/cifar100/cifar-100-python.tar.gz")


# ---------------------------------------------------------------------------- no archive
def test_offline_without_the_archive_says_what_to_put_where(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        cifar.load_cifar("cifar10", root)
    text = str(info.value)
    assert "\n" not in text
    for part in ("cifar-10-python.tar.gz", cifar.ARCHIVES["cifar10"].sha256, str(root / "cifar10")):
        assert part in text


def test_unreachable_server_names_the_file_too(tmp_path, monkeypatch):
    pin(monkeypatch, "cifar100", cifar.ARCHIVES["cifar100"].sha256, "http://127.0.0.1:9/c.tar.gz")
    with pytest.raises(DataError) as info:
        cifar.fetch_archive("cifar100", tmp_path, offline=False)
    text = str(info.value)
    assert "\n" not in text and "cifar-100-python.tar.gz" in text and "place it by hand" in text
    assert list((tmp_path / "cifar100").iterdir()) == []


def test_only_https_or_loopback_downloads(tmp_path, monkeypatch):
    pin(monkeypatch, "cifar10", "0" * 64, "http://example.com/cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="refusing to download over http"):
        cifar.fetch_archive("cifar10", tmp_path, offline=False)


def test_unknown_name_and_coarse_cifar10_are_refused(tmp_path):
    with pytest.raises(DataError, match="unknown CIFAR dataset"):
        cifar.load_cifar("cifar1000", tmp_path)
    with pytest.raises(DataError, match="no coarse labels"):
        cifar.load_cifar("cifar10", tmp_path, coarse=True)


# --------------------------------------------------------------------------- bad inputs
def test_wrong_sha256_placed_by_hand_is_refused_and_kept(tmp_path, monkeypatch):
    root = place(tmp_path, monkeypatch, "cifar10", dumped("cifar10"))
    before = cifar.archive_path("cifar10", root).read_bytes()
    pin(monkeypatch, "cifar10", "0" * 64)
    with pytest.raises(DataError, match="not the official cifar-10-python.tar.gz"):
        cifar.load_cifar("cifar10", root)
    assert cifar.archive_path("cifar10", root).read_bytes() == before  # nothing is lost


def test_wrong_sha256_over_http_leaves_nothing_behind(server, tmp_path, monkeypatch):
    served, base = server
    pack(served / "c.tar.gz", "cifar10", dumped("cifar10"))
    pin(monkeypatch, "cifar10", "0" * 64, base + "c.tar.gz")
    with pytest.raises(DataError) as info:
        cifar.load_cifar("cifar10", tmp_path, offline=False)
    assert "downloaded file has sha256" in str(info.value) and "0" * 64 in str(info.value)
    assert list((tmp_path / "cifar10").iterdir()) == []


def test_download_size_is_capped(server, tmp_path, monkeypatch):
    served, base = server
    sha = pack(served / "c.tar.gz", "cifar10", dumped("cifar10"))
    pin(monkeypatch, "cifar10", sha, base + "c.tar.gz")
    monkeypatch.setattr(cifar, "MAX_ARCHIVE_BYTES", 1000)
    with pytest.raises(DataError, match="more than 1000 bytes"):
        cifar.fetch_archive("cifar10", tmp_path, offline=False)
    assert list((tmp_path / "cifar10").iterdir()) == []


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x",
            link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def _bad_archive(case: str, path: Path) -> str:
    """Write the archive for ``case`` to ``path``; return its sha256."""
    folder = cifar.ARCHIVES["cifar10"].folder
    if case == "not gzip":
        path.parent.mkdir(parents=True)
        path.write_bytes(b"PK\x03\x04 this is a zip, say")
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if case == "gzip, not tar":
        path.parent.mkdir(parents=True)
        path.write_bytes(gzip.compress(b"hello " * 300))
        return hashlib.sha256(path.read_bytes()).hexdigest()
    members, extra = dumped("cifar10"), []
    batch = official_objects("cifar10")["data_batch_2"]
    if case == "member ../evil":
        extra = [_member("../evil")]
    elif case == "member with .. inside":
        extra = [_member(f"{folder}/../../evil")]
    elif case == "absolute member":
        extra = [_member("/tmp/evil")]
    elif case == "symlink member":
        members.pop("test_batch")
        extra = [_member(f"{folder}/test_batch", tarfile.SYMTYPE, link="/etc/passwd")]
    elif case == "hardlink member":
        extra = [_member(f"{folder}/extra", tarfile.LNKTYPE, link=f"{folder}/test_batch")]
    elif case == "device member":
        extra = [_member(f"{folder}/dev", tarfile.CHRTYPE)]
    elif case == "missing member":
        members.pop("data_batch_4")
    elif case == "labels out of range":
        members["data_batch_2"] = dump_py2({**batch, b"labels": [10] * N})
    elif case == "negative label":
        members["data_batch_2"] = dump_py2({**batch, b"labels": [-1] * N})
    elif case == "wrong column count":
        members["data_batch_2"] = dump_py2({**batch, b"data": batch[b"data"][:, :3000].copy()})
    elif case == "float data":
        members["data_batch_2"] = dump_py2({**batch, b"data": batch[b"data"].astype(np.float32)})
    elif case == "label count mismatch":
        members["data_batch_2"] = dump_py2({**batch, b"labels": batch[b"labels"][:-1]})
    elif case == "no labels key":
        members["data_batch_2"] = dump_py2({b"data": batch[b"data"]})
    elif case == "not a dict":
        members["data_batch_2"] = dump_py2([batch[b"data"]])
    elif case == "truncated pickle":
        members["data_batch_2"] = members["data_batch_2"][:500]
    elif case == "wrong number of class names":
        members["batches.meta"] = dump_py2({b"label_names": [b"cat", b"dog"]})
    elif case == "duplicate member":
        extra = [_member(f"{folder}/data_batch_1", data=members["data_batch_1"])]
    return pack(path, "cifar10", members, extra)


BAD_CASES = {  # case -> what the one-line error must say
    "not gzip": "not a readable gzipped tar archive", "gzip, not tar": "not a readable gzipped tar",
    "member ../evil": "leaves the archive: '../evil'", "member with .. inside": "leaves the archive",
    "absolute member": "leaves the archive: '/tmp/evil'", "symlink member": "link or special file",
    "hardlink member": "link or special file", "device member": "link or special file",
    "missing member": "lacks cifar-10-batches-py/data_batch_4",
    "labels out of range": "labels outside 0..9", "negative label": "labels outside 0..9",
    "wrong column count": "not a uint8 N x 3072 array", "float data": "not a uint8 N x 3072",
    "label count mismatch": "20 images but 19 labels", "no labels key": "has no 'labels'",
    "not a dict": "is not a dict", "truncated pickle": "cannot unpickle",
    "wrong number of class names": "not a list of 10 names", "duplicate member": "duplicate",
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_archives_are_one_line_data_errors(case, tmp_path, monkeypatch):
    root = tmp_path / "root"
    pin(monkeypatch, "cifar10", _bad_archive(case, cifar.archive_path("cifar10", root)))
    with pytest.raises(DataError) as info:
        cifar.load_cifar("cifar10", root)
    assert BAD_CASES[case] in str(info.value) and "\n" not in str(info.value)
    assert not (root / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (root / "cifar10" / "decoded" / "manifest.json").exists()


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_os_system_is_refused_unrun(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    evil = dump_py2({**official_objects("cifar10")["data_batch_3"], b"labels": _RunsACommand(marker)})
    pickle.loads(evil, encoding="bytes")  # the payload is live: an ordinary unpickler runs it
    assert marker.exists()
    marker.unlink()
    root = place(tmp_path, monkeypatch, "cifar10", dumped("cifar10", data_batch_3=evil))
    with pytest.raises(DataError, match="refusing to unpickle posix.system"):
        cifar.load_cifar("cifar10", root)
    assert not marker.exists()
