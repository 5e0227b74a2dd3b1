"""The CIFAR zoo (kdistill.models.cifar): parameter counts and state_dict names of RepDistiller's
models (github.com/HobbitLong/RepDistiller, models/), forward/backward of every model, in_channels,
adaptive pooling and registration."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import kdistill.models.cifar  # noqa: F401  (registers the zoo)
from kdistill.errors import ConfigError
from kdistill.models import count_params, create_model, list_models
from kdistill.models.cifar import ZOO

torch.set_num_threads(1)

#: Parameters at 100 classes. The first four are the reference's published counts; the rest equal
#: a model built from RepDistiller's own code (checked once by loading its state_dict, same logits).
PARAMS_100 = {
    "resnet8x4": 1_233_540, "resnet32x4": 7_433_860, "wrn_16_2": 703_284, "vgg8": 3_965_028,
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756, "resnet44": 667_188,
    "resnet56": 861_620, "resnet110": 1_736_564, "wrn_16_1": 180_916, "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436,
    "vgg19": 20_086_692, "MobileNetV2": 812_836, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528,
}

Shapes = dict[str, tuple[int, ...]]


def _conv(name: str, out: int, inp: int, k: int, bias: bool = False) -> Shapes:
    return {f"{name}.weight": (out, inp, k, k), **({f"{name}.bias": (out,)} if bias else {})}


def _bn(name: str, n: int) -> Shapes:
    """A BatchNorm2d's two parameters and three buffers."""
    return {f"{name}.weight": (n,), f"{name}.bias": (n,), f"{name}.running_mean": (n,),
            f"{name}.running_var": (n,), f"{name}.num_batches_tracked": ()}


def _linear(name: str, out: int, inp: int) -> Shapes:
    return {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}


def reference_resnet8x4() -> Shapes:
    """RepDistiller ResNet(8, [32, 64, 128, 256]): one BasicBlock per stage, each with a 1x1
    ``downsample`` Sequential (conv, BN) since every stage changes width."""
    keys = {**_conv("conv1", 32, 3, 3), **_bn("bn1", 32), **_linear("fc", 100, 256)}
    for stage, (inp, out) in enumerate([(32, 64), (64, 128), (128, 256)], start=1):
        p = f"layer{stage}.0"
        keys |= {**_conv(f"{p}.conv1", out, inp, 3), **_bn(f"{p}.bn1", out), **_conv(f"{p}.conv2", out, out, 3),
                 **_bn(f"{p}.bn2", out), **_conv(f"{p}.downsample.0", out, inp, 1), **_bn(f"{p}.downsample.1", out)}
    return keys


def reference_wrn_16_2() -> Shapes:
    """RepDistiller WideResNet(16, widen 2): NetworkBlocks ``blockK.layer`` of 2 pre-activation blocks;
    the first has ``convShortcut`` (width changes in every stage), the second none; final ``bn1``."""
    keys = {**_conv("conv1", 16, 3, 3), **_bn("bn1", 128), **_linear("fc", 100, 128)}
    for stage, (inp, out) in enumerate([(16, 32), (32, 64), (64, 128)], start=1):
        for i, width_in in enumerate([inp, out]):
            p = f"block{stage}.layer.{i}"
            keys |= {**_bn(f"{p}.bn1", width_in), **_conv(f"{p}.conv1", out, width_in, 3),
                     **_bn(f"{p}.bn2", out), **_conv(f"{p}.conv2", out, out, 3)}
        keys |= _conv(f"block{stage}.layer.0.convShortcut", out, inp, 1)
    return keys


def reference_vgg8() -> Shapes:
    """RepDistiller vgg8_bn: ``blockK`` = Sequential(conv3x3 with bias, BN) (trailing ReLU dropped),
    parameter-free pools, ``classifier`` Linear(512, classes)."""
    keys = _linear("classifier", 100, 512)
    for k, (inp, out) in enumerate([(3, 64), (64, 128), (128, 256), (256, 512), (512, 512)]):
        keys |= {**_conv(f"block{k}.0", out, inp, 3, bias=True), **_bn(f"block{k}.1", out)}
    return keys


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_zoo_names_are_the_reference_names():
    assert set(ZOO) == set(PARAMS_100)
    assert len(ZOO) == 21


