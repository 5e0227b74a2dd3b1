"""Teachers you bring (PyTorch checkpoints, their own normalisation, used as they are) and the
recipe pieces of the CIFAR-100 protocol (SGD options, multistep, warm-up, presets)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from kdistill.checkpoint import load_teacher_weights, read_weights
from kdistill.cli import main
from kdistill.config import load_config
from kdistill.data import Images, normalize
from kdistill.engine import Distiller, fit, make_optimizer, make_scheduler
from kdistill.errors import CheckpointError
from kdistill.models import create_model

from test_rgb_data import colour_images


@pytest.fixture
def cifar_npz(tmp_path):
    """A CIFAR-shaped npz: 3x32x32 colour images, ten classes (learnable, see colour_images)."""
    (tx, ty), (sx, sy) = colour_images(96, 5), colour_images(32, 6)
    path = tmp_path / "cifar-shaped.npz"
    np.savez(path, x_train=tx, y_train=ty, x_test=sx, y_test=sy)
    return path


def repdistiller_checkpoint(path, model) -> None:
    """What RepDistiller's train_teacher.py saves: {'epoch', 'model', 'best_acc', 'optimizer'},
    the state_dict taken from a DataParallel model (keys prefixed 'module.')."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9).state_dict()
    torch.save({"epoch": 240, "model": state, "best_acc": torch.tensor(79.4),
                "optimizer": optimizer}, path)


def test_repdistiller_checkpoint_is_the_teacher_as_it_was(cifar_npz, tmp_path):
    torch.manual_seed(3)
    original = create_model("resnet8x4", num_classes=10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so buffers must load too
        for m in original.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    checkpoint = tmp_path / "ckpt_epoch_240.pth"
    repdistiller_checkpoint(checkpoint, original)
    out = tmp_path / "run"
    assert main(["run", "--quiet", "--out", str(out), f"data.name={cifar_npz}",
                 "teacher.model=resnet8x4", f"teacher.weights={checkpoint}", "teacher.epochs=0",
                 "student.model=mlp:auto-32-10", "student.epochs=1", "bench.enabled=false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    teacher = metrics["models"]["teacher"]
    assert teacher["trained_here"] is False and teacher["history"] == []
    assert "The teacher was not trained here" in (out / "report.md").read_text()
    loaded = create_model("resnet8x4", num_classes=10).eval()
    loaded.load_state_dict(read_weights(out / "teacher.safetensors")[0])
    x = torch.randn(8, 3, 32, 32)
    assert torch.equal(loaded(x), original(x))
    # its accuracy is measured by the run, on the data's normalisation
    data = np.load(cifar_npz)
    test = Images(torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"]),
                  metrics["dataset"]["mean"], metrics["dataset"]["std"])
    with torch.no_grad():
        accuracy = (original(test.inputs(slice(None))).argmax(1) == test.labels).float().mean()
    assert teacher["test_accuracy"] == pytest.approx(float(accuracy))


def test_checkpoint_needing_pickled_code_is_refused(tmp_path, cifar_npz, capsys):
    model = create_model("resnet8x4", num_classes=10)
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "hook": os.system}, bad)
    with pytest.raises(CheckpointError, match=r"posix\.system.*refused"):
        load_teacher_weights(bad, model)
    code = main(["run", "--quiet", "--out", str(tmp_path / "run"), f"data.name={cifar_npz}",
                 "teacher.model=resnet8x4", f"teacher.weights={bad}", "teacher.epochs=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "arbitrary pickled objects" in err[0]
    assert not marker.exists()
    # plain state_dicts under each customary key, with or without DDP's prefix
    for key in ("state_dict", "model_state_dict", None):
        path = tmp_path / f"{key}.pt"
        state = model.state_dict()
        torch.save(state if key is None else {key: {f"module.{k}": v for k, v in state.items()}},
                   path)
        target = create_model("resnet8x4", num_classes=10)
        load_teacher_weights(path, target)
        assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), state.values()))


def test_a_teacher_with_its_own_normalisation_sees_the_same_pixels():
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 8 * 8, 4)

        def forward(self, x):
            seen.append(x.clone())
            return self.fc(x.flatten(1))

    from kdistill.data.batches import renormalize

    pixels = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    data = Images(pixels, torch.arange(16) % 4, (0.5,), (0.5,))
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    student, teacher = Spy(), Spy()
    fit(Distiller(student, teacher, teacher_inputs=renormalize((0.5, 0.5), imagenet)), data,
        epochs=1, batch_size=16, lr=1e-3, seed=0, progress=False)
    student_x, teacher_x = seen
    assert torch.allclose(teacher_x * torch.tensor(imagenet[1]).view(1, 3, 1, 1)
                          + torch.tensor(imagenet[0]).view(1, 3, 1, 1),
                          student_x * 0.5 + 0.5, atol=1e-6)
    # the teacher's input is its own Normalize of the student's pixels
    pixels_seen = ((student_x * 0.5 + 0.5) * 255).round().to(torch.uint8)
    assert torch.allclose(teacher_x, normalize(pixels_seen, *imagenet), atol=1e-5)


