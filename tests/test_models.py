import textwrap

import pytest
import torch
from torch import nn

from kdistill.bench import count_macs
from kdistill.errors import ConfigError
from kdistill.models import MLP, StudentNet, TeacherNet, count_params, create_model


def test_spec_parameter_counts():
    assert count_params(create_model("spec-teacher")) == 67_786
    assert count_params(create_model("spec-student")) == 101_770
    assert count_params(create_model("mlp:784-128-10")) == 101_770


def test_teacher_forward_is_the_specs_function():
    """Our cropped channels-last conv + ReLU-after-pool computes the spec's relu -> pool on the
    full conv, up to float rounding (the layouts sum in different orders)."""
    torch.manual_seed(0)
    net = TeacherNet()
    x = torch.randn(16, 1, 28, 28, requires_grad=True)
    reference = net.fc2(torch.relu(net.fc1(net.pool(torch.relu(net.conv1(x))).flatten(1))))
    ours = net(x)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    g_ours = torch.autograd.grad(ours.sum(), net.conv1.weight)[0]
    g_ref = torch.autograd.grad(reference.sum(), net.conv1.weight)[0]
    torch.testing.assert_close(g_ours, g_ref)


def test_macs_are_counted_by_flop_counter():
    x = torch.zeros(1, 1, 28, 28)
    assert count_macs(StudentNet(), x) == 784 * 128 + 128 * 10
    # conv on the 24x24 crop: 20*20 outputs x 32 filters x 25 taps, then the two linears
    assert count_macs(TeacherNet(), x) == 20 * 20 * 32 * 25 + 512 * 128 + 128 * 10


def test_mlp_builder_and_dropout_kwarg():
    net = create_model("mlp:784-32-16-10", dropout=0.5)
    assert isinstance(net, MLP) and net.sizes == [784, 32, 16, 10]
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert [n for n, _ in net.named_children() if n.startswith("fc")] == ["fc1", "fc2", "fc3"]


@pytest.mark.parametrize("name, match", [
    ("resnet9000", "unknown model"),
    ("mlp:784-x-10", "bad MLP spec"),
    ("mlp:784", "cannot build"),
    ("no_such_module_xyz:make", "cannot import"),
    ("torch.nn:NoSuchLayer", "has no attribute"),
    ("math:sqrt", "cannot build"),
    ("collections:OrderedDict", "not a torch nn.Module"),
])
def test_bad_model_names(name, match):
    with pytest.raises(ConfigError, match=match):
        create_model(name)


def test_user_model_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        from torch import nn
        def make(width=8, num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(),
                                 nn.Linear(width, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    net = create_model("my_nets:make", width=5)
    assert isinstance(net, nn.Module) and count_params(net) == 784 * 5 + 5 + 5 * 10 + 10
