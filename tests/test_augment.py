import pytest
import torch

from kdistill.data.augment import (Augment, draw_offsets, gaussian_blur, random_erase,
                                   random_warp, shift)
from kdistill.engine import Distiller, Images, fit, predict_logits
from kdistill.models import ConvNet, count_params, create_model


def random_shifts(n: int, pixels: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image offsets (dy, dx), each [n, 1], drawn one batch at a time."""
    dy, dx = draw_offsets(n, pixels, generator)
    return dy, dx


def random_translate(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by its own random offset in [-pixels, pixels], zero filled."""
    if pixels == 0:
        return images
    return shift(images, *random_shifts(len(images), pixels, generator), pixels)


def test_translate_shifts_each_image_within_bounds():
    images = torch.zeros(200, 28, 28, dtype=torch.uint8)
    images[:, 13, 13] = 255  # one bright pixel in the middle
    out = random_translate(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    rows, cols = (out == 255).nonzero()[:, 1], (out == 255).nonzero()[:, 2]
    assert len(rows) == 200  # each image keeps its pixel, moved by at most 2
    assert rows.min() == 11 and rows.max() == 15 and cols.min() == 11 and cols.max() == 15
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 25  # all 5 x 5 offsets occur


@pytest.mark.parametrize("pixels", [1, 2, 3])
def test_shift_is_a_crop_of_the_zero_padded_image(pixels):
    images = torch.randint(1, 256, (16, 9, 7), dtype=torch.uint8)  # not square
    dy, dx = random_shifts(16, pixels, torch.Generator().manual_seed(pixels))
    padded = torch.nn.functional.pad(images, (pixels,) * 4)
    expected = torch.stack([padded[i, y:y + 9, x:x + 7]
                            for i, (y, x) in enumerate(zip(dy.view(-1).tolist(), dx.view(-1).tolist()))])
    assert torch.equal(shift(images, dy, dx, pixels), expected)


def test_translate_is_seeded_and_zero_filled():
    images = torch.full((4, 6, 6), 7, dtype=torch.uint8)
    a = random_translate(images, 3, torch.Generator().manual_seed(1))
    b = random_translate(images, 3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0, 7}
    assert torch.equal(random_translate(images, 0, torch.Generator()), images)


def test_affine_is_identity_at_zero_and_seeded():
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    same = random_warp(images, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert same.dtype == torch.float32 and torch.allclose(same, images.float(), atol=1e-3)
    augment = Augment(translate=2, rotate=15, scale=0.1, elastic=34)
    (a, view), (b, _) = (augment(images, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, images.float()) and view is None
    assert not Augment() and Augment(elastic=1)


def test_affine_rotates_and_zooms_within_its_ranges():
    bar = torch.zeros(500, 28, 28, dtype=torch.uint8)
    bar[:, 13:15, 4:24] = 255  # a horizontal bar through the centre
    out = random_warp(bar, 30.0, 0.0, torch.Generator().manual_seed(0))
    # the bar's slope, from its pixel mass: |angle| <= 30 degrees, and angles of both signs occur
    ys, xs = torch.meshgrid(torch.arange(28.0) - 13.5, torch.arange(28.0) - 13.5, indexing="ij")
    w = out / out.sum((1, 2), keepdim=True)
    cov_xy, var_x = (w * xs * ys).sum((1, 2)), (w * xs * xs).sum((1, 2))
    angles = torch.rad2deg(torch.atan(cov_xy / var_x))
    assert angles.abs().max() <= 31 and angles.min() < -20 and angles.max() > 20
    mass = random_warp(bar, 0.0, 0.2, torch.Generator().manual_seed(0)).sum((1, 2)) / bar.float().sum((1, 2))
    # zooming by z scales a centred bar's area by about z^2, z in [0.8, 1.2]
    assert 0.6 < mass.min() < 0.75 and 1.3 < mass.max() < 1.5


def test_gaussian_blur_is_normalised_and_smooths():
    x = torch.zeros(1, 1, 41, 41)
    x[0, 0, 20, 20] = 1.0
    y = gaussian_blur(x, 4.0)
    assert abs(y.sum().item() - 1.0) < 1e-5  # an interior impulse keeps its mass
    # the impulse response is the 2-D Gaussian: centre 1 / (2 pi sigma^2), 1/e^(1/2) one sigma away
    assert abs(y[0, 0, 20, 20].item() - 1 / (2 * torch.pi * 16)) < 1e-4
    assert abs(y[0, 0, 20, 24].item() / y[0, 0, 20, 20].item() - torch.e ** -0.5) < 1e-3


def test_elastic_moves_pixels_smoothly_by_a_few_pixels():
    dot = torch.zeros(300, 28, 28, dtype=torch.uint8)
    dot[:, 12:16, 12:16] = 255  # a 4 x 4 square in the middle
    out = random_warp(dot, 0.0, 0.0, torch.Generator().manual_seed(0), elastic=34)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = out / out.sum((1, 2), keepdim=True)
    shift = torch.hypot((w * ys).sum((1, 2)) - 13.5, (w * xs).sum((1, 2)) - 13.5)
    # Simard's alpha = 34, sigma = 4 moves the square's centre by about 1-2 px, never by 6
    assert 0.5 < shift.median() < 3 and shift.max() < 6
    mass = out.sum((1, 2)) / dot.float().sum((1, 2))  # local stretching changes the area...
    assert 0.3 < mass.min() and mass.max() < 3  # ...but never erases or floods the square
    # the field is smooth: the square stays one blob (no pixel far from the others lights up)
    spread = ((w * ((ys - (w * ys).sum((1, 2), keepdim=True)) ** 2 +
                    (xs - (w * xs).sum((1, 2), keepdim=True)) ** 2)).sum((1, 2))).sqrt()
    assert spread.max() < 4


def test_erase_zeroes_one_clipped_square_per_image():
    images = torch.full((400, 28, 28), 9, dtype=torch.uint8)
    out = random_erase(images, 10, torch.Generator().manual_seed(0))
    zeroed = (out == 0)
    assert set(out.unique().tolist()) == {0, 9}
    counts = zeroed.sum((1, 2))
    assert counts.max() == 100 and counts.min() >= 25  # whole square, or clipped to >= 5 x 5
    rows, cols = zeroed.any(2), zeroed.any(1)  # the zeros form one axis-aligned rectangle
    assert torch.equal(counts, rows.sum(1) * cols.sum(1))
    assert rows[:, 0].any() and rows[:, 27].any() and (counts == 100).float().mean() > 0.3
    assert torch.equal(out, random_erase(images, 10, torch.Generator().manual_seed(0)))
    assert Augment(erase=8) and Augment(translate=1, erase=8).views is None


def test_shift_views_enumerate_every_jittered_image():
    augment = Augment(translate=2)
    assert augment.views == 25 and Augment(translate=2, rotate=5).views is None
    assert Augment().views is None
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    shifted, view = augment(images, torch.Generator().manual_seed(0))
    # the same draws as plain jitter, and each image is exactly its numbered view
    assert torch.equal(shifted, random_translate(images, 2, torch.Generator().manual_seed(0)))
    assert view.shape == (64,) and set(view.tolist()) <= set(range(25))
    for i in range(64):
        assert torch.equal(shifted[i], augment.view(images[i:i + 1], int(view[i]))[0])
    assert torch.equal(augment.view(images, 12), images)  # the middle view is the unshifted one


def test_per_view_teacher_logits_train_exactly_like_a_live_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    data = Images(torch.randint(0, 255, (96, 28, 28), dtype=torch.uint8), torch.arange(96) % 10)
    augment = Augment(translate=1)
    table = torch.stack([predict_logits(teacher, Images(augment.view(data.images, v),
                                                        data.labels)) for v in range(9)])
    students = []
    for source in (teacher, table):
        torch.manual_seed(1)
        student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
        fit(Distiller(student, source, "hinton", temperature=4.0, alpha=0.5), data, epochs=3,
            batch_size=32, lr=1e-2, seed=0, augment=augment, progress=False)
        students.append(student[1].weight.detach())
    assert torch.allclose(students[0], students[1], atol=1e-5)
    # a table that does not match the augmentation is refused
    with pytest.raises(ValueError, match="per-view"):
        fit(Distiller(student, table), data, epochs=1, batch_size=32, lr=1e-2, seed=0,
            augment=Augment(translate=2), progress=False)


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
    fit(Distiller(student, teacher), data, epochs=1, batch_size=8, lr=1e-3, seed=0,
        augment=Augment(translate=2), progress=False)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])  # student's input, then teacher's
    assert not torch.equal(seen[0], data.inputs(slice(None)))


def test_cnn_teacher_shapes():
    net = create_model("cnn", width=8)
    assert isinstance(net, ConvNet) and net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert count_params(create_model("hinton-teacher")) == 784 * 1200 + 1200 * 1200 + 1200 * 10 + 2410


@pytest.mark.parametrize("translate, epochs, table", [(2, 2, False), (1, 9, True)])
def test_run_with_jitter_tables_the_teacher_when_views_are_few(idx_dir, tmp_path, translate,
                                                                epochs, table):
    import json

    from kdistill.cli import main

    from conftest import QUICK

    out = tmp_path / "run"
    assert main(["run", "--quiet", "--out", str(out), f"data.name={idx_dir}", *QUICK,
                 "bench.enabled=false", f"data.translate={translate}", f"student.epochs={epochs}",
                 "distill.loss=hinton", "distill.alpha=0.9", "distill.temperature=4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # 25 views cost more teacher passes than 2 live epochs; 9 views cost no more than 9 epochs
    assert ("teacher_logits_seconds" in metrics["timings"]) == table
    assert metrics["models"]["student"]["test_accuracy"] > 0.5


def test_an_epochs_shifts_drawn_at_once_equal_per_batch_draws():
    """fit() draws a whole epoch's offsets in one call: the values of drawing batch by batch."""
    sizes = [64, 64, 17]
    parts = Augment(2).draw_shifts(sizes, torch.Generator().manual_seed(4))
    per_batch = torch.Generator().manual_seed(4)
    for size, part in zip(sizes, parts):
        dy, dx = random_shifts(size, 2, per_batch)
        assert part.shape == (2, size, 1)
        assert torch.equal(part[0], dy) and torch.equal(part[1], dx)