@pytest.mark.parametrize("name", ["resnet8x4", "resnet32x4", "wrn_16_2", "vgg8"])
def test_published_parameter_counts(name):
    assert count_params(ZOO[name](num_classes=100)) == PARAMS_100[name]


def test_parameter_table():
    """Every count at 100 classes; run with -s to see the table."""
    rows = [(name, count_params(factory(num_classes=100))) for name, factory in ZOO.items()]
    print("\nmodel          params@100")
    for name, n in rows:
        print(f"{name:<14s} {n:>11,}")
    assert dict(rows) == PARAMS_100


@pytest.mark.parametrize("name, expected", [("resnet8x4", reference_resnet8x4), ("wrn_16_2", reference_wrn_16_2),
                                            ("vgg8", reference_vgg8)])
def test_state_dict_keys_and_shapes_match_reference(name, expected):
    """Same names, same shapes, same buffers: a RepDistiller checkpoint loads with strict=True."""
    state = ZOO[name](num_classes=100).state_dict()
    want = expected()
    assert set(state) == set(want), (sorted(set(state) - set(want)), sorted(set(want) - set(state)))
    assert {k: tuple(v.shape) for k, v in state.items()} == want
    fresh = ZOO[name](num_classes=100)
    fresh.load_state_dict({k: torch.zeros(s) for k, s in want.items()}, strict=True)


@pytest.mark.parametrize("name", list(PARAMS_100))
@pytest.mark.parametrize("num_classes", [10, 100])
def test_forward_backward_every_model(name, num_classes):
    torch.manual_seed(0)
    model = ZOO[name](num_classes=num_classes)
    model.train()
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    grad = _first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(PARAMS_100))
def test_one_channel_input_and_28px(name):
    """in_channels=1 changes only the first conv; adaptive pooling lets 28x28 (MNIST-size) through."""
    model = ZOO[name](num_classes=10, in_channels=1).eval()
    assert _first_conv(model).in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    rgb = count_params(ZOO[name](num_classes=10))
    assert rgb - count_params(model) == 2 * _first_conv(model).weight[:, 0].numel()


@pytest.mark.parametrize("name, stage, shape", [
    ("resnet8x4", "layer3", (2, 256, 8, 8)), ("wrn_16_2", "block3", (2, 128, 8, 8)),
    ("vgg8", "block4", (2, 512, 4, 4)), ("MobileNetV2", "blocks.6", (2, 160, 2, 2)),
    ("ShuffleV1", "layer3", (2, 960, 4, 4)), ("ShuffleV2", "layer3", (2, 464, 4, 4)),
])
def test_stage_modules_can_be_hooked(name, stage, shape):
    model = ZOO[name]().eval()
    seen = []
    model.get_submodule(stage).register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert seen == [torch.Size(shape)]


def test_create_model_and_registry():
    model = create_model("resnet8x4", num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    described = list_models()
    for name in ZOO:
        assert name in described and described[name]
    assert "3 stages of basic blocks" in described["resnet20"]
    with pytest.raises(ConfigError):
        create_model("resnet8x4", not_a_kwarg=1)


def test_kdistill_models_lists_the_zoo_with_counted_parameters():
    from kdistill.cli import main

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["models"]) == 0
    lines = {line.split()[0]: line for line in out.getvalue().splitlines() if line.strip()}
    for name, count in (("resnet8x4", "1,233,540"), ("resnet32x4", "7,433,860"),
                        ("wrn_16_2", "703,284"), ("vgg8", "3,965,028")):
        assert f"({count} params at 100 classes)" in lines[name]
    assert "(67,786 params at 10 classes)" in lines["spec-teacher"]
