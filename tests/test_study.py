"""kdistill compare / sweep: runs, pairing with controls, tables, plots, one-line errors."""
from __future__ import annotations

import csv
import json
import shlex

import numpy as np
import pytest
import torch

from conftest import QUICK
from kdistill import study
from kdistill.cli import main

# Tiny and not perfectly learnable, so accuracies differ between seeds and objectives.
TINY = [*QUICK, "teacher.epochs=1", "student.epochs=1", "data.train_subset=48", "bench.enabled=false"]
OBJECTIVES = ["distill.loss=kl", "distill.loss=hinton distill.temperature=4 distill.alpha=0.9"]


def test_compare_pairs_each_seed_with_one_control(idx_dir, tmp_path):
    out = tmp_path / "cmp"
    lines: list[str] = []
    rows = study.compare(OBJECTIVES, out=out, seeds=2, overrides=[f"data.name={idx_dir}", *TINY],
                         progress=lines.append)
    assert len(lines) == 4 and [r["slug"] for r in rows] == ["loss-kl", "loss-hinton_temperature-4_alpha-0.9"]
    for name in ("compare.csv", "compare.md", "compare.json", "compare.png"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".*.tmp"))

    runs = {}  # (slug, seed) -> metrics.json
    for row in rows:
        for seed in (0, 1):
            runs[row["slug"], seed] = json.loads((out / row["slug"] / f"seed{seed}" / "metrics.json").read_text())
    kl, hinton = (r["slug"] for r in rows)
    for seed in (0, 1):
        # Exactly one control per seed, trained by the first objective; the other reuses its teacher.
        assert "control" in runs[kl, seed]["models"] and "control" not in runs[hinton, seed]["models"]
        assert runs[kl, seed]["config"]["seed"] == runs[hinton, seed]["config"]["seed"] == seed
        assert runs[hinton, seed]["config"]["distill"]["temperature"] == 4
        assert runs[hinton, seed]["models"]["teacher"]["test_accuracy"] == \
            runs[kl, seed]["models"]["teacher"]["test_accuracy"]
        # ... found in the teacher cache, which the first one filled
        assert runs[hinton, seed]["models"]["teacher"]["from_cache"] is True
        assert runs[hinton, seed]["models"]["teacher"]["cache_key"] == \
            runs[kl, seed]["models"]["teacher"]["cache_key"]

    saved = json.loads((out / "compare.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(rows))
    for row in rows:
        student = [runs[row["slug"], s]["models"]["student"]["test_accuracy"] for s in (0, 1)]
        control = [runs[kl, s]["models"]["control"]["test_accuracy"] for s in (0, 1)]
        assert row["seeds"] == 2
        assert row["student_mean"] == pytest.approx(np.mean(student))
        assert row["student_std"] == pytest.approx(np.std(student, ddof=1))
        assert row["control_mean"] == pytest.approx(np.mean(control))
        assert row["gain_mean"] == pytest.approx(np.mean(np.subtract(student, control)))
        per_seed = saved["runs"][row["slug"]]
        assert [r["control"] for r in per_seed] == pytest.approx(control)
        assert [r["trained_control"] for r in per_seed] == [row["slug"] == kl] * 2
        assert row["p"] is None or 0 <= row["p"] <= 1

    with open(out / "compare.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["objective"] for r in table] == OBJECTIVES
    assert float(table[1]["gain_mean"]) == pytest.approx(rows[1]["gain_mean"])
    md = (out / "compare.md").read_text()
    assert "| objective | seeds |" in md and "`distill.loss=kl`" in md


def test_compare_table_states_a_command_that_runs_again(idx_dir, tmp_path, capsys):
    """Objectives are quoted strings with spaces: the recorded command keeps the quotes."""
    out = tmp_path / "cmp"
    argv = ["compare", "--quiet", "--seeds", "1", "--out", str(out), f"data.name={idx_dir}", *TINY,
            "--objectives", *OBJECTIVES]
    assert main(argv) == 0
    command = json.loads((out / "compare.json").read_text())["command"]
    assert shlex.split(command) == ["kdistill", *argv]
    md = (out / "compare.md").read_text()
    assert md.startswith("# Compare: 2 objectives × 1 seed (seed 0)\n") and f"`{command}`" in md


def test_compare_continues_a_stopped_study(idx_dir, tmp_path):
    out, args = tmp_path / "cmp", [f"data.name={idx_dir}", *TINY]
    first = study.compare(OBJECTIVES[:1], out=out, seeds=1, overrides=args)
    run_dir = out / first[0]["slug"] / "seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    del metrics["models"]["control"]  # as if stopped while training the control
    metrics["status"] = "interrupted"
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "control.safetensors").unlink()
    again = study.compare(OBJECTIVES[:1], out=out, seeds=1, overrides=args)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "complete"
    assert again[0]["control_mean"] == first[0]["control_mean"]  # resumed from its checkpoint


def test_sweep_grid_table_and_plot(idx_dir, tmp_path, capsys):
    out = tmp_path / "sw"
    code = main(["sweep", "--quiet", "--out", str(out), f"data.name={idx_dir}", *TINY,
                 "distill.temperature=1,4", "distill.alpha=0.5,0.9"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| distill.temperature | distill.alpha | teacher |")
    assert len(printed.strip().splitlines()) == 2 + 4

    saved = json.loads((out / "sweep.json").read_text())
    assert saved["keys"] == ["distill.temperature", "distill.alpha"]
    rows = saved["rows"]
    assert [(r["distill.temperature"], r["distill.alpha"]) for r in rows] == \
        [(1, 0.5), (1, 0.9), (4, 0.5), (4, 0.9)]
    assert sum(r["trained_control"] for r in rows) == 1  # only distill.* swept: one control
    for r in rows:
        metrics = json.loads((out / r["slug"] / "metrics.json").read_text())
        assert metrics["config"]["distill"]["temperature"] == r["distill.temperature"]
        assert metrics["config"]["distill"]["alpha"] == r["distill.alpha"]
        assert r["student"] == metrics["models"]["student"]["test_accuracy"]
        assert r["gain"] == pytest.approx(r["student"] - r["control"])
    with open(out / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:2] == ["distill.temperature", "distill.alpha"] and len(table) == 4
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # the table states the command that made it, the machine, torch and the date
    head = (out / "sweep.md").read_text()
    assert f"`kdistill sweep --quiet --out {out} data.name={idx_dir}" in head
    assert f"torch {torch.__version__}" in head and saved["command"].startswith("kdistill sweep")


def test_parse_sweep_keeps_lists_and_plain_overrides():
    swept, plain = study.parse_sweep(["distill.temperature=1,2", "bench.throughput_batches=[1,64]",
                                      "student.epochs=3"])
    assert swept == {"distill.temperature": ["1", "2"]}
    assert plain == ["bench.throughput_batches=[1,64]", "student.epochs=3"]
    assert study.slug([("distill.loss", "hinton"), ("student.lr", "1e-3")]) == "loss-hinton_student.lr-1e-3"


@pytest.mark.parametrize("args, words", [
    (["compare", "--seeds", "0", "--objectives", "distill.loss=kl"], "--seeds"),
    (["compare", "--objectives", "distill.loss"], "key=value"),
    (["compare", "--objectives", "distill.loss=kl seed=3"], "seed"),
    (["compare", "--objectives", "distill.loss=nope"], "distill.loss"),
    (["sweep", "distill.temperature="], "no values"),
    (["sweep", "distill.temperature"], "no values"),
    (["sweep", "distill.temperature=1,,2"], "empty value"),
    (["sweep", "student.epochs=2"], "nothing to sweep"),
    (["sweep", "distill.temprature=1,2"], "unknown config key"),
])
def test_bad_input_is_one_line_and_exit_2(args, words, tmp_path, capsys):
    assert main([*args[:1], "--out", str(tmp_path / "x"), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdistill: error:") and words in err
    assert not (tmp_path / "x").exists()  # nothing trained or written
