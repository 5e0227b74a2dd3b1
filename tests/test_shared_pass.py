"""The control trained in the same pass as the distilled student (``fit(alongside=...)``) ends
bitwise as training the two one after the other, and a frozen teacher's folded BatchNorm gives
the same logits."""
import copy

import pytest
import torch
from torch import nn

from kdistill.data.augment import Augment
from kdistill.engine import Alongside, Distiller, Images, fit
from kdistill.models import create_model
from kdistill.models.fold import fold_batchnorm, is_channels_last


class Net(nn.Module):
    """Conv + BatchNorm + dropout: every source of state and randomness a step can have."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(channels * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(self.drop(x.flatten(1)))


def data(n: int = 96) -> Images:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = (images.float().mean((1, 2, 3)) > 127).long() * 2 + torch.randint(0, 2, (n,), generator=g)
    return Images(images, labels, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))


def models() -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = Net(16).eval()
    for m in teacher.modules():  # statistics a trained teacher would have
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    student = Net()
    return teacher, student, copy.deepcopy(student)


RECIPE = dict(epochs=3, batch_size=20, lr=0.05, seed=7, optimizer="sgd", momentum=0.9,
              schedule="multistep", milestones=[2], gamma=0.1, progress=False)


def states(*modules: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in modules for t in m.state_dict().values()]


def records(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def one_after_the_other(augment: Augment, test: Images, teacher_is_table: bool = False):
    teacher, student, control = models()
    train = data()
    source = teacher
    if teacher_is_table:
        source = teacher(train.inputs(slice(None))).detach()
    first = fit(Distiller(student, source, "kl", temperature=4.0), train, augment=augment,
                evaluate_on=test, **RECIPE)
    second = fit(Distiller(control), train, augment=augment, evaluate_on=test, **RECIPE)
    return states(student, control), records(first), records(second), torch.get_rng_state()


AUGMENTS = {"none": Augment(), "crop+flip": Augment(translate=2, hflip=True),
            "continuous": Augment(translate=1, rotate=10.0, erase=2)}


@pytest.mark.parametrize("name", AUGMENTS)
def test_control_in_the_same_pass_equals_training_it_after(name):
    augment, test = AUGMENTS[name], data(40)
    expected = one_after_the_other(augment, test)
    teacher, student, control = models()
    beside = Alongside(Distiller(control))
    first = fit(Distiller(student, teacher, "kl", temperature=4.0), data(), augment=augment,
                evaluate_on=test, alongside=beside, **RECIPE)
    got = states(student, control), records(first), records(beside.history), torch.get_rng_state()
    assert all(torch.equal(a, b) for a, b in zip(expected[0], got[0]))
    assert expected[1:3] == got[1:3]
    assert torch.equal(expected[3], got[3])  # the global RNG is left where it would be
    assert all(h["seconds"] > 0 for h in beside.history + first)


def test_the_same_pass_with_a_teacher_table():
    test = data(40)
    expected = one_after_the_other(Augment(), test, teacher_is_table=True)
    teacher, student, control = models()
    train = data()
    table = teacher(train.inputs(slice(None))).detach()
    beside = Alongside(Distiller(control))
    fit(Distiller(student, table, "kl", temperature=4.0), train, evaluate_on=test,
        alongside=beside, **RECIPE)
    assert all(torch.equal(a, b) for a, b in zip(expected[0], states(student, control)))


class Stop(Exception):
    pass


class StopAt:
    """A callback that interrupts training when epoch ``epoch`` ends (before its checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, epoch): ...
    def on_step_end(self, step, losses): ...
    def on_train_epoch_end(self, epoch): ...

    def on_epoch_end(self, record):
        if record["epoch"] == self.epoch:
            raise Stop


