import torch

from kdistill.data.augment import augment, random_affine, random_translate
from kdistill.engine import Distiller, Images, fit
from kdistill.models import ConvNet, count_params, create_model


def test_translate_shifts_each_image_within_bounds():
    images = torch.zeros(200, 28, 28, dtype=torch.uint8)
    images[:, 13, 13] = 255  # one bright pixel in the middle
    out = random_translate(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    rows, cols = (out == 255).nonzero()[:, 1], (out == 255).nonzero()[:, 2]
    assert len(rows) == 200  # each image keeps its pixel, moved by at most 2
    assert rows.min() == 11 and rows.max() == 15 and cols.min() == 11 and cols.max() == 15
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 25  # all 5 x 5 offsets occur


def test_translate_is_seeded_and_zero_filled():
    images = torch.full((4, 6, 6), 7, dtype=torch.uint8)
    a = random_translate(images, 3, torch.Generator().manual_seed(1))
    b = random_translate(images, 3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0, 7}
    assert torch.equal(random_translate(images, 0, torch.Generator()), images)


def test_affine_is_identity_at_zero_and_seeded():
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    same = random_affine(images, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert same.dtype == torch.float32 and torch.allclose(same, images.float(), atol=1e-3)
    a = augment(images, torch.Generator().manual_seed(3), translate=2, rotate=15, scale=0.1)
    b = augment(images, torch.Generator().manual_seed(3), translate=2, rotate=15, scale=0.1)
    assert torch.equal(a, b) and not torch.equal(a, images.float())


def test_affine_rotates_and_zooms_within_its_ranges():
    bar = torch.zeros(500, 28, 28, dtype=torch.uint8)
    bar[:, 13:15, 4:24] = 255  # a horizontal bar through the centre
    out = random_affine(bar, 30.0, 0.0, torch.Generator().manual_seed(0))
    # the bar's slope, from its pixel mass: |angle| <= 30 degrees, and angles of both signs occur
    ys, xs = torch.meshgrid(torch.arange(28.0) - 13.5, torch.arange(28.0) - 13.5, indexing="ij")
    w = out / out.sum((1, 2), keepdim=True)
    cov_xy, var_x = (w * xs * ys).sum((1, 2)), (w * xs * xs).sum((1, 2))
    angles = torch.rad2deg(torch.atan(cov_xy / var_x))
    assert angles.abs().max() <= 31 and angles.min() < -20 and angles.max() > 20
    mass = random_affine(bar, 0.0, 0.2, torch.Generator().manual_seed(0)).sum((1, 2)) / bar.float().sum((1, 2))
    # zooming by z scales a centred bar's area by about z^2, z in [0.8, 1.2]
    assert 0.6 < mass.min() < 0.75 and 1.3 < mass.max() < 1.5


def test_teacher_sees_the_students_augmented_batch():
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x):
            seen.append(x.clone())
            return self.fc(x.flatten(1))

    student, teacher = Spy(), Spy()
    data = Images(torch.randint(0, 255, (8, 28, 28), dtype=torch.uint8), torch.arange(8) % 10)
    fit(Distiller(student, teacher), data, epochs=1, batch_size=8, lr=1e-3, seed=0, translate=2,
        progress=False)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])  # student's input, then teacher's
    assert not torch.equal(seen[0], data.inputs(slice(None)))


def test_cnn_teacher_shapes():
    net = create_model("cnn", width=8)
    assert isinstance(net, ConvNet) and net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert count_params(create_model("hinton-teacher")) == 784 * 1200 + 1200 * 1200 + 1200 * 10 + 2410


def test_run_with_jitter_uses_the_live_teacher(idx_dir, tmp_path):
    import json

    from kdistill.cli import main

    from conftest import QUICK

    out = tmp_path / "run"
    assert main(["run", "--quiet", "--out", str(out), f"data.name={idx_dir}", *QUICK,
                 "bench.enabled=false", "data.translate=2", "distill.loss=hinton",
                 "distill.alpha=0.9", "distill.temperature=4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "teacher_logits_seconds" not in metrics["timings"]  # no cache: inputs change
    assert metrics["models"]["student"]["test_accuracy"] > 0.5
