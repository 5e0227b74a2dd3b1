"""`kdistill run` on real MNIST with a short schedule: real training, real thresholds."""
import json

from conftest import kdistill


def test_seed_recipe_one_epoch_each(tmp_path):
    out = tmp_path / "run"
    result = kdistill("run", "--quiet", "--out", str(out), "teacher.epochs=1", "student.epochs=1",
                      "bench.latency_repeats=50")
    assert result.returncode == 0, result.stderr
    m = json.loads((out / "metrics.json").read_text())
    models = m["models"]
    assert models["teacher"]["params"] == 67_786 and models["student"]["params"] == 101_770
    assert models["teacher"]["test_accuracy"] >= 0.96   # one epoch of the spec's CNN
    assert models["student"]["test_accuracy"] >= 0.90   # one epoch of KL at T=1, no labels
    assert models["control"]["test_accuracy"] >= 0.90
    assert m["dataset"]["train_size"] == 60_000 and m["dataset"]["test_size"] == 10_000
    assert m["inference"]["student"]["throughput_per_s"] > m["inference"]["teacher"]["throughput_per_s"]
    report = (out / "report.md").read_text()
    assert "Against the spec" in report and "**more** parameters" in report
