"""Feature distillation: hooks, the FitNets and AT losses against hand computations, and the
FeatureDistillation module on the spec's nets."""
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.errors import ConfigError
from kdistill.losses import (FeatureDistillation, FeatureHooks, at_loss, attention_map,
                             default_feature_layer, fitnets_loss)
from kdistill.models import create_model

# [B=2, C=2, H=1, W=2] student and [B=2, C=1, H=1, W=2] teacher features
FS = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]], [[[0.0, 1.0]], [[1.0, 1.0]]]],
                  dtype=torch.float64)
FT = torch.tensor([[[[2.0, 2.0]]], [[[1.0, 0.0]]]], dtype=torch.float64)
# channel means of f², per position: student (1+9)/2, (4+0)/2 and (0+1)/2, (1+1)/2; teacher
# 4, 4 and 1, 0; each row divided by its L2 norm
MAP_S = [[5 / math.sqrt(29), 2 / math.sqrt(29)], [0.5 / math.sqrt(1.25), 1 / math.sqrt(1.25)]]
MAP_T = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1.0, 0.0]]
AT = sum(sum((a - b) ** 2 for a, b in zip(s, t)) for s, t in zip(MAP_S, MAP_T)) / 2


def test_attention_map_of_a_conv_feature():
    assert attention_map(FS).flatten().tolist() == pytest.approx(sum(MAP_S, []), rel=1e-12)
    assert attention_map(FT).flatten().tolist() == pytest.approx(sum(MAP_T, []), rel=1e-12)


def test_attention_map_of_a_flat_feature_is_its_normalised_power():
    f = torch.tensor([[3.0, -4.0], [0.0, 2.0]], dtype=torch.float64)
    expected = [9 / math.sqrt(337), 16 / math.sqrt(337), 0.0, 1.0]  # 9² + 16² = 337
    assert attention_map(f).flatten().tolist() == pytest.approx(expected, rel=1e-12)
    assert attention_map(f, p=1).flatten().tolist() == pytest.approx([0.6, 0.8, 0.0, 1.0])


def test_at_loss_matches_hand_computation():
    # unit vectors: |a - b|² = 2 - 2 a·b, so AT = ((2 - 14 / √58) + (2 - 2 / √5)) / 2
    assert AT == pytest.approx(2 - 7 / math.sqrt(58) - 1 / math.sqrt(5), rel=1e-12)
    assert at_loss(FS, FT).item() == pytest.approx(AT, rel=1e-12)
    assert at_loss(FS, FS).item() == 0.0


def test_at_loss_rejects_maps_of_different_sizes():
    with pytest.raises(ConfigError, match="attention maps differ in size"):
        at_loss(torch.ones(2, 3, 4, 4), torch.ones(2, 3, 2, 2))
    with pytest.raises(ConfigError, match="needs a"):
        attention_map(torch.ones(2, 3, 4))


def test_fitnets_loss_is_the_mean_squared_error():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [5.0, 4.0]])
    assert fitnets_loss(s, t).item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    with pytest.raises(ConfigError, match="does not match"):
        fitnets_loss(s, t[:, :1])


