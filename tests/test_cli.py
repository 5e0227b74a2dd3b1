"""The command line end to end: runs on synthetic data, listings, and one-line errors."""
import json
import os

import pytest

from conftest import QUICK, assert_same_file, kdistill


def _env(**extra):
    return {**os.environ, **extra}


def test_run_writes_every_artefact(idx_dir, tmp_path):
    out = tmp_path / "run"
    result = kdistill("run", "--out", str(out), f"data.name={idx_dir}", *QUICK, env=_env())
    assert result.returncode == 0, result.stderr
    for name in ("config.yaml", "metrics.json", "report.md", "log.jsonl", "teacher.safetensors",
                 "student.safetensors", "control.safetensors"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    for role in ("teacher", "student", "control"):
        m = metrics["models"][role]
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["params"] > 0 and m["macs_per_sample"] > 0
        assert m["size_bytes"] == (out / f"{role}.safetensors").stat().st_size
        assert [h["epoch"] for h in m["history"]] == [1, 2]
        assert {"train_loss", "test_accuracy", "seconds"} <= set(m["history"][0])
    assert metrics["models"]["teacher"]["test_accuracy"] > 0.9  # the synthetic task is easy
    for role in ("teacher", "student"):
        assert metrics["inference"][role]["latency_batch1_ms"] > 0
        assert metrics["inference"][role]["throughput_per_s"] > 0
    assert metrics["timings"]["total_seconds"] > 0
    assert set(metrics["env"]) >= {"torch", "python", "threads", "device", "git_commit"}
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["phase"] for x in lines] == ["teacher"] * 2 + ["student"] * 2 + ["control"] * 2
    report = (out / "report.md").read_text()
    assert "distilled student" in report and "control (labels only)" in report
    assert "Against the spec" not in report  # only shown for the spec's own two networks


def test_same_seed_same_metrics(idx_dir, tmp_path):
    accs = []
    for name in ("a", "b"):
        assert kdistill("run", "--quiet", "--out", str(tmp_path / name), f"data.name={idx_dir}",
                        *QUICK, "bench.enabled=false", env=_env()).returncode == 0
        m = json.loads((tmp_path / name / "metrics.json").read_text())["models"]
        accs.append({r: (m[r]["test_accuracy"], m[r]["test_loss"]) for r in m})
    assert accs[0] == accs[1]
    assert_same_file(tmp_path / "a" / "student.safetensors", tmp_path / "b" / "student.safetensors")


def test_print_config_resolves_every_key_and_runs_nothing(tmp_path):
    printed = kdistill("run", "--preset", "mnist-best", "--print-config", "student.micro_batches=2",
                       "--device", "cpu", "teacher.epochs=7", cwd=tmp_path)  # overrides on both sides
    assert printed.returncode == 0, printed.stderr
    assert "micro_batches: 2" in printed.stdout and "device: cpu" in printed.stdout
    assert "epochs: 7" in printed.stdout
    assert "epochs: 100" in printed.stdout  # the preset's, not the default
    assert list(tmp_path.iterdir()) == []    # no run directory, no data, no cache
    (tmp_path / "printed.yaml").write_text(printed.stdout)
    again = kdistill("run", "--config", str(tmp_path / "printed.yaml"), "--print-config")
    assert again.returncode == 0 and again.stdout == printed.stdout  # a valid config file


def test_listings():
    for command, expected in [("presets", "mnist-spec"), ("models", "spec-teacher"), ("losses", "hinton")]:
        result = kdistill(command)
        assert result.returncode == 0 and expected in result.stdout


@pytest.mark.parametrize("args, match", [
    (["run", "--preset", "nope"], "unknown preset 'nope'"),
    (["run", "student.epochs=0"], "student.epochs"),  # teacher.epochs=0: use it as built
    (["run", "distill.alpha=2"], "distill.alpha"),
    (["run", "teacher.nope=1"], "unknown config key 'teacher.nope'"),
    (["run", "data.name=imagenet"], "unknown dataset 'imagenet'"),
    (["run", "student.model=nowhere_pkg.mod:make"], "student.model"),
    (["run", "--config", "/nonexistent/c.yaml"], "does not exist"),
    (["report", "/nonexistent"], "is not a kdistill run directory"),  # one wording everywhere
])
def test_bad_input_is_one_line_and_exit_2(args, match, tmp_path):
    result = kdistill(*args, "--out", str(tmp_path / "o"), env=_env()) if args[0] == "run" else \
        kdistill(*args, env=_env())
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("kdistill: error:")
    assert __import__("re").search(match, lines[0]), lines[0]


def test_class_count_mismatch_is_refused(idx_dir, tmp_path):
    result = kdistill("run", "--out", str(tmp_path / "o"), f"data.name={idx_dir}", *QUICK,
                      "student.model=mlp:784-16-7", env=_env())
    assert result.returncode == 2 and "7" in result.stderr and "10 classes" in result.stderr


