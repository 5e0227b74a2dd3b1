"""Every objective runs end to end from the CLI on the built-in models with default layers."""
import json

import pytest

from kdistill.checkpoint import read_weights
from kdistill.cli import main

from conftest import QUICK

BASE = [q for q in QUICK if not q.startswith("teacher.model")] + [
    "teacher.model=spec-teacher", "teacher.epochs=4", "teacher.lr=3e-3", "bench.enabled=false",
    "control=false"]


@pytest.mark.parametrize("loss, extra, terms", [
    ("kl", [], {"loss_kd"}),
    ("hinton", ["distill.temperature=4", "distill.alpha=0.9"], {"loss_kd", "loss_ce"}),
    ("hinton", ["distill.temperature=4", "distill.alpha=0.9", "distill.standardize=true"],
     {"loss_kd", "loss_ce"}),
    ("dkd", ["distill.temperature=4", "distill.beta=8"], {"loss_ce", "loss_tckd", "loss_nckd"}),
    ("fitnets", ["distill.alpha=0.9"], {"loss_hint", "loss_kd", "loss_ce"}),
    ("at", ["distill.alpha=0.9"], {"loss_hint", "loss_kd", "loss_ce"}),
])
def test_objective_runs(loss, extra, terms, idx_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--quiet", "--out", str(out), f"data.name={idx_dir}", *BASE,
                 f"distill.loss={loss}", *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    student = metrics["models"]["student"]
    assert terms <= set(student["history"][-1]), student["history"][-1]
    assert student["test_accuracy"] > 0.5, (student["test_accuracy"], metrics["models"]["teacher"]["test_accuracy"])
    if loss == "fitnets":  # the learned adapter is part of the resumable state
        tensors, _ = read_weights(out / "checkpoints" / "student.safetensors")
        assert "model/features.adapter.weight" in tensors


def test_feature_layers_by_module_path(idx_dir, tmp_path, capsys):
    args = [f"data.name={idx_dir}", *BASE, "distill.loss=fitnets"]
    assert main(["run", "--quiet", "--out", str(tmp_path / "a"), *args, "teacher.features=conv1",
                 "student.features=fc1"]) == 0
    assert main(["run", "--quiet", "--out", str(tmp_path / "b"), *args,
                 "teacher.features=conv9"]) == 2
    assert "no module 'conv9'" in capsys.readouterr().err
