"""The command line end to end: runs on synthetic data, listings, and one-line errors."""
import json
import os

import pytest

from conftest import QUICK, kdistill


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
    assert (tmp_path / "a" / "student.safetensors").read_bytes() == \
        (tmp_path / "b" / "student.safetensors").read_bytes()


def test_print_config_resolves_every_key_and_runs_nothing(tmp_path):
    printed = kdistill("run", "--preset", "best", "--print-config", "student.micro_batches=2",
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
    for command, expected in [("presets", "seed"), ("models", "spec-teacher"), ("losses", "hinton")]:
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
