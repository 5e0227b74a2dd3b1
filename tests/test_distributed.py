"""DistributedDataParallel on CPU with gloo, 2 processes via torchrun (what CI runs)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import assert_same_file, kdistill

ARGS = ["--quiet", "data.train_subset=6000", "teacher.epochs=2", "student.epochs=1",
        "bench.enabled=false"]
ROLES = ("teacher", "student", "control")


def _accuracies(run_dir: Path) -> dict[str, float]:
    models = json.loads((run_dir / "metrics.json").read_text())["models"]
    return {role: models[role]["test_accuracy"] for role in ROLES}


# 1 thread in 2 micro-batches: each step's arithmetic of 2 processes of 1 thread, in one process
MICRO = ["threads=1", "teacher.micro_batches=2", "student.micro_batches=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same short MNIST run with 1 and with 2 processes (same global batch of 64), and with
    1 process of 1 thread in 2 micro-batches."""
    base = tmp_path_factory.mktemp("ddp")
    variants = {"1": ("1", []), "2": ("2", []), "1x2": ("1", MICRO)}  # processes, overrides
    for name, (nproc, overrides) in variants.items():
        result = kdistill("run", "--nproc", nproc, "--out", str(base / name), *ARGS, *overrides)
        assert result.returncode == 0, result.stderr[-2000:]
        # trained here, by this code on this CPU: the bitwise comparisons below mean nothing
        # against a teacher some other run left in a cache
        teacher = json.loads((base / name / "metrics.json").read_text())["models"]["teacher"]
        assert teacher["from_cache"] is False, name
    return {name: base / name for name in variants}


def test_one_step_leaves_identical_weights_on_both_ranks(idx_dir, tmp_path):
    script = tmp_path / "one_step.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        from kdistill import distributed
        from kdistill.checkpoint import save_weights
        from kdistill.data import load_dataset
        from kdistill.engine import Distiller, Images, fit
        from kdistill.models import create_model
        distributed.init_from_env()
        ds = load_dataset({str(idx_dir)!r})
        torch.manual_seed(0)
        model = create_model("spec-teacher")
        save_weights(sys.argv[1] + f"/init{{distributed.rank()}}.safetensors", model)
        fit(Distiller(model), Images(ds.train_images[:64], ds.train_labels[:64]), epochs=1,
            batch_size=64, lr=1e-2, seed=0, progress=False)  # exactly one step
        save_weights(sys.argv[1] + f"/rank{{distributed.rank()}}.safetensors", model)
        distributed.shutdown()
    """))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node=2", str(script), str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rank0, rank1 = ((tmp_path / f"rank{r}.safetensors").read_bytes() for r in (0, 1))
    assert rank0 == rank1
    assert rank0 != (tmp_path / "init0.safetensors").read_bytes()  # the step changed the weights


def test_two_processes_match_one_process(runs):
    one, two = _accuracies(runs["1"]), _accuracies(runs["2"])
    for role in ROLES:
        assert abs(one[role] - two[role]) <= 0.003, (role, one[role], two[role])
    assert two["teacher"] > 0.9


def test_two_processes_compute_bitwise_what_two_micro_batches_compute(runs):
    """DDP halves each global batch over 2 processes of 1 thread and averages their gradients;
    one process of 1 thread in 2 micro-batches does the same arithmetic in the same order, so
    every trained model is bitwise the same (and differs from the 2-thread run's only by float
    summation order)."""
    for role in ROLES:
        assert_same_file(runs["2"] / f"{role}.safetensors", runs["1x2"] / f"{role}.safetensors",
                         role)


def test_killed_two_process_run_resumes(runs, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kdistill", "run", "--nproc", "2", "--out",
                             str(out), *ARGS], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (out / "log.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    # kill -9 the launcher and both workers (torchrun puts workers in their own groups)
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            if str(out).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    proc.wait()
    assert json.loads((out / "metrics.json").read_text())["status"] == "running"
    result = kdistill("run", "--nproc", "2", "--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["status"] == "complete"
    for role in ROLES:
        assert_same_file(out / f"{role}.safetensors", runs["2"] / f"{role}.safetensors", role)


def test_feature_objective_runs_in_two_processes_like_in_one(idx_dir, tmp_path):
    """FitNets under torchrun: the adapter's gradients are averaged like the student's, so two
    processes of 1 thread match one process of 1 thread in 2 micro-batches (up to rounding)."""
    fast = ["--quiet", f"data.name={idx_dir}", "teacher.model=mlp:784-64-10", "teacher.epochs=1",
            "student.model=mlp:784-32-10", "student.epochs=2", "distill.loss=fitnets",
            "distill.alpha=0.9", "control=false", "bench.enabled=false", "threads=1"]
    two = kdistill("run", "--nproc", "2", "--out", str(tmp_path / "two"), *fast)
    assert two.returncode == 0, two.stderr[-2000:]
    one = kdistill("run", "--out", str(tmp_path / "one"), *fast, "student.micro_batches=2",
                   "teacher.micro_batches=2")
    assert one.returncode == 0, one.stderr[-2000:]
    from kdistill.checkpoint import read_weights

    a, _ = read_weights(tmp_path / "two" / "checkpoints" / "student.safetensors")
    b, _ = read_weights(tmp_path / "one" / "checkpoints" / "student.safetensors")
    adapters = [k for k in a if k.startswith("model/features.adapter")]
    assert adapters and set(a) == set(b)
    for key in a:
        if a[key].is_floating_point():
            assert (a[key] - b[key]).abs().max() < 1e-4, key