def test_existing_run_is_not_overwritten(idx_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"keep": true}')
    result = kdistill("run", "--out", str(out), f"data.name={idx_dir}", *QUICK, env=_env())
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert (out / "metrics.json").read_text() == '{"keep": true}'


def test_tensorboard_event_files(idx_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = kdistill("run", "--quiet", "--tensorboard", "--out", str(out), f"data.name={idx_dir}",
                      *QUICK, "bench.enabled=false", env=_env())
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"teacher/train_loss", "student/test_accuracy", "student/loss_kd", "control/loss_ce"} <= tags
    assert [e.step for e in events.Scalars("teacher/test_accuracy")] == [1, 2]


def test_progress_plain_lines_off_a_terminal_and_quiet(idx_dir, tmp_path):
    args = ["run", f"data.name={idx_dir}", *QUICK, "bench.enabled=false"]
    loud = kdistill(*args, "--out", str(tmp_path / "a"), env=_env())
    assert loud.returncode == 0 and loud.stderr == ""  # no bars when stderr is not a terminal
    assert "teacher  epoch 1/2  loss" in loud.stdout and "control  epoch 2/2" in loud.stdout
    quiet = kdistill(*args, "--quiet", "--out", str(tmp_path / "b"), env=_env())
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_progress_bars_on_a_terminal(idx_dir, tmp_path):
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns
    proc = subprocess.Popen([sys.executable, "-m", "kdistill", "run", "--out", str(tmp_path / "r"),
                             f"data.name={idx_dir}", *QUICK, "bench.enabled=false"],
                            stdout=subprocess.DEVNULL, stderr=terminal, env=_env())
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert "teacher 1/2" in shown and "step/s" in shown and "loss=" in shown, shown[-500:]


# ------------------------------------------------------------------ one consistent CLI (in process)
from kdistill.cli import _parser, main  # noqa: E402


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdistill: error:"), err
    return err[0]


@pytest.mark.parametrize("args, expected", [
    (["student.epoch=3"], "unknown config key 'student.epoch' (did you mean 'student.epochs'? "
                          "`kdistill run --print-config` lists every key"),
    (["sed=1"], "(did you mean 'seed'?"),
    (["student.temperature=4"], "(did you mean 'distill.temperature'?"),
    (["--preset", "mnist-bst"], "unknown preset 'mnist-bst' (did you mean 'mnist-best'?"),
    (["distill.loss=hintn"], "unknown distillation loss 'hintn' (did you mean 'hinton'?"),
])
def test_unknown_names_get_a_did_you_mean(args, expected, capsys):
    assert main(["run", "--print-config", *args]) == 2
    assert expected in _one_error_line(capsys)


def test_unknown_models_and_datasets_get_a_did_you_mean(capsys):
    from kdistill.data import load_dataset
    from kdistill.errors import KdistillError
    from kdistill.models import create_model

    with pytest.raises(KdistillError, match=r"unknown model 'spec-studnt' \(did you mean 'spec-student'\?"):
        create_model("spec-studnt")
    with pytest.raises(KdistillError, match=r"unknown dataset 'minst' \(did you mean 'mnist'\?"):
        load_dataset("minst")
    assert main(["data", "fetch", "cifar-100"]) == 2
    assert "unknown dataset 'cifar-100' (did you mean 'cifar100'?" in _one_error_line(capsys)
    with pytest.raises(KdistillError) as nothing_close:
        create_model("zzz")
    assert "did you mean" not in str(nothing_close.value)


def test_run_help_names_every_config_section_and_print_config(capsys):
    from pydantic import BaseModel

    from kdistill.config import RunConfig

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "`kdistill run --print-config` prints every key with its value" in text
    for name, field in RunConfig.model_fields.items():
        section = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        assert (f"  {name}.*  " in text) if section else (name in text), name


def test_top_level_help_names_every_subcommand(capsys):
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    listing, examples = text.split("examples:")
    for name in commands:
        assert f"\n    {name} " in listing or f"\n    {name}\n" in listing, name
    for name in ("compare", "sweep", "reproduce", "bench", "export"):
        assert f"kdistill {name} " in examples, name


@pytest.mark.parametrize("old, new", [("seed", "mnist-spec"), ("best", "mnist-best"),
                                      ("fashion", "fashion-spec")])
def test_old_preset_names_work_with_a_note(old, new, capsys):
    from kdistill.config import list_presets, load_config

    assert new in list_presets() and old not in list_presets()
    assert main(["run", "--preset", new, "--print-config"]) == 0
    expected = capsys.readouterr()
    assert expected.err == "" and expected.out
    assert main(["run", "--preset", old, "--print-config"]) == 0
    printed = capsys.readouterr()
    assert printed.out == expected.out
    assert printed.err.strip().splitlines() == [
        f"kdistill: note: preset '{old}' is now '{new}' (the old name goes in a later release)"]
    assert load_config() == load_config(preset="mnist-spec")  # the default, without a note
    assert capsys.readouterr().err == ""


