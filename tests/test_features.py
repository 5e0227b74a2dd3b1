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
from kdistill.losses.features import MAX_LINEAR_ADAPTER_WEIGHTS, fitnets_adapter
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


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread (these nets are small; the CI cores are few and shared), restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# --- FitNets adapters on the CIFAR zoo pairs: conv + BN regressors, never a huge Linear ---------

# teacher, its layer, student, its layer, student feature shape, teacher feature shape (no batch),
# the adapter's conv type
CIFAR_PAIRS = [
    ("resnet32x4", "layer3", "resnet8x4", "layer3", (256, 8, 8), (256, 8, 8), nn.Conv2d),
    ("wrn_40_2", "block3", "wrn_16_2", "block3", (128, 8, 8), (128, 8, 8), nn.Conv2d),
    ("resnet56", "layer3", "resnet20", "layer3", (64, 8, 8), (64, 8, 8), nn.Conv2d),
    ("vgg13", "block4", "vgg8", "block4", (512, 4, 4), (512, 4, 4), nn.Conv2d),
    # ShuffleV2's last stage is 4x4, half the teacher's 8x8: a transposed conv upsamples it
    ("resnet32x4", "layer3", "ShuffleV2", "layer3", (464, 4, 4), (256, 8, 8), nn.ConvTranspose2d),
    # its first stage is 16x16, twice the teacher's: a strided conv (3x3, stride 2, padding 1)
    ("resnet32x4", "layer3", "ShuffleV2", "layer1", (116, 16, 16), (256, 8, 8), nn.Conv2d),
]
# attention transfer needs equal spatial sizes: ShuffleV2's 8x8 stage is layer2 (232 channels)
AT_PAIRS = [pair[:4] for pair in CIFAR_PAIRS[:4]] + [("resnet32x4", "layer3", "ShuffleV2", "layer2")]


def _zoo_pair(teacher_name: str, student_name: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return (create_model(student_name, num_classes=100), create_model(teacher_name, num_classes=100),
            torch.randn(4, 3, 32, 32))


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _check_hint_trains_student_and_adapter_only(hint, student, teacher, x):
    student.train()
    teacher.eval()
    teacher(x)  # with grad on and the teacher not frozen: only the detach keeps it out
    student(x)
    loss = hint()["hint"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert _first_conv(student).weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hint.parameters())


@pytest.mark.parametrize("teacher_name, t_layer, student_name, s_layer, s_shape, t_shape, conv",
                         CIFAR_PAIRS, ids=[f"{p[0]}.{p[1]}-{p[2]}.{p[3]}" for p in CIFAR_PAIRS])
def test_fitnets_on_cifar_zoo_pairs_uses_a_small_conv_adapter(teacher_name, t_layer, student_name,
                                                              s_layer, s_shape, t_shape, conv):
    student, teacher, x = _zoo_pair(teacher_name, student_name)
    hint = FeatureDistillation(student, teacher, x[:2], student_layer=s_layer,
                               teacher_layer=t_layer)
    try:
        assert isinstance(hint.adapter, nn.Sequential) and type(hint.adapter[0]) is conv
        assert isinstance(hint.adapter[1], nn.BatchNorm2d) and len(hint.adapter) == 2  # no ReLU
        assert not any(isinstance(m, nn.Linear) for m in hint.modules())
        assert sum(p.numel() for p in hint.parameters()) < 1_000_000
        assert hint.adapter[0].in_channels == s_shape[0]
        assert hint.adapter[0].out_channels == t_shape[0]
        _check_hint_trains_student_and_adapter_only(hint, student, teacher, x)
        s_feature, t_feature = hint._features()
        assert tuple(s_feature.shape) == (4, *s_shape) and tuple(t_feature.shape) == (4, *t_shape)
        assert hint.adapter(s_feature).shape == t_feature.shape
    finally:
        hint.remove()


@pytest.mark.parametrize("teacher_name, t_layer, student_name, s_layer", AT_PAIRS,
                         ids=[f"{p[0]}.{p[1]}-{p[2]}.{p[3]}" for p in AT_PAIRS])
def test_attention_transfer_on_cifar_zoo_pairs(teacher_name, t_layer, student_name, s_layer):
    student, teacher, x = _zoo_pair(teacher_name, student_name)
    hint = FeatureDistillation(student, teacher, x[:2], kind="at", student_layer=s_layer,
                               teacher_layer=t_layer)
    try:
        assert hint.adapter is None and list(hint.parameters()) == []
        _check_hint_trains_student_and_adapter_only(hint, student, teacher, x)
    finally:
        hint.remove()


def test_attention_transfer_still_refuses_different_spatial_sizes_on_the_zoo():
    student, teacher, x = _zoo_pair("resnet32x4", "ShuffleV2")
    with pytest.raises(ConfigError, match="attention maps differ"):
        FeatureDistillation(student, teacher, x[:2], kind="at", student_layer="layer3",
                            teacher_layer="layer3")
    assert not student.layer3._forward_hooks and not teacher.layer3._forward_hooks


@pytest.mark.parametrize("s_shape, t_shape, conv, kernel, stride, padding", [
    ((8, 6, 6), (4, 6, 6), nn.Conv2d, (1, 1), (1, 1), (0, 0)),
    ((8, 16, 16), (4, 8, 8), nn.Conv2d, (3, 3), (2, 2), (1, 1)),    # RepDistiller's ConvReg
    ((8, 32, 8), (4, 8, 8), nn.Conv2d, (7, 1), (4, 1), (3, 0)),     # per-dimension factors
    ((8, 4, 4), (4, 8, 8), nn.ConvTranspose2d, (2, 2), (2, 2), (0, 0)),
    ((8, 2, 4), (4, 8, 8), nn.ConvTranspose2d, (4, 2), (4, 2), (0, 0)),
])
def test_fitnets_adapter_maps_to_the_teacher_shape(s_shape, t_shape, conv, kernel, stride,
                                                   padding):
    adapter = fitnets_adapter(s_shape, t_shape)
    assert type(adapter[0]) is conv and adapter[0].bias is None
    assert (adapter[0].kernel_size, adapter[0].stride, adapter[0].padding) == (kernel, stride,
                                                                              padding)
    assert adapter(torch.randn(2, *s_shape)).shape == (2, *t_shape)


@pytest.mark.parametrize("s_shape, t_shape", [((64, 6, 6), (64, 8, 8)),   # 4/3: no integer ratio
                                              ((64, 8, 4), (64, 4, 8))])  # larger, then smaller
def test_fitnets_adapter_refuses_spatial_sizes_without_an_integer_ratio(s_shape, t_shape):
    with pytest.raises(ConfigError, match="not an integer ratio apart") as err:
        fitnets_adapter(s_shape, t_shape)
    assert str(s_shape) in str(err.value) and str(t_shape) in str(err.value)
    assert "pick layers of matching (or integer-ratio) spatial size" in str(err.value)


def test_feature_distillation_refuses_a_non_integer_spatial_ratio_and_leaves_no_hooks():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))  # 8x8 -> 6x6
    teacher = nn.Sequential(nn.Conv2d(3, 5, 1), nn.Flatten(), nn.LazyLinear(2))  # 8x8 -> 8x8
    with pytest.raises(ConfigError, match="not an integer ratio apart") as err:
        FeatureDistillation(student, teacher, torch.randn(2, 3, 8, 8), student_layer="0",
                            teacher_layer="0")
    assert "'0' (4, 6, 6)" in str(err.value) and "'0' (5, 8, 8)" in str(err.value)
    assert not student[0]._forward_hooks and not teacher[0]._forward_hooks


