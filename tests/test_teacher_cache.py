"""The teacher cache (reuse keyed by recipe, --retrain-teacher, corrupt entries) and ensembles."""
import json
import math

import pytest
import torch

from kdistill.cli import main
from kdistill.models import Ensemble
from kdistill.pipeline import run
from kdistill.teacher_cache import cache_root

from conftest import QUICK, assert_same_file


def _metrics(path):
    return json.loads((path / "metrics.json").read_text())


def test_second_run_takes_the_teacher_from_the_cache(idx_dir, tmp_path):
    args = [f"data.name={idx_dir}", *QUICK]
    first = run(out=tmp_path / "a", overrides=args, quiet=True).metrics["models"]
    second = run(out=tmp_path / "b", overrides=args, quiet=True).metrics["models"]
    assert first["teacher"]["from_cache"] is False and second["teacher"]["from_cache"] is True
    assert second["teacher"]["train_seconds"] == 0
    assert_same_file(tmp_path / "b" / "teacher.safetensors", tmp_path / "a" / "teacher.safetensors")
    for role in ("teacher", "student", "control"):  # cached logits too: the same run exactly
        assert second[role]["test_accuracy"] == first[role]["test_accuracy"]
    entry = cache_root() / first["teacher"]["cache_key"]
    assert (entry / "teacher.safetensors").exists()
    assert len(list(entry.glob("train_logits-*.safetensors"))) == 1


def test_shift_views_are_cached_once_per_teacher_whatever_the_temperature(idx_dir, tmp_path,
                                                                         capsys):
    args = [f"data.name={idx_dir}", *QUICK, "data.translate=1", "student.epochs=9",
            "distill.loss=hinton", "control=false", "bench.enabled=false"]
    first = run(out=tmp_path / "a", overrides=[*args, "distill.temperature=4"], quiet=True)
    capsys.readouterr()
    second = run(out=tmp_path / "b", overrides=[*args, "distill.temperature=2"], progress=False)
    entry = cache_root() / first.metrics["models"]["teacher"]["cache_key"]
    tables = list(entry.glob("train_logits-*.safetensors"))
    assert len(tables) == 1  # the second run (another T, same teacher) read the 9-view table
    assert second.metrics["models"]["teacher"]["from_cache"] is True
    assert "teacher  logits on the training set from the cache" in capsys.readouterr().out


def test_a_different_recipe_or_retrain_trains_again(idx_dir, tmp_path, capsys):
    args = [f"data.name={idx_dir}", *QUICK]
    key = run(out=tmp_path / "a", overrides=args, quiet=True).metrics["models"]["teacher"]["cache_key"]
    other = run(out=tmp_path / "b", overrides=[*args, "teacher.lr=0.002"], quiet=True)
    assert other.metrics["models"]["teacher"]["from_cache"] is False
    assert other.metrics["models"]["teacher"]["cache_key"] != key
    assert main(["run", "--quiet", "--retrain-teacher", "--out", str(tmp_path / "c"), *args]) == 0
    assert _metrics(tmp_path / "c")["models"]["teacher"]["from_cache"] is False


def test_a_corrupt_cache_entry_is_not_loaded(idx_dir, tmp_path):
    args = [f"data.name={idx_dir}", *QUICK]
    key = run(out=tmp_path / "a", overrides=args, quiet=True).metrics["models"]["teacher"]["cache_key"]
    weights = cache_root() / key / "teacher.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    again = run(out=tmp_path / "b", overrides=args, quiet=True).metrics["models"]["teacher"]
    assert again["from_cache"] is False  # retrained, and the entry repaired
    assert run(out=tmp_path / "c", overrides=args, quiet=True).metrics["models"]["teacher"]["from_cache"]


def test_ensemble_averages_soft_targets():
    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    a, b, t = [2.0, 0.0, -1.0], [0.0, 1.0, 3.0], 4.0
    soft = lambda z: [math.exp(v / t) / sum(math.exp(u / t) for u in z) for u in [0] for v in z]
    average = [(p + q) / 2 for p, q in zip(soft(a), soft(b))]
    out = Ensemble([Fixed(a), Fixed(b)], temperature=t)(torch.zeros(2, 1))
    assert torch.allclose(torch.softmax(out / t, 1)[0], torch.tensor(average), atol=1e-6)
    # hand-computed: T * log of the averaged probabilities (up to a constant per row)
    expected = torch.tensor([t * math.log(p) for p in average])
    assert torch.allclose(out[0] - out[0, 0], expected - expected[0], atol=1e-5)


def test_ensemble_run_trains_members_with_their_own_seeds(idx_dir, tmp_path):
    args = [f"data.name={idx_dir}", *QUICK, "distill.loss=hinton", "distill.temperature=4"]
    single = run(out=tmp_path / "one", overrides=[*args, "seed=1"], quiet=True).metrics["models"]
    ens = run(out=tmp_path / "ens", overrides=[*args, "teacher.ensemble=2"], quiet=True).metrics
    members = ens["models"]["teacher"]["members"]
    assert [m["seed"] for m in members] == [0, 1]
    # member 1 is exactly the single teacher of seed 1 (so it came from the cache)
    assert members[1]["from_cache"] and members[1]["cache_key"] == single["teacher"]["cache_key"]
    assert ens["models"]["teacher"]["params"] == 2 * single["teacher"]["params"]
    assert ens["status"] == "complete" and ens["models"]["student"]["test_accuracy"] > 0.5


def test_feature_objective_refuses_an_ensemble(idx_dir, tmp_path, capsys):
    code = main(["run", "--quiet", "--out", str(tmp_path / "x"), f"data.name={idx_dir}", *QUICK,
                 "teacher.ensemble=2", "distill.loss=fitnets"])
    assert code == 2 and "needs a single teacher" in capsys.readouterr().err
