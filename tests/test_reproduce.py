"""`kdistill reproduce hinton-mnist` in miniature: real MNIST, a few thousand images, short
schedules. The numbers are measured, not mocked, so the distillation check can fail."""
import csv
import json
import re
from dataclasses import replace

import pytest
import torch

from conftest import kdistill
from kdistill.errors import KdistillError
from kdistill.reproduce import (FULL, OFFSETS, PAPER, ROWS, Recipe, choose_offset, reproduce,
                                shift, with_overrides)

# A teacher trained long enough to be clearly better than the plain student, or distillation
# has nothing to transfer; about 20 s on 2 cores.
MINI = Recipe(teacher_epochs=20, student_epochs=10, small_epochs=10, temperatures=(20.0,),
              small_temperatures=(2.5, 8.0), train_size=3000, val_size=2000)


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory):
    """One teacher cache for this module: its runs continue one another, as a user's would."""
    return tmp_path_factory.mktemp("teacher-cache")


@pytest.fixture(autouse=True)
def _own_teacher_cache(teacher_cache, monkeypatch):  # in place of conftest's, for this module
    monkeypatch.setenv("KDISTILL_CACHE", str(teacher_cache))


@pytest.fixture(scope="module")
def mini(tmp_path_factory, teacher_cache):
    out = tmp_path_factory.mktemp("hinton")
    lines = []
    with pytest.MonkeyPatch.context() as env:  # set before any test's own fixtures run
        env.setenv("KDISTILL_CACHE", str(teacher_cache))
        results = reproduce("hinton-mnist", out, recipe=MINI, device="cpu", progress=lines.append)
    return out, results, lines