def test_a_conv_map_against_a_vector_gets_a_linear_only_when_small(monkeypatch):
    adapter = fitnets_adapter((4, 6, 6), (16,))
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (144, 16)
    assert MAX_LINEAR_ADAPTER_WEIGHTS == 2 ** 24
    with pytest.raises(ConfigError, match="Linear adapter between the flattened"):
        fitnets_adapter((256, 8, 8), (1100,))  # 18M weights
    # a smaller cap, so a real zoo pair crosses it cheaply: names and shapes in the message
    import kdistill.losses.features as features

    monkeypatch.setattr(features, "MAX_LINEAR_ADAPTER_WEIGHTS", 2 ** 20)
    student, teacher, x = _zoo_pair("resnet32x4", "resnet8x4")
    assert 256 * 8 * 8 * 100 > features.MAX_LINEAR_ADAPTER_WEIGHTS
    with pytest.raises(ConfigError, match="Linear adapter between the flattened") as err:
        FeatureDistillation(student, teacher, x[:2], student_layer="layer3", teacher_layer="fc")
    assert "'layer3' (256, 8, 8)" in str(err.value) and "'fc' (100)" in str(err.value)
    assert "pick layers of the same kind" in str(err.value)
    assert not student.layer3._forward_hooks and not teacher.fc._forward_hooks


def test_adapter_running_stats_are_untouched_by_init_and_follow_the_student_mode():
    student, teacher, x = _zoo_pair("resnet56", "resnet20")
    student.train()
    hint = FeatureDistillation(student, teacher, x[:2], student_layer="layer3",
                               teacher_layer="layer3")
    bn = hint.adapter[1]
    assert torch.equal(bn.running_mean, torch.zeros(64))
    assert torch.equal(bn.running_var, torch.ones(64)) and bn.num_batches_tracked.item() == 0
    assert hint.adapter.training  # as the student is
    with torch.no_grad():
        teacher.eval()(x)
        student.eval()(x)
        hint.train()  # the adapter follows the student, not this module's own mode
        hint()
    assert not hint.adapter.training and bn.num_batches_tracked.item() == 0
    assert torch.equal(bn.running_mean, torch.zeros(64))
    student.train()(x)
    hint()["hint"].backward()
    assert hint.adapter.training and bn.num_batches_tracked.item() == 1
    assert not torch.equal(bn.running_mean, torch.zeros(64))
    hint.remove()


def test_adapter_is_on_the_student_feature_dtype_and_trains_in_fit_mode():
    from kdistill.engine import Distiller
    student, teacher, x = _zoo_pair("resnet56", "resnet20")
    student, teacher, x = student.double(), teacher.double(), x.double()
    hint = FeatureDistillation(student, teacher, x[:2], student_layer="layer3",
                               teacher_layer="layer3")
    assert all(p.dtype == torch.float64 for p in hint.parameters())
    assert all(b.dtype == torch.float64 for b in hint.adapter[1].buffers() if b.is_floating_point())
    hint.eval()  # even left in eval mode by someone, a training step trains the adapter
    distiller = Distiller(student, teacher, "kl", features=hint)
    assert {id(p) for p in hint.parameters()} <= {id(p) for p in distiller.get_learnable_parameters()}
    distiller.train()
    _, terms = distiller.forward_train(x, torch.zeros(4, dtype=torch.long), torch.arange(4))
    assert hint.adapter.training and hint.adapter[1].num_batches_tracked.item() == 1
    assert terms["hint"].dtype == torch.float64 and torch.isfinite(terms["hint"])
    hint.remove()
