from pathlib import Path

import pytest
from pydantic import BaseModel

from kdistill.config import RunConfig, apply_overrides, list_presets, load_config, to_yaml
from kdistill.errors import ConfigError


def test_mnist_spec_preset_is_the_spec_recipe():
    cfg = load_config()
    # mean / std unset: MNIST's customary constants, the spec's Normalize((0.5,), (0.5,))
    from kdistill.data.datasets import NORMALIZATION

    assert (cfg.data.name, cfg.data.mean, cfg.data.std) == ("mnist", None, None)
    assert NORMALIZATION["mnist"] == ((0.5,), (0.5,))
    assert (cfg.teacher.model, cfg.teacher.epochs, cfg.teacher.batch_size, cfg.teacher.lr,
            cfg.teacher.optimizer) == ("spec-teacher", 5, 64, 1e-3, "adam")
    assert (cfg.student.model, cfg.student.epochs, cfg.student.batch_size, cfg.student.lr) == (
        "spec-student", 5, 64, 1e-3)
    assert (cfg.distill.loss, cfg.distill.temperature, cfg.distill.alpha) == ("kl", 1.0, 1.0)
    assert cfg.control is True
    assert "mnist-spec" in list_presets()


def _keys(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _keys(field.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_every_config_key_has_a_described_row_in_the_reference():
    """The configuration reference (docs/configuration.md) is generated from the pydantic
    fields by docs/hooks.py: every key gets a row, and every row a description."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "docs_hooks", Path(__file__).parents[1] / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    rows = [line for line in hooks.config_reference().splitlines() if line.startswith("| `")]
    missing = [key for key in _keys(RunConfig) if not any(f"`{key}`" in row for row in rows)]
    assert not missing
    assert not [row for row in rows if hooks.NO_DESCRIPTION in row]


def test_every_documented_key_can_be_overridden(tmp_path):
    cfg = load_config(overrides=[
        "seed=3", "data.name=fashion-mnist", f"data.root={tmp_path}", "teacher.model=mlp:784-10",
        "teacher.epochs=2", "teacher.batch_size=32", "teacher.lr=1e-2", "student.model=spec-teacher",
        "student.epochs=4", "student.batch_size=16", "student.lr=0.5", "distill.loss=hinton",
        "distill.temperature=4", "distill.alpha=0.9", "control=false", "teacher.kwargs.dropout=0.2"])
    assert cfg.seed == 3 and cfg.data.name == "fashion-mnist" and cfg.data.root == str(tmp_path)
    assert cfg.teacher.lr == 0.01 and cfg.student.lr == 0.5 and cfg.teacher.kwargs == {"dropout": 0.2}
    assert cfg.distill.loss == "hinton" and cfg.distill.temperature == 4.0 and cfg.control is False


def test_yaml_file_and_roundtrip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(load_config(overrides=["seed=7"])))
    assert load_config(path=path) == load_config(overrides=["seed=7"])
    assert RunConfig().student.model == "spec-student"


@pytest.mark.parametrize("override, match", [
    ("student.epochs=0", "'student.epochs'.*greater than or equal to 1"),
    ("teacher.epochs=-1", "'teacher.epochs'.*greater than or equal to 0"),
    ("student.batch_size=0", "'student.batch_size'"),
    ("teacher.lr=0", "'teacher.lr'.*greater than 0"),
    ("student.lr=-1", "'student.lr'"),
    ("distill.temperature=0", "'distill.temperature'"),
    ("distill.alpha=1.5", "'distill.alpha'"),
    ("distill.alpha=-0.1", "'distill.alpha'"),
    ("distill.loss=nope", "'distill.loss'.*unknown distillation loss"),
    ("teacher.epochs=three", "'teacher.epochs'"),
    ("control=maybe", "'control'"),
    ("teacher.colour=red", "unknown config key 'teacher.colour'"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("seed.inner=1", "'seed' is not a section"),
    ("noequals", "not key=value"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config(preset="nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(path=tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path=tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(path=tmp_path / "list.yaml")


def test_override_values_are_typed():
    assert apply_overrides({}, ["a.b=1e-3", "c=true", "d=[1, 2]", "e=text"]) == {
        "a": {"b": 0.001}, "c": True, "d": [1, 2], "e": "text"}
