import pickle

import pytest
import torch

from kdistill.checkpoint import load_weights, read_weights, save_weights
from kdistill.errors import CheckpointError
from kdistill.models import create_model


def test_roundtrip_with_metadata(tmp_path):
    a, b = create_model("spec-student"), create_model("spec-student")
    size = save_weights(tmp_path / "w.safetensors", a, {"role": "student", "acc": 0.97})
    assert size == (tmp_path / "w.safetensors").stat().st_size
    meta = load_weights(tmp_path / "w.safetensors", b)
    assert meta == {"role": "student", "acc": 0.97}
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_pickles_are_refused_unloaded(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(create_model("spec-student").state_dict(), path)
    with pytest.raises(CheckpointError, match="pickle or torch.save"):
        load_weights(path, create_model("spec-student"))
    path.write_bytes(pickle.dumps({"fc1.weight": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        read_weights(path)


@pytest.mark.parametrize("first_byte", [0x80, 0x50])  # a pickle's opcode, a zip's "P"
def test_header_lengths_that_start_like_archives_still_load(tmp_path, first_byte):
    """A header length's low byte may be 0x80 (an ensemble teacher's 8064-byte header was)."""
    model, path = create_model("spec-student"), tmp_path / "w.safetensors"
    for pad in range(300):
        save_weights(path, model, {"pad": "x" * pad})
        if path.read_bytes()[0] == first_byte:
            break
    assert path.read_bytes()[0] == first_byte
    assert load_weights(path, create_model("spec-student")) == {"pad": "x" * pad}


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d[: len(d) // 2], "not a valid safetensors"),
    (lambda d: b"", "too short"),
    (lambda d: b"hello world, I am not weights", "not a valid safetensors"),
])
def test_corrupt_files_are_refused(tmp_path, mutate, match):
    path = tmp_path / "w.safetensors"
    save_weights(path, create_model("spec-student"))
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(CheckpointError, match=match):
        load_weights(path, create_model("spec-student"))


def test_weights_that_do_not_fit_are_refused(tmp_path):
    save_weights(tmp_path / "w.safetensors", create_model("mlp:784-64-10"))
    with pytest.raises(CheckpointError, match="does not fit.*shape of fc1"):
        load_weights(tmp_path / "w.safetensors", create_model("spec-student"))
    with pytest.raises(CheckpointError, match="does not fit.*missing"):
        load_weights(tmp_path / "w.safetensors", create_model("spec-teacher"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors", create_model("spec-teacher"))


def test_atomic_writes_get_the_mode_of_an_ordinary_new_file(tmp_path):
    import os
    import stat

    from kdistill.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "hello")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert (tmp_path / "report.md").read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temp file left
