"""Whether a run precomputes its teacher's logits or runs the teacher live, and the reason it
gives (recorded in metrics.json and said in the report)."""
import pytest

from kdistill.config import load_config
from kdistill.phases import teacher_plan


def plan(preset: str, *overrides: str, images: int = 50_000, classes: int = 100) -> dict:
    cfg = load_config(preset=preset, overrides=list(overrides))
    return teacher_plan(cfg, cfg.data.augment(), images, classes)


def test_fixed_inputs_take_one_teacher_pass():
    p = plan("mnist-spec", images=60_000, classes=10)
    assert p["precomputed"] and p["views"] is None and "one teacher pass" in p["why"]


def test_the_cifar_protocol_tabulates_its_162_crop_flip_views():
    p = plan("cifar100-resnet32x4-resnet8x4")
    assert p["precomputed"] and p["views"] == 162 and p["gb"] == pytest.approx(3.24)
    assert "162 teacher passes instead of 240 epochs live" in p["why"]


@pytest.mark.parametrize("overrides, why", [
    (["distill.teacher_table_gb=2"], "a table would take 3.24 GB, over distill.teacher_table_gb=2"),
    (["distill.teacher_table_gb=0"], "over distill.teacher_table_gb=0"),
    (["student.epochs=100"], "162 teacher passes over the data, more than 100 epochs live"),
    (["data.rotate=10"], "the augmentation is continuous"),
    (["distill.loss=fitnets"], "a feature objective reads the teacher's activations"),
])
def test_the_teacher_runs_live_and_the_plan_says_why(overrides, why):
    p = plan("cifar100-resnet32x4-resnet8x4", *overrides)
    assert not p["precomputed"] and why in p["why"]