@pytest.mark.parametrize("who", ["student", "control"])
def test_the_same_pass_resumes_bitwise_even_when_one_model_is_behind(tmp_path, who):
    augment, test = AUGMENTS["crop+flip"], data(40)
    expected = one_after_the_other(augment, test)
    teacher, student, control = models()
    paths = {"student": tmp_path / "s.safetensors", "control": tmp_path / "c.safetensors"}

    def attempt(stop: StopAt | None) -> tuple[list[dict], Alongside]:
        beside = Alongside(Distiller(control), checkpoint=paths["control"],
                           callbacks=[stop] if stop and who == "control" else [])
        first = fit(Distiller(student, teacher, "kl", temperature=4.0), data(),
                    augment=augment, evaluate_on=test, checkpoint=paths["student"],
                    alongside=beside, callbacks=[stop] if stop and who == "student" else [],
                    **RECIPE)
        return first, beside

    with pytest.raises(Stop):  # the student stops before epoch 2's checkpoint: both at 1;
        attempt(StopAt(2))     # the control: the student saved epoch 2, the control is behind
    for m in (student, control):  # a fresh process: nothing but the checkpoints survives
        for p in m.parameters():
            p.data.fill_(0.0)
    first, beside = attempt(None)
    assert all(torch.equal(a, b) for a, b in zip(expected[0], states(student, control)))
    assert expected[1:3] == (records(first), records(beside.history))


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4", "wrn_16_2", "MobileNetV2", "vgg13", "cnn"])
def test_folded_teacher_gives_the_same_logits(name):
    kwargs = {} if name == "cnn" else {"num_classes": 100}
    model = create_model(name, **kwargs)
    torch.manual_seed(0)
    for m in model.modules():  # statistics and affine terms far from the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    model.eval()
    x = torch.randn(6, 1 if name == "cnn" else 3, 28 if name == "cnn" else 32,
                    28 if name == "cnn" else 32)
    folded = fold_batchnorm(model)
    assert folded is not model
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) < sum(
        isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        expected, got = model(x), folded(x)
    scale = expected.abs().max()
    assert torch.allclose(got, expected, atol=1e-5 * float(scale), rtol=1e-4)
    assert not any(p.requires_grad for p in folded.parameters())
    assert model.training is False and all(p.requires_grad for p in model.parameters())


def test_folding_leaves_a_model_it_cannot_trace_or_without_batchnorm_as_it_is():
    class Branchy(nn.Module):  # control flow on a tensor: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    branchy = Branchy().train()
    assert fold_batchnorm(branchy) is branchy and branchy.training

    class BranchySequential(Branchy):  # not traceable, but its Sequential order shows the pair
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(self.conv, self.bn, nn.ReLU())

        def forward(self, x):
            return self.block(x) if x.sum() > 0 else x

    model = BranchySequential().eval()
    model.bn.running_var.uniform_(0.5, 2.0)
    folded = fold_batchnorm(model)
    assert isinstance(folded.block[1], nn.Identity) and isinstance(model.block[1], nn.BatchNorm2d)
    x = torch.rand(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-6)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert fold_batchnorm(plain) is plain


def test_a_distiller_runs_its_live_teacher_folded_when_channels_last_and_without_autograd():
    teacher, student, _ = models()
    assert Distiller(student, teacher, "kl").teacher is teacher  # NCHW: folding measured slower
    teacher = teacher.to(memory_format=torch.channels_last)
    distiller = Distiller(student, teacher, "kl")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in distiller.teacher.modules())
    assert is_channels_last(distiller.teacher)
    x = data(8).inputs(slice(None))
    logits = distiller.live_teacher(x)
    assert not logits.requires_grad and not logits.is_inference()
    with torch.no_grad():
        assert torch.allclose(logits, teacher(x), atol=1e-5)


def test_a_view_table_holds_the_teachers_logits_on_every_crop_and_flip():
    from kdistill.evaluation import predict_logits, predict_views

    teacher, _, _ = models()
    train, augment = data(30), Augment(translate=1, hflip=True)
    table = predict_views(teacher, train, augment, batch_size=8)
    assert table.shape == (18, 30, 4) and table.dtype == torch.float32
    for v in range(18):
        view = Images(augment.view(train.images, v), train.labels, train.mean, train.std)
        assert torch.equal(table[v], predict_logits(teacher, view, batch_size=8))
    with pytest.raises(ValueError, match="no views"):
        predict_views(teacher, train, Augment(rotate=5.0))
