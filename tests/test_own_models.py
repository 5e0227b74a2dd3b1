"""Bring your own: models from your own module through the CLI, and the example script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import QUICK, REPO, kdistill

NETS = textwrap.dedent('''
    """Models of a user's own package, found by kdistill as mynets:make_teacher / make_student."""
    from torch import nn


    class TinyCNN(nn.Module):
        def __init__(self, width: int = 8, num_classes: int = 10) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                          nn.MaxPool2d(4))
            self.head = nn.Linear(width * 7 * 7, num_classes)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))


    def make_teacher(width: int = 8) -> nn.Module:
        return TinyCNN(width)


    def make_student(hidden: int = 16) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
''')


def test_cli_trains_models_from_your_own_module(idx_dir, tmp_path):
    (tmp_path / "mynets.py").write_text(NETS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "run"
    result = kdistill("run", "--quiet", "--out", str(out), f"data.name={idx_dir}", *QUICK,
                      "teacher.model=mynets:make_teacher", "teacher.kwargs.width=4",
                      "teacher.epochs=4", "teacher.lr=3e-3",
                      "student.model=mynets:make_student", "student.kwargs.hidden=24", env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    teacher, student = metrics["models"]["teacher"], metrics["models"]["student"]
    assert metrics["status"] == "complete"
    assert teacher["model"] == "mynets:make_teacher" and student["model"] == "mynets:make_student"
    # The kwargs reached the factories: conv 1→4 (3x3) + linear 196→10; MLP 784→24→10.
    assert teacher["params"] == (4 * 9 + 4) + (4 * 49 * 10 + 10)
    assert student["params"] == (784 * 24 + 24) + (24 * 10 + 10)
    assert student["macs_per_sample"] == 784 * 24 + 24 * 10
    assert teacher["test_accuracy"] > 0.9 and student["test_accuracy"] > 0.5  # chance is 0.1
    report = (out / "report.md").read_text()
    assert "`mynets:make_teacher`" in report and "Against the spec" not in report

    bad = kdistill("run", "--out", str(tmp_path / "bad"), f"data.name={idx_dir}", *QUICK,
                   "student.model=mynets:make_student", "student.kwargs.depth=3", env=env)
    assert bad.returncode == 2 and "cannot build model 'mynets:make_student'" in bad.stderr


def test_example_distills_your_own_model_on_your_own_tensors():
    result = subprocess.run([sys.executable, str(REPO / "examples" / "distill_your_own_model.py"),
                             "--quick"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    accuracy = {line.rsplit(maxsplit=1)[0]: float(line.rsplit(maxsplit=1)[1].rstrip("%")) / 100
                for line in result.stdout.splitlines() if line.endswith("%")}
    assert set(accuracy) == {"teacher", "distilled student", "control"}
    assert accuracy["teacher"] > 0.95                      # the wide teacher learns the spirals
    assert min(accuracy.values()) > 0.6                   # chance is 1/3
    assert "distillation gain over the control" in result.stdout