def test_old_preset_note_is_printed_by_one_torchrun_process(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert main(["run", "--preset", "seed", "--print-config"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", [["report"], ["bench"], ["export"], ["run", "--resume"],
                                     ["runs"]])  # export: ONNX without --onnx
@pytest.mark.parametrize("kind", ["missing", "no metrics.json"])
def test_not_a_run_directory_is_one_wording_and_exit_2(command, kind, tmp_path, capsys):
    target = tmp_path / "nothing-here"
    if kind == "no metrics.json":
        target.mkdir()
        if command == ["runs"]:  # a directory of runs, none yet
            assert main(["runs", str(target)]) == 0
            assert capsys.readouterr().out == f"no runs in {target}\n"
            return
    assert main([*command, str(target)]) == 2
    line = _one_error_line(capsys)
    why = "no such directory" if kind == "missing" else "no metrics.json"
    assert f"{target} is not a kdistill run directory ({why})" in line, line


def test_runs_before_any_run_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # no runs/ at all, then an empty one
        assert main(["runs"]) == 0
        assert capsys.readouterr().out == "no runs in runs/ yet: make one with `kdistill run`\n"
        (tmp_path / "runs").mkdir(exist_ok=True)
    assert main(["runs", "runs/missing"]) == 2  # a directory named, not there
    assert "runs/missing is not a kdistill run directory (no such directory)" in _one_error_line(capsys)


@pytest.mark.parametrize("command", [["sweep", "distill.temperature=1,4"],
                                     ["compare", "--seeds", "1", "--objectives", "distill.loss=kl",
                                      "distill.loss=hinton"]])
def test_compare_and_sweep_take_device_nproc_quiet(command, tmp_path, monkeypatch, capsys):
    from kdistill import cli, study
    from kdistill.pipeline import resolve_config

    devices = []

    def fake_point(config, out_dir, overrides, verbose, trust_code=False):
        devices.append(resolve_config(config, overrides)[0].device)
        return {"models": {r: {"test_accuracy": 0.5} for r in ("teacher", "student", "control")}}

    monkeypatch.setattr(study, "_run_point", fake_point)
    assert main([command[0], "--device", "cpu", "--quiet", "--out", str(tmp_path / "s"),
                 *command[1:]]) == 0
    printed = capsys.readouterr()
    assert devices == ["cpu", "cpu"] and printed.err == "" and printed.out.startswith("|")

    launched = []
    monkeypatch.setattr(cli, "_torchrun", lambda n, argv: launched.append((n, argv)) or 0)
    argv = [command[0], "--nproc", "2", "--device", "cuda", *command[1:]]
    assert main(argv) == 0 and launched == [(2, argv)]


def test_torchrun_relaunch_drops_nproc(monkeypatch):
    import subprocess

    from kdistill import cli

    seen = []
    monkeypatch.setattr(subprocess, "run", lambda cmd: seen.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0))
    assert cli._torchrun(2, ["sweep", "--nproc", "2", "--quiet", "--nproc=2", "seed=1,2"]) == 0
    assert seen[0][-5:] == ["-m", "kdistill", "sweep", "--quiet", "seed=1,2"]
    assert "--nproc-per-node=2" in seen[0]


def test_reproduce_takes_dotted_keys_like_run(capsys):
    from kdistill.reproduce import FULL, with_overrides

    dotted = with_overrides(FULL, ["student.epochs=300", "teacher.epochs=3",
                                   "distill.temperature=4", "small.temperatures=[2,20]"])
    plain = with_overrides(FULL, ["student_epochs=300", "teacher_epochs=3", "temperature=4",
                                  "small_temperatures=[2,20]"])
    assert dotted == plain and dotted.student_epochs == 300
    assert main(["reproduce", "hinton-mnist", "student.epoch=3"]) == 2
    assert "unknown setting 'student.epoch' (did you mean 'student.epochs'?" in _one_error_line(capsys)


def test_models_listing_shows_each_factorys_own_kwargs():
    import inspect

    from kdistill.models import list_models
    from kdistill.models.nets import ConvNet
    from kdistill.models.registry import DATA_KWARGS

    cnn = list_models()["cnn"]
    assert "(kwargs: width=32, dropout=0.3)" in cnn  # its signature's defaults
    for name in inspect.signature(ConvNet).parameters:  # every parameter: a kwarg or told
        assert (name in cnn) or (name == "in_chans"), name
    assert "image_size" in cnn.split("[told:")[1] and "image_size" in DATA_KWARGS