def test_table_has_every_experiment_with_the_papers_numbers(mini):
    out, results, lines = mini
    rows = {r["key"]: r for r in results["rows"]}
    assert list(rows) == [key for key, *_ in ROWS]
    assert {k: r["paper"] for k, r in rows.items()} == PAPER
    assert (rows["teacher"]["paper"], rows["distilled"]["paper"], rows["only78_shifted"]["paper"]) \
        == (67, 74, 13.2)
    assert results["train_size"] == 3000 and results["val_size"] == 2000
    table = (out / "table.md").read_text()
    for r in results["rows"]:
        assert r["experiment"] in table
    assert "on the 1,010 test 3s" in table and "does not say how its offsets" in table
    with open(out / "table.csv", newline="") as f:
        keys = [row["key"] for row in csv.DictReader(f)]
    assert keys[:len(ROWS)] == [key for key, *_ in ROWS]
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    assert (out / "temperature.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("teacher" in line for line in lines)  # progress as it goes


def test_offsets_are_chosen_and_reported(mini):
    _, results, _ = mini
    offsets = results["offsets"]
    assert "validation" in offsets["chosen_on"] and "does not say" in offsets["paper_note"]
    for values in (offsets["omit3_class3_raise"], offsets["only78_class7_8_lower"]):
        assert len(values) == 1 and 0 <= values[0] <= 30
    rows = {r["key"]: r for r in results["rows"]}
    # no 3 was trained on: the student misses many 3s, and the validated raise brings most back
    assert rows["omit3_threes"]["mean"] > 150
    assert rows["omit3_shifted_threes"]["mean"] < rows["omit3_threes"]["mean"]
    assert rows["only78_shifted"]["mean"] < rows["only78"]["mean"]


def test_distillation_beats_the_plain_student(mini):
    _, results, _ = mini
    rows = {r["key"]: r["mean"] for r in results["rows"]}
    assert rows["teacher"] < rows["student"], rows
    assert rows["distilled"] < rows["student"], rows
    study = results["temperature_study"]
    assert set(study["784-30-30-10"]["distilled"]) == {"2.5", "8"}
    assert set(study["784-800-800-10"]["distilled"]) == {"20"}


def test_same_out_dir_continues_without_training(mini):
    out, results, _ = mini
    lines = []
    again = reproduce("hinton-mnist", out, recipe=MINI, device="cpu", progress=lines.append)
    assert again["rows"] == results["rows"]
    assert all("saved earlier" in line for line in lines[1:])
    with pytest.raises(Exception, match="other settings"):
        reproduce("hinton-mnist", out, recipe=replace(MINI, student_epochs=1),
                  device="cpu")


# MINI written as command-line settings on top of the full recipe
MINI_SETTINGS = ["teacher_epochs=20", "student_epochs=10", "small_epochs=10", "temperatures=[20]",
                 "small_temperatures=[2.5, 8]", "train_size=3000", "val_size=2000"]


def test_settings_change_the_recipe_with_checked_types():
    assert with_overrides(FULL, MINI_SETTINGS) == MINI
    changed = with_overrides(MINI, ["lr=2e-3", "temperatures=4", "train_size=null", "alpha=0"])
    assert (changed.lr, changed.temperatures, changed.train_size, changed.alpha) == \
        (0.002, (4.0,), None, 0.0)
    assert replace(changed, lr=MINI.lr, temperatures=MINI.temperatures,
                   train_size=MINI.train_size, alpha=MINI.alpha) == MINI


def test_command_line_settings_reach_the_run(mini):
    # the same recipe given as key=value settings: the CLI continues the fixture's run
    out, results, _ = mini
    result = kdistill("reproduce", "hinton-mnist", "--out", str(out), "--device", "cpu",
                      "--quiet", *MINI_SETTINGS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (out / "table.md").read_text() and "(lr 0.001)" in result.stdout
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == results["rows"] and saved["recipe"] == results["recipe"]


def test_choose_offset_finds_the_shift_that_fixes_validation():
    # class 3 sits 2 logits too low for every 3; other classes win by 1 elsewhere
    labels = torch.tensor([3] * 50 + [0] * 50)
    logits = torch.zeros(100, 10)
    logits[:50, 3], logits[:50, 5] = 1.0, 3.0   # 3s: fixed by a raise in (2, 4)
    logits[50:, 0], logits[50:, 3] = 5.0, 1.0   # 0s: broken by a raise of 4 or more
    offset = choose_offset(logits, labels, [3], +1.0)
    assert 2 < offset < 4


def test_choose_offset_equals_brute_force():
    torch.manual_seed(0)
    logits, labels = 3 * torch.randn(300, 10), torch.randint(0, 10, (300,))
    for classes, sign in (([3], 1.0), ([7, 8], -1.0)):
        counts = torch.tensor([int((shift(logits, classes, sign * float(o)).argmax(1) != labels).sum())
                               for o in OFFSETS])
        ties = OFFSETS[counts == counts.min()]
        assert choose_offset(logits, labels, classes, sign) == round(float(ties[(len(ties) - 1) // 2]), 2)


@pytest.mark.parametrize("args, match", [
    (["reproduce", "nope"], "unknown experiment 'nope'"),
    (["reproduce", "hinton-mnist", "--seeds", "0"], "--seeds must be at least 1"),
    (["reproduce", "hinton-mnist", "nope=1"], "unknown setting 'nope'"),
    (["reproduce", "hinton-mnist", "student_epochs=0"], "student_epochs=0 must be a whole number"),
    (["reproduce", "hinton-mnist", "temperatures=[2, -1]"], "must be a list of positive numbers"),
    (["reproduce", "hinton-mnist", "alpha=yes"], "alpha=True must be a number from 0 to 1"),
])
def test_bad_input_is_one_line_and_exit_2(args, match, tmp_path):
    result = kdistill(*args, "--out", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdistill: error:") and match in lines[0]
    assert not (tmp_path / "o").exists()


# Every experiment in a second or two: one epoch each on 500 images, no jittered students.
TINY = Recipe(teacher_epochs=1, student_epochs=1, small_epochs=1, temperatures=(20.0,),
              small_temperatures=(4.0,), student_translate=0, train_size=500, val_size=2000)
TINY_SETTINGS = ["teacher_epochs=1", "student_epochs=1", "small_epochs=1", "temperatures=[20]",
                 "small_temperatures=[4]", "student_translate=0", "train_size=500",
                 "val_size=2000"]


def test_teachers_come_from_the_teacher_cache_not_the_output_directory(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDISTILL_CACHE", str(cache))
    first_lines, again_lines = [], []
    first = reproduce("hinton-mnist", tmp_path / "a", recipe=TINY, device="cpu",
                      progress=first_lines.append)
    assert not any("teacher cache" in line for line in first_lines)
    assert not list((tmp_path / "a").rglob("*.safetensors"))  # the teacher lives in the cache
    assert [p.name for p in cache.glob("*/teacher.safetensors")] == ["teacher.safetensors"]
    # another output directory, other student settings: the same teacher, loaded not trained
    again = reproduce("hinton-mnist", tmp_path / "b", recipe=replace(TINY, student_epochs=2),
                      device="cpu", progress=again_lines.append)
    assert any(line.startswith("seed 0  teacher:") and "from the teacher cache" in line
               for line in again_lines)
    assert again["per_seed"][0]["teacher"] == first["per_seed"][0]["teacher"]
    # --retrain-teacher trains it again, to the same errors (training is deterministic)
    result = kdistill("reproduce", "hinton-mnist", "--out", str(tmp_path / "c"), "--device",
                      "cpu", "--retrain-teacher", *TINY_SETTINGS)
    assert result.returncode == 0, result.stderr
    assert "teacher:" in result.stderr and "teacher cache" not in result.stderr
    retrained = json.loads((tmp_path / "c" / "results.json").read_text())
    assert retrained["per_seed"][0]["teacher"]["errors"] == first["per_seed"][0]["teacher"]["errors"]
    assert [r["values"] for r in retrained["rows"]] == [r["values"] for r in first["rows"]]


@pytest.mark.parametrize("setting, match", [
    ("train_size=0", "train_size=0 must be a whole number ≥ 1, or null"),
    ("lr=.inf", "lr=inf must be a positive finite number"),
    ("temperatures=[]", "temperatures=[] must be a list of positive numbers"),
    ("val_size=2.5", "val_size=2.5 must be a whole number ≥ 1"),
    ("distill.alpha=1.5", "alpha=1.5 must be a number from 0 to 1"),
])
def test_each_setting_is_checked_by_its_field(setting, match):
    with pytest.raises(KdistillError, match=re.escape(match)):
        with_overrides(FULL, [setting])


@pytest.mark.parametrize("text, why", [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "no recipe"),
    ('{"recipe": {}, "models": {"student": {"errors": "os.system"}}}', "models: "),
    ('{"recipe": {}, "models": []}', "models: "),
])
def test_a_corrupt_measurements_file_is_one_line_and_exit_2(text, why, tmp_path):
    out = tmp_path / "o"
    (out / "seed-0").mkdir(parents=True)
    (out / "seed-0" / "measurements.json").write_text(text)
    result = kdistill("reproduce", "hinton-mnist", "--out", str(out), *TINY_SETTINGS)
    assert result.returncode == 2, result.stderr
    *progress, error = result.stderr.strip().splitlines()  # the progress line, then the error
    assert len(progress) == 1 and progress[0].startswith("hinton-mnist: 1 seed(s)")
    assert error.startswith("kdistill: error:") and "is not a reproduction's measurements" in error
    assert why in error
    assert (out / "seed-0" / "measurements.json").read_text() == text  # nothing overwritten
