"""A run directory is data: code named in one runs only when the user says they trust it."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from kdistill.cli import main
from kdistill.errors import ConfigError
from kdistill.rundir import load_run

from conftest import QUICK

MODULE = """\
from torch import nn


def make_student(num_classes=10, hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
"""


@pytest.fixture
def user_run(idx_dir, tmp_path, monkeypatch):
    """A finished run whose student comes from the user's own module ``usernets``."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "usernets.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--quiet", "--out", str(out), f"data.name={idx_dir}", *QUICK,
                 "student.model=usernets:make_student"]) == 0  # the user's own recipe: no flag
    return out


def _edit_config(run, **student):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["student"].update(student)
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def _set_status(run, status):
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["status"] = status
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_os_system_in_a_handed_run_never_runs(user_run, tmp_path, capsys):
    handed = tmp_path / "handed"
    shutil.copytree(user_run, handed)
    _edit_config(handed, model="os:system", kwargs={"command": "touch PWNED"})
    commands = {"bench": ["bench", str(handed)], "export": ["export", str(handed)]}
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "os:system" in err[0] and "--trust-code" in err[0], err
    _set_status(handed, "running")
    assert main(["run", "--resume", str(handed), "--quiet"]) == 2
    assert "os:system" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="os:system"):
        load_run(handed)
    assert not (tmp_path / "PWNED").exists() and not list(tmp_path.rglob("PWNED"))


def test_trusted_code_works_as_before(user_run, capsys):
    for argv in (["bench", str(user_run)], ["export", str(user_run)]):
        assert main(argv) == 2  # the user's module is code too: refused without the flag
        assert "usernets:make_student" in capsys.readouterr().err
    assert main(["bench", str(user_run), "--no-onnx", "--trust-code"]) == 0
    assert main(["export", str(user_run), "--trust-code"]) == 0
    assert (user_run / "student.onnx").is_file()
    assert load_run(user_run, trust_code=True)[4]["student"][1].out_features == 16
    _set_status(user_run, "interrupted")
    assert main(["run", "--resume", str(user_run), "--quiet", "--trust-code"]) == 0
    assert json.loads((user_run / "metrics.json").read_text())["status"] == "complete"


def test_report_and_runs_build_no_model(user_run, tmp_path, capsys):
    """report and runs read metrics.json only: a config naming code changes nothing for them."""
    _edit_config(user_run, model="os:system", kwargs={"command": "touch PWNED"})
    assert main(["report", str(user_run)]) == 0
    assert main(["runs", str(tmp_path)]) == 0
    assert "complete" in capsys.readouterr().out
    assert not list(tmp_path.rglob("PWNED"))
