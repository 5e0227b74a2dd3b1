"""Readers for users' own data: image folders (Pillow) and .npz files."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdistill.data import folders
from kdistill.data.folders import is_image_folder, read_image_folder
from kdistill.data.npz import estimate_bytes, read_npz
from kdistill.errors import DataError

CLASSES = tuple(f"class{k}" for k in range(10))


def rgb_images(n: int, seed: int, size=(32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Smooth uint8 [N, 3, H, W] images (JPEG keeps them close) and labels covering every class."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    images = np.empty((n, 3, h, w), dtype=np.uint8)
    for i in range(n):
        for c in range(3):
            a, b, p = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 6.3)
            wave = np.sin(a * xx / w * 3 + b * yy / h * 3 + p)
            images[i, c] = (127 + 100 * wave).astype(np.uint8)
    labels = np.arange(n) % 10
    return images, labels


def write_folder(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                 classes=CLASSES, jpeg_every: int = 0) -> dict[str, list[str]]:
    """Write [N, C, H, W] arrays as PATH/<split>/<class>/<i>.png (every jpeg_every-th as .jpg)."""
    kinds: dict[str, list[str]] = {}
    for split, (images, labels) in splits.items():
        kinds[split] = []
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
            suffix = ".jpg" if jpeg_every and i % jpeg_every == 0 else ".png"
            pil.save(folder / f"{i:05d}{suffix}", quality=95)
            kinds[split].append(suffix)
    return kinds


def folder_order(labels) -> list[int]:
    """The order read_image_folder uses: by class, then by file name (the zero-padded index)."""
    return sorted(range(len(labels)), key=lambda i: (labels[i], i))


def one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.fixture
def rgb_folder(tmp_path):
    train, test = rgb_images(40, seed=1), rgb_images(20, seed=2)
    kinds = write_folder(tmp_path / "ds", {"train": train, "test": test}, jpeg_every=3)
    return tmp_path / "ds", train, test, kinds


def grey_folder(root: Path, n: int = 20, size=(12, 10)) -> Path:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (n, 1, *size), dtype=np.uint8)
    labels = np.arange(n) % 2
    write_folder(root, {"train": (images, labels), "test": (images[:4], labels[:4])},
                 classes=("a", "b"))
    return root


# ----------------------------------------------------------------------- image folders
def test_rgb_folder_round_trip_png_exact_jpeg_close(rgb_folder, tmp_path):
    root, (tx, ty), (sx, sy), kinds = rgb_folder
    assert is_image_folder(root) and not is_image_folder(tmp_path)
    out = read_image_folder(root, cache_dir=tmp_path / "cache")
    assert out["classes"] == CLASSES
    assert "val_images" not in out
    for split, (x, y) in {"train": (tx, ty), "test": (sx, sy)}.items():
        order = folder_order(y)
        x, y, suffixes = x[order], y[order], np.array(kinds[split])[order]
        got = out[f"{split}_images"]
        assert got.dtype == np.uint8 and got.shape == (len(y), 3, 32, 32)
        assert got.flags["C_CONTIGUOUS"]
        assert out[f"{split}_labels"].dtype == np.int64
        np.testing.assert_array_equal(out[f"{split}_labels"], y)
        png, jpg = suffixes == ".png", suffixes == ".jpg"
        assert png.any() and jpg.any()
        np.testing.assert_array_equal(got[png], x[png])
        diff = np.abs(got[jpg].astype(int) - x[jpg].astype(int))
        assert diff.mean() < 3 and diff.max() < 60


def test_val_split_and_class_subset(tmp_path):
    train, test, val = (rgb_images(n, seed, (8, 8)) for n, seed in ((20, 1), (10, 2), (3, 3)))
    write_folder(tmp_path / "ds", {"train": train, "test": test, "val": val})
    out = read_image_folder(tmp_path / "ds", cache_dir=tmp_path / "cache")
    assert out["val_images"].shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(out["val_labels"], [0, 1, 2])  # a subset of the classes


def test_greyscale_folder_is_one_channel(tmp_path):
    out = read_image_folder(grey_folder(tmp_path / "g"), cache_dir=tmp_path / "cache")
    assert out["train_images"].shape == (20, 1, 12, 10) and out["classes"] == ("a", "b")


def test_channels_3_forces_rgb(tmp_path):
    root = grey_folder(tmp_path / "g")
    grey = read_image_folder(root, cache_dir=tmp_path / "cache")
    rgb = read_image_folder(root, channels=3, cache_dir=tmp_path / "cache")
    assert rgb["train_images"].shape == (20, 3, 12, 10)
    for c in range(3):
        np.testing.assert_array_equal(rgb["train_images"][:, c], grey["train_images"][:, 0])


def test_image_size_resizes(tmp_path):
    root = grey_folder(tmp_path / "g")
    out = read_image_folder(root, image_size=(6, 5), cache_dir=tmp_path / "cache")
    assert out["train_images"].shape == (20, 1, 6, 5)
    square = read_image_folder(root, image_size=7, cache_dir=tmp_path / "cache")
    assert square["test_images"].shape == (4, 1, 7, 7)


def test_mixed_sizes_need_image_size(tmp_path):
    root = grey_folder(tmp_path / "g")
    Image.new("L", (9, 9)).save(root / "train" / "b" / "zz.png")
    with pytest.raises(DataError, match=r"differ in size.*12.*zz\.png is 9x9") as e:
        read_image_folder(root, cache_dir=tmp_path / "cache")
    one_line_error(e)
    out = read_image_folder(root, image_size=12, cache_dir=tmp_path / "cache")
    assert out["train_images"].shape == (21, 1, 12, 12)


@pytest.mark.parametrize("channels,size", [(2, None), (0, None), (None, 0), (None, "big")])
def test_bad_options(tmp_path, channels, size):
    with pytest.raises(DataError, match="channels|image_size") as e:
        read_image_folder(grey_folder(tmp_path / "g"), channels=channels, image_size=size,
                          cache_dir=tmp_path / "cache")
    one_line_error(e)


def test_layout_errors(tmp_path):
    cache = tmp_path / "cache"

    def fails(root, pattern):
        with pytest.raises(DataError, match=pattern) as e:
            read_image_folder(root, cache_dir=cache)
        one_line_error(e)

    fails(tmp_path / "missing", "no such folder")
    (tmp_path / "a").mkdir()
    fails(tmp_path / "a", r"no train/ folder")
    (tmp_path / "a" / "train").mkdir()
    (tmp_path / "a" / "test").mkdir()
    fails(tmp_path / "a", r"train has no class subfolders")

    root = grey_folder(tmp_path / "g")
    (root / "train" / "c").mkdir()
    fails(root, r"class folder .*train/c holds no images")
    (root / "train" / "c").rmdir()

    (root / "test" / "zebra").mkdir()
    fails(root, r"test/zebra is a class that .*train does not have")
    (root / "test" / "zebra").rmdir()

    Image.new("L", (12, 10)).save(root / "train" / "loose.png")
    fails(root, r"loose\.png is not inside a class folder")
    (root / "train" / "loose.png").unlink()

    empty = tmp_path / "e"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (empty / split / cls).mkdir(parents=True)
            (empty / split / cls / "notes.txt").write_text("no images here")
    fails(empty, r"train holds no images")


def test_hidden_entries_are_skipped(tmp_path):
    root = grey_folder(tmp_path / "g")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\0junk")
    assert read_image_folder(root, cache_dir=tmp_path / "cache")["classes"] == ("a", "b")


def test_truncated_png_is_refused(tmp_path):
    root = grey_folder(tmp_path / "g", size=(64, 64))
    victim = root / "train" / "b" / "00003.png"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*00003\.png") as e:
        read_image_folder(root, cache_dir=tmp_path / "cache")
    one_line_error(e)


def test_not_an_image_is_refused(tmp_path):
    root = grey_folder(tmp_path / "g")
    (root / "test" / "a" / "fake.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*fake\.jpg") as e:
        read_image_folder(root, cache_dir=tmp_path / "cache")
    one_line_error(e)


@pytest.mark.parametrize("side", [12, 16])  # 144 px: warning (> limit); 256 px: error (> 2x limit)
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, side):
    root = grey_folder(tmp_path / "g", size=(10, 10))
    Image.new("L", (side, side)).save(root / "train" / "a" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=r"bomb\.png is too large to decode safely") as e:
        read_image_folder(root, image_size=10, cache_dir=tmp_path / "cache")
    one_line_error(e)


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root, cache = grey_folder(tmp_path / "g"), tmp_path / "cache"
    first = read_image_folder(root, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(Image, "open", no_decoding)
        second = read_image_folder(root, cache_dir=cache)
    assert second["classes"] == first["classes"]
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(second[key], first[key])
        assert second[key].dtype == first[key].dtype

    # A changed file (new content, new mtime) misses the cache and is decoded afresh.
    victim = root / "train" / "a" / "00000.png"
    Image.new("L", (10, 12), color=7).save(victim)
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = read_image_folder(root, cache_dir=cache)
    assert (third["train_images"][0] == 7).all()
    assert len(list(cache.glob("*.npz"))) == 2
    # An added file too.
    Image.new("L", (10, 12), color=9).save(root / "train" / "b" / "new.png")
    assert len(read_image_folder(root, cache_dir=cache)["train_labels"]) == 21


def test_corrupt_cache_is_rebuilt(tmp_path):
    root, cache = grey_folder(tmp_path / "g"), tmp_path / "cache"
    first = read_image_folder(root, cache_dir=cache)
    (cache_file,) = cache.glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    again = read_image_folder(root, cache_dir=cache)
    np.testing.assert_array_equal(again["train_images"], first["train_images"])


def test_memory_check_refuses_before_decoding(tmp_path, monkeypatch):
    root = grey_folder(tmp_path / "g")

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("decoded before the memory check")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "convert", no_decoding)
    with pytest.raises(DataError, match=r"\(24 images of 1x12x10\) needs 3\.0 KiB in memory, "
                                        r"over the in-memory limit of 1000 bytes") as e:
        read_image_folder(root, cache_dir=tmp_path / "cache", max_bytes=1000)
    one_line_error(e)


# -------------------------------------------------------------------------------- npz
def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_round_trip_layouts(tmp_path):
    (tx, ty), (sx, sy) = rgb_images(30, 1, (8, 6)), rgb_images(10, 2, (8, 6))
    for name, to_file in {"nchw": lambda x: x, "nhwc": lambda x: x.transpose(0, 2, 3, 1)}.items():
        path = save_npz(tmp_path / f"{name}.npz", x_train=to_file(tx), y_train=ty.astype(np.uint8),
                        x_test=to_file(sx), y_test=sy.astype(np.int32),
                        classes=np.array(CLASSES))
        out = read_npz(path)
        np.testing.assert_array_equal(out["train_images"], tx)
        np.testing.assert_array_equal(out["test_images"], sx)
        assert out["train_images"].flags["C_CONTIGUOUS"]
        assert out["train_labels"].dtype == out["test_labels"].dtype == np.int64
        np.testing.assert_array_equal(out["train_labels"], ty)
        assert out["classes"] == CLASSES
    grey = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    path = save_npz(tmp_path / "grey.npz", x_train=grey, y_train=np.array([0, 1, 2, 0, 1, 2]),
                    x_test=grey[:2], y_test=np.array([2, 2]), x_val=grey[:3],
                    y_val=np.array([0, 0, 4], dtype=np.uint64))
    out = read_npz(path)
    assert out["train_images"].shape == (6, 1, 5, 4) and out["val_images"].shape == (3, 1, 5, 4)
    assert out["classes"] == ("0", "1", "2", "3", "4")  # max label over all splits + 1
    assert estimate_bytes(path) == (6 + 2 + 3) * 20 + (6 + 2 + 3) * 8


def good_arrays():
    x = np.zeros((4, 8, 8), dtype=np.uint8)
    return {"x_train": x, "y_train": np.array([0, 1, 2, 1]), "x_test": x[:2],
            "y_test": np.array([0, 1])}


@pytest.mark.parametrize("change,pattern", [
    ({"x_train": np.array([np.zeros(3), np.zeros(2)], dtype=object)},
     r"x_train is an object array"),
    ({"classes": np.array(["a", None, "c"], dtype=object)}, r"classes is an object array"),
    ({"x_train": np.zeros((4, 8, 8), np.float32)},
     r"images must be uint8 \(0\.\.255\), but x_train is float32 \(convert with np\.clip"),
    ({"x_test": np.zeros((2, 8, 8), np.int16)},
     r"images must be uint8 \(0\.\.255\), but x_test is int16 \(convert with x\.astype"),
    ({"classes": np.array(["a", "b"])}, r"y_train has label 2, out of range for 2 classes"),
    ({"y_test": np.array([0, -1])}, r"y_test has a negative label"),
    ({"y_train": np.array([0, 1, 2])}, r"y_train has 3 labels but x_train has 4 images"),
    ({"y_train": np.eye(3)[[0, 1, 2, 1]].astype(int)}, r"labels must be 1-D \(one-hot"),
    ({"y_train": np.array([0.0, 1.0, 2.0, 1.0])}, r"labels must be integers"),
    ({"x_test": np.zeros((2, 8, 9), np.uint8)}, r"x_test images are \[1, 8, 9\].*x_train"),
    ({"x_train": np.zeros((4, 1, 8, 8, 1), np.uint8)}, r"x_train has 5 dimensions"),
    ({"x_train": np.zeros((4, 8, 8, 5), np.uint8)}, r"no channel axis of size 1 or 3"),
    ({"x_val": np.zeros((1, 8, 8), np.uint8)}, r"has x_val but no y_val"),
])
def test_npz_errors(tmp_path, change, pattern):
    arrays = {**good_arrays(), **change}
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # allow_pickle defaults to True when saving: object arrays get in
    with pytest.raises(DataError, match=pattern) as e:
        read_npz(path)
    one_line_error(e)


def test_npz_missing_key_and_not_a_zip(tmp_path):
    arrays = good_arrays()
    del arrays["y_test"]
    with pytest.raises(DataError, match=r"has no array 'y_test'"):
        read_npz(save_npz(tmp_path / "a.npz", **arrays))
    (tmp_path / "b.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"not an \.npz file"):
        read_npz(tmp_path / "b.npz")
    np.save(tmp_path / "c.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"not an \.npz file"):
        read_npz(tmp_path / "c.npy")
    with pytest.raises(DataError, match=r"no such file"):
        read_npz(tmp_path / "missing.npz")


def test_npz_truncated_member(tmp_path):
    path = tmp_path / "t.npz"
    np.savez_compressed(path, **good_arrays())
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    with zipfile.ZipFile(path, "w") as zf:  # x_train's data cut short, header intact
        for name, data in members.items():
            zf.writestr(name, data[:-100] if name == "x_train.npy" else data)
    with pytest.raises(DataError, match=r"cannot read x_train") as e:
        read_npz(path)
    one_line_error(e)


def test_npz_memory_check_before_loading(tmp_path, monkeypatch):
    path = save_npz(tmp_path / "a.npz", **good_arrays())
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(DataError, match=r"needs 432 bytes in memory, over the in-memory limit "
                                        r"of 100 bytes \(max_bytes\)") as e:
        read_npz(path, max_bytes=100)
    one_line_error(e)
