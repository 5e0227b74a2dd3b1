"""Round trip Fashion-MNIST through an image folder of PNGs and back through read_image_folder.

    python benchmarks/fashion_folder.py OUT_DIR [--cache-dir DIR] [--seeds 3]

Writes the verified Fashion-MNIST IDX arrays as ``OUT_DIR/train/<class>/<index>.png`` and
``OUT_DIR/test/<class>/<index>.png`` (class folders ``0-T-shirt_top`` .. ``9-Ankle_boot``), reads
the folder back with :func:`kdistill.data.folders.read_image_folder` (cold, then from its cache)
and checks that each split's (image, label) pairs are the same multiset as the IDX arrays'; the
label of a folder class is the number before its ``-``. Prints counts, timings and
``identical multiset: True/False``; exits 1 if not identical. OUT_DIR must be empty or absent.

With ``--seeds N`` it then trains the ``fashion-spec`` preset (the spec's CNN teacher and MLP student,
5 epochs each, with the control; normalisation 0.5 / 0.5 for both, no bench) N times on the
folder (``data.name=OUT_DIR``) and N times on ``data.name=fashion-mnist``, seeds 0..N-1, and
writes the test accuracies after the last epoch to benchmarks/results/fashion-folder/
(results.json and table.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import numpy as np
from PIL import Image

import kdistill
from kdistill.data.folders import read_image_folder
from kdistill.data.sources import FASHION_MNIST, read_verified
from kdistill.errors import DataError


def folder_name(index: int, name: str) -> str:
    """``"T-shirt/top"`` -> ``"0-T-shirt_top"``: safe as a folder name on every OS."""
    return f"{index}-{re.sub(r'[^A-Za-z0-9_-]+', '_', name)}"


def write_pngs(out: Path, arrays: dict[str, np.ndarray], classes: tuple[str, ...]) -> int:
    written = 0
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        for k, name in enumerate(classes):
            (out / split / folder_name(k, name)).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            path = out / split / folder_name(int(label), classes[label]) / f"{i:05d}.png"
            Image.fromarray(image).save(path, format="PNG")
            written += 1
    return written


def sorted_rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each (image, label) pair as one row of bytes, rows sorted: equal iff equal multisets."""
    rows = np.concatenate([images.reshape(len(images), -1).astype(np.uint8),
                           labels.astype(np.uint8)[:, None]], axis=1)
    rows = np.ascontiguousarray(rows)
    return np.sort(rows.view(np.dtype((np.void, rows.shape[1]))).ravel())


RESULTS = Path(__file__).parent / "results" / "fashion-folder"
ROLES = ("teacher", "student", "control")


def train_both(folder: Path, seeds: int) -> dict:
    """Test accuracy after the last epoch of each role, per seed, for the folder and for IDX."""
    runs: dict = {"folder": [], "idx": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for source, name in (("folder", str(folder)), ("idx", "fashion-mnist")):
                overrides = [f"data.name={name}", f"seed={seed}", "bench.enabled=false",
                             "data.mean=0.5", "data.std=0.5"]
                result = kdistill.run("fashion-spec", out=Path(tmp) / f"{source}-{seed}",
                                      overrides=overrides, quiet=True)
                accuracy = {r: result.metrics["models"][r]["test_accuracy"] for r in ROLES}
                runs[source].append({"seed": seed, **accuracy})
                print(f"seed {seed} {source:6s} " + "  ".join(
                    f"{r} {100 * a:.2f}%" for r, a in accuracy.items()), flush=True)
    return runs


def write_results(runs: dict, command: str) -> None:
    """results.json and a Markdown table (mean, min-max over seeds) beside it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "machine": f"{platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads", "torch": torch.__version__,
            "date": datetime.date.today().isoformat()}
    (RESULTS / "results.json").write_text(json.dumps({**meta, "runs": runs}, indent=2) + "\n")
    lines = [f"`{command}` ({meta['machine']}, torch {meta['torch']}, {meta['date']}); test "
             "accuracy after the last epoch, mean and range over seeds",
             "", "| data.name | " + " | ".join(ROLES) + " |", "|---|" + "---:|" * len(ROLES)]
    for source, label in (("folder", "image folder of PNGs"), ("idx", "fashion-mnist (IDX)")):
        cells = []
        for role in ROLES:
            values = [100 * r[role] for r in runs[source]]
            cells.append(f"{statistics.mean(values):.2f} % ({min(values):.2f}–{max(values):.2f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (RESULTS / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the PNGs into (empty or absent)")
    parser.add_argument("--cache-dir", type=Path,
                        help="read_image_folder's cache (default: a temporary folder, removed)")
    parser.add_argument("--seeds", type=int, default=0,
                        help="then train the fashion-spec preset on the folder and on the IDX data "
                             "with this many seeds each (default 0: no training)")
    args = parser.parse_args()
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"{args.out} exists and is not an empty folder")
    source = read_verified("fashion-mnist")
    classes = FASHION_MNIST.classes

    start = time.perf_counter()
    written = write_pngs(args.out, source, classes)
    write_s = time.perf_counter() - start
    print(f"wrote {written} PNGs to {args.out} in {write_s:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp)
        start = time.perf_counter()
        got = read_image_folder(args.out, cache_dir=cache)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        again = read_image_folder(args.out, cache_dir=cache)
        warm_s = time.perf_counter() - start
    print(f"read_image_folder: {cold_s:.1f} s cold, {warm_s:.2f} s from its cache")
    print(f"classes: {', '.join(got['classes'])}")
    index = np.array([int(name.split("-", 1)[0]) for name in got["classes"]])  # folder -> IDX label

    identical = all(np.array_equal(again[k], got[k]) for k in got if k != "classes")
    for split in ("train", "test"):
        images, labels = got[f"{split}_images"], index[got[f"{split}_labels"]]
        want_images, want_labels = source[f"{split}_images"], source[f"{split}_labels"]
        same = (images.shape == (len(want_images), 1, 28, 28)
                and np.array_equal(sorted_rows(images, labels),
                                   sorted_rows(want_images, want_labels)))
        counts = np.bincount(labels, minlength=len(classes)).tolist()
        print(f"{split}: {len(labels)} images {list(images.shape[1:])} (IDX: {len(want_labels)}), "
              f"per class {counts}, identical multiset: {same}")
        identical = identical and same
    print(f"identical multiset: {identical}")
    if identical and args.seeds > 0:
        write_results(train_both(args.out, args.seeds), "python " + " ".join(sys.argv))
    return 0 if identical else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