class UserNet(nn.Module):
    """A model of the user's: the hooks must find its layers without any edits to it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Module()
        self.body.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Sequential(OrderedDict(fc=nn.Linear(2 * 4 * 4, 5), act=nn.ReLU(),
                                              out=nn.Linear(5, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body.conv(x)).flatten(1))


def test_hooks_capture_the_named_outputs_of_a_user_model():
    torch.manual_seed(0)
    model, x = UserNet(), torch.randn(4, 1, 6, 6)
    with FeatureHooks(model, ["body.conv", "head.act"]) as hooks:
        out = model(x)
    conv = F.conv2d(x, model.body.conv.weight, model.body.conv.bias)
    assert torch.equal(hooks.features["body.conv"], conv)
    hidden = torch.relu(F.linear(torch.relu(conv).flatten(1), model.head.fc.weight,
                                 model.head.fc.bias))
    assert torch.allclose(hooks.features["head.act"], hidden)
    assert torch.allclose(model.head.out(hooks.features["head.act"]), out)
    model(torch.zeros(1, 1, 6, 6))  # hooks removed on exit: nothing more is captured
    assert hooks.features["body.conv"].shape[0] == 4


def test_hooks_remove_and_numbered_paths():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    hooks = FeatureHooks(model, "1")
    model(torch.ones(2, 3))
    assert hooks.features["1"].min() >= 0
    hooks.remove()
    assert not model[1]._forward_hooks


def test_a_bad_path_names_itself_and_the_modules_there_are():
    with pytest.raises(ConfigError, match="UserNet has no module 'body.fc9'") as err:
        FeatureHooks(UserNet(), ["body.conv", "body.fc9"])
    assert "available modules: body, body.conv, head, head.fc" in str(err.value)


def test_no_hook_is_left_behind_when_a_later_path_is_bad():
    model = UserNet()
    with pytest.raises(ConfigError):
        FeatureHooks(model, ["body.conv", "nope"])
    assert not model.body.conv._forward_hooks


@pytest.mark.parametrize("name, layer", [("spec-teacher", "fc1"), ("spec-student", "fc1"),
                                         ("mlp:784-800-800-10", "fc2")])
def test_default_feature_layer_is_the_penultimate_parametric_layer(name, layer):
    assert default_feature_layer(create_model(name)) == layer


def test_default_feature_layer_needs_two_layers():
    with pytest.raises(ConfigError, match="fewer than two layers"):
        default_feature_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def _spec_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    student, teacher = create_model("spec-student"), create_model("spec-teacher")
    teacher.requires_grad_(False)
    return student, teacher, torch.randn(32, 1, 28, 28)


@pytest.mark.parametrize("kind", ["fitnets", "at"])
def test_hint_gradient_reaches_the_student_and_adapter_not_the_teacher(kind):
    student, teacher, x = _spec_pair()
    student.train()
    teacher.eval()
    hint = FeatureDistillation(student, teacher, x[:2], kind=kind)
    assert student.training and student.fc1.training and not teacher.training  # modes restored
    with torch.no_grad():
        teacher(x)
    student(x)
    loss = hint()["hint"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert student.fc1.weight.grad.abs().sum() > 0
    assert student.fc2.weight.grad is None  # after the hooked layer
    assert all(p.grad is None for p in teacher.parameters())
    if kind == "fitnets":
        assert [p.shape for p in hint.parameters()] == [(128, 128), (128,)]
        assert hint.adapter.weight.grad.abs().sum() > 0
    else:
        assert list(hint.parameters()) == []
    hint.remove()


def test_default_weights_and_explicit_layers():
    student, teacher, x = _spec_pair()
    at = FeatureDistillation(student, teacher, x[:2], kind="at")
    assert at.weight == 1000.0 and at.map_size == 128
    with torch.no_grad():
        student(x), teacher(x)
        expected = 1000.0 * at_loss(student.fc1(x.flatten(1)), at._teacher_hooks.features["fc1"])
        assert at()["hint"].item() == pytest.approx(expected.item() / 128, rel=1e-6)
    at.remove()
    fit = FeatureDistillation(student, teacher, x[:2], student_layer="fc2", teacher_layer="fc1",
                              weight=0.5)
    assert fit.weight == 0.5 and fit.adapter.in_features == 10 and fit.adapter.out_features == 128
    fit.remove()


def test_unusable_layers_fail_at_construction_and_leave_no_hooks():
    student, teacher, x = _spec_pair()
    with pytest.raises(ConfigError, match="attention maps differ"):
        FeatureDistillation(student, teacher, x[:2], kind="at", student_layer="fc2")
    assert not student.fc2._forward_hooks and not teacher.fc1._forward_hooks
    with pytest.raises(ConfigError, match="unknown feature distillation kind"):
        FeatureDistillation(student, teacher, x[:2], kind="nst")


def test_forward_before_any_batch_says_what_to_run():
    student, teacher, x = _spec_pair()
    hint = FeatureDistillation(student, teacher, x[:2])
    with pytest.raises(RuntimeError, match="run the student and the teacher"):
        hint()


@pytest.mark.parametrize("kind", ["fitnets", "at"])
def test_hint_loss_decreases_with_training(kind):
    student, teacher, x = _spec_pair()
    hint = FeatureDistillation(student, teacher, x[:2], kind=kind)
    opt = torch.optim.Adam([*student.parameters(), *hint.parameters()], lr=1e-3)
    with torch.no_grad():
        teacher(x)
    losses = []
    for _ in range(50):
        student(x)
        loss = hint()["hint"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
