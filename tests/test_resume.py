"""Killed runs resume to the same bits: SIGKILL or Ctrl-C at any moment, then --resume."""
from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_same_file
from kdistill.cli import main

ARGS = ["--quiet", "data.train_subset=4000", "teacher.epochs=2", "student.epochs=2",
        "teacher.schedule=cosine",  # the scheduler state must survive too
        "bench.enabled=false"]
ROLES = ("teacher", "student", "control")


def _comparable(run_dir: Path) -> dict:
    """Everything in metrics.json that must not depend on interruption (not wall times)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    models = {role: {k: (v if k != "history" else [{h: x for h, x in e.items() if h != "seconds"}
                                                   for e in v])
                     for k, v in m.items() if k != "train_seconds"}
              for role, m in metrics["models"].items()}
    return {"models": models, "distill": metrics["distill"], "status": metrics["status"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "reference"
    # its own teacher cache: the runs under test must train their teacher, not load this one
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KDISTILL_CACHE", str(out.parent / "reference-cache"))
        assert main(["run", "--out", str(out), *ARGS]) == 0
    return out


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdistill", "run", "--out", str(out), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_epoch(out: Path, phase: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        log = out / "log.jsonl"
        if log.exists() and any(json.loads(x)["phase"] == phase for x in log.read_text().splitlines()):
            return
        time.sleep(0.01)
    pytest.fail(f"the run never logged a {phase} epoch")


@pytest.mark.parametrize("sig, phase", [(signal.SIGKILL, "teacher"), (signal.SIGKILL, "student"),
                                        (signal.SIGINT, "student")])
def test_interrupted_run_resumes_bitwise(reference, tmp_path, sig, phase):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_epoch(out, phase, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    status = json.loads((out / "metrics.json").read_text())["status"]
    assert status != "complete", "the run finished before it could be interrupted"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and status == "interrupted"
        assert stderr.strip().splitlines() == [
            f"kdistill: interrupted; checkpoints are kept in {out} "
            f"(resume with: kdistill run --resume {out})"]
    assert main(["run", "--quiet", "--resume", str(out)]) == 0
    for role in ROLES:
        assert_same_file(out / f"{role}.safetensors", reference / f"{role}.safetensors", role)
    assert _comparable(out) == _comparable(reference)
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [(x["phase"], x["epoch"]) for x in lines] == [(r, e) for r in ROLES for e in (1, 2)]


def test_a_locked_run_directory_is_refused(reference, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    metrics = json.loads((reference / "metrics.json").read_text())  # a real run's, stopped
    (out / "metrics.json").write_text(json.dumps({**metrics, "status": "interrupted"}))
    (out / "config.yaml").write_text((reference / "config.yaml").read_text())
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["run", "--quiet", "--resume", str(out)]) == 2
    assert "another kdistill process is writing" in capsys.readouterr().err


def _same_models(out: Path, reference: Path) -> None:
    for role in ROLES:
        assert_same_file(out / f"{role}.safetensors", reference / f"{role}.safetensors", role)
    assert _comparable(out) == _comparable(reference)


def test_control_in_the_same_pass_gives_the_same_run(reference, tmp_path):
    out = tmp_path / "shared"
    assert main(["run", "--out", str(out), *ARGS, "control_pass=shared"]) == 0
    _same_models(out, reference)
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [(x["phase"], x["epoch"]) for x in lines] == [
        ("teacher", 1), ("teacher", 2), ("student", 1), ("control", 1), ("student", 2),
        ("control", 2)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "student+control_seconds" in metrics["timings"]
    assert metrics["teacher_logits"]["precomputed"] is True  # and the report says why:
    assert "logits from a table computed once: the training images are not augmented" in \
        (out / "report.md").read_text()


def test_control_in_the_same_pass_resumes_bitwise(reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kdistill", "run", "--out", str(out), *ARGS,
                             "control_pass=shared"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(out, "control", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert json.loads((out / "metrics.json").read_text())["status"] != "complete"
    assert main(["run", "--quiet", "--resume", str(out)]) == 0
    _same_models(out, reference)