def test_sgd_options_and_multistep_follow_repdistiller():
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = make_optimizer("sgd", params, 0.05, 5e-4, momentum=0.9, nesterov=False)
    assert opt.defaults["nesterov"] is False and opt.defaults["momentum"] == 0.9
    steps = 3
    scheduler = make_scheduler("multistep", opt, 10 * steps, steps, [2, 4], 0.1)
    lrs = []
    for epoch in range(1, 7):
        lrs.append(opt.param_groups[0]["lr"])
        for _ in range(steps):
            opt.step()
            scheduler.step()
    # RepDistiller: lr x 0.1 ** (number of milestones m with epoch > m)
    assert lrs == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005])


def test_warmup_ramps_the_distillation_terms_only():
    torch.manual_seed(0)
    student = torch.nn.Linear(4, 3)
    teacher = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    plain = Distiller(student, teacher, "dkd", temperature=4.0)
    ramped = Distiller(student, teacher, "dkd", temperature=4.0, warmup_epochs=4)
    _, full = plain.forward_train(x, y, torch.arange(8))
    for epoch, factor in ((1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)):
        ramped.set_epoch(epoch)
        _, terms = ramped.forward_train(x, y, torch.arange(8))
        assert torch.equal(terms["ce"], full["ce"])
        assert torch.allclose(terms["tckd"], factor * full["tckd"])
        assert torch.allclose(terms["nckd"], factor * full["nckd"])


def test_cifar_preset_is_the_whole_protocol(capsys):
    assert main(["run", "--preset", "cifar100-resnet32x4-resnet8x4", "--print-config"]) == 0
    printed = capsys.readouterr().out
    cfg = load_config("cifar100-resnet32x4-resnet8x4")
    for spec, model in ((cfg.teacher, "resnet32x4"), (cfg.student, "resnet8x4")):
        assert (spec.model, spec.epochs, spec.batch_size, spec.optimizer, spec.lr, spec.momentum,
                spec.weight_decay, spec.schedule, spec.milestones, spec.gamma) == (
            model, 240, 64, "sgd", 0.05, 0.9, 5e-4, "multistep", [150, 180, 210], 0.1)
    assert (cfg.data.name, cfg.data.crop_padding, cfg.data.hflip) == ("cifar100", 4, True)
    assert cfg.data.mean == [0.5071, 0.4867, 0.4408] and cfg.data.std == [0.2675, 0.2565, 0.2761]
    assert (cfg.distill.loss, cfg.distill.temperature, cfg.distill.alpha) == ("hinton", 4.0, 0.9)
    assert "milestones" in printed and "resnet32x4" in printed and "crop_padding: 4" in printed


def test_cifar_preset_runs_end_to_end_on_a_tiny_cifar_shaped_set(cifar_npz, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--quiet", "--preset", "cifar100-resnet32x4-resnet8x4", "--out", str(out),
                 f"data.name={cifar_npz}", "data.mean=null", "data.std=null",
                 "data.train_subset=64", "teacher.epochs=2", "student.epochs=2",
                 "teacher.milestones=[1]", "student.milestones=[1]",
                 "bench.enabled=false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    for role in ("teacher", "student", "control"):
        entry = metrics["models"][role]
        assert len(entry["history"]) == 2 and entry["best_test_epoch"] in (1, 2)
    assert "Best test-epoch accuracy, selected on the test set" in (out / "report.md").read_text()


def test_channels_last_trains_the_same_model(cifar_npz, tmp_path):
    """channels_last changes the memory layout (and the convolution kernels), not the result:
    the same run in both layouts ends within float rounding, and its weights load either way."""
    import kdistill

    runs = []
    for layout in ("false", "true"):
        runs.append(kdistill.run("mnist-spec", out=tmp_path / f"cl-{layout}", quiet=True, overrides=[
            f"data.name={cifar_npz}", "teacher.model=resnet8", "teacher.epochs=1",
            "student.model=resnet8", "student.epochs=1", "control=false", "bench.enabled=false",
            "teacher.optimizer=sgd", "student.optimizer=sgd",  # Adam would magnify the
            "teacher.lr=0.01", "student.lr=0.01",              # rounding in tiny gradients
            f"channels_last={layout}"]))
    conv = [run.models["student"].conv1.weight for run in runs]
    assert not conv[0].is_contiguous(memory_format=torch.channels_last)
    assert conv[1].is_contiguous(memory_format=torch.channels_last)
    weights = [read_weights(run.out_dir / "student.safetensors")[0] for run in runs]
    for key, value in weights[0].items():
        if value.is_floating_point():
            assert torch.allclose(value, weights[1][key], atol=1e-4), key
    accuracies = [run.metrics["models"]["student"]["test_accuracy"] for run in runs]
    assert abs(accuracies[0] - accuracies[1]) <= 1 / 32  # at most one of 32 test images
