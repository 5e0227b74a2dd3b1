import torch
from torch import nn

from kdistill.data import load_dataset
from kdistill.data.batches import rows
from kdistill.engine import Distiller, Images, evaluate, fit, micro_slices, predict_logits
from kdistill.models import create_model


def _data(idx_dir):
    ds = load_dataset(str(idx_dir))
    return Images(ds.train_images, ds.train_labels), Images(ds.test_images, ds.test_labels)


def _train(train, test, teacher=None, seed=0, epochs=2):
    torch.manual_seed(seed)
    student = create_model("mlp:784-32-10")
    history = fit(Distiller(student, teacher, "hinton", temperature=4.0, alpha=0.9), train,
                  epochs=epochs, batch_size=32, lr=1e-3, seed=seed, evaluate_on=test, progress=False)
    return student, history


def test_cross_entropy_training_learns(idx_dir):
    train, test = _data(idx_dir)
    student, history = _train(train, test, epochs=3)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert evaluate(student, test)["accuracy"] > 0.9


def test_same_seed_same_weights_and_metrics(idx_dir):
    train, test = _data(idx_dir)
    a, ha = _train(train, test, seed=5)
    b, hb = _train(train, test, seed=5)
    c, _ = _train(train, test, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert [h["test_accuracy"] for h in ha] == [h["test_accuracy"] for h in hb]
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


def test_cached_teacher_logits_equal_running_the_teacher(idx_dir):
    """Caching the frozen teacher's logits is exactly equivalent to re-running it per batch."""
    train, test = _data(idx_dir)
    torch.manual_seed(1)
    teacher = create_model("mlp:784-64-10", dropout=0.5)  # dropout: eval mode must be enforced
    fit(Distiller(teacher), train, epochs=1, batch_size=32, lr=1e-3, seed=1, progress=False)
    live, _ = _train(train, test, teacher=teacher)
    cached, _ = _train(train, test, teacher=predict_logits(teacher, train))
    assert all(torch.equal(p, q) for p, q in zip(live.state_dict().values(), cached.state_dict().values()))
    assert all(not p.requires_grad for p in teacher.parameters())


def test_distiller_keeps_teacher_in_eval_mode():
    d = Distiller(create_model("mlp:784-8-10"), create_model("mlp:784-8-10", dropout=0.5))
    d.train()
    assert d.student.training and not d.teacher.training
    assert d.get_learnable_parameters() == list(d.student.parameters())


def test_distillation_terms_are_logged(idx_dir):
    train, test = _data(idx_dir)
    teacher_logits = torch.randn(len(train), 10)
    _, history = _train(train, test, teacher=teacher_logits, epochs=1)
    assert {"loss_kd", "loss_ce"} <= set(history[0])
    assert abs(history[0]["loss_kd"] + history[0]["loss_ce"] - history[0]["train_loss"]) < 1e-6


def test_micro_slices_are_sized_like_tensor_split():
    for n, k in [(64, 2), (10, 3), (32, 5), (1, 3), (7, 7)]:
        sizes = [len(t) for t in torch.arange(n).tensor_split(k) if len(t)]
        assert [s.stop - s.start for s in micro_slices(n, k)] == sizes
        assert micro_slices(n, k)[-1].stop == n


def test_micro_batches_take_the_same_steps(idx_dir):
    """Gradients of micro-batches, each weighted by its share, add up to the batch's: the same
    training up to float rounding and the same logged losses, with uneven micro-batches (32 in
    3) and a last batch of one example (97 = 3 x 32 + 1)."""
    train, _ = _data(idx_dir)
    train = train.subset(slice(0, 97))
    table = torch.randn(len(train), 10, generator=torch.Generator().manual_seed(5)) * 3

    def run(micro_batches: int):
        torch.manual_seed(0)
        student = create_model("mlp:784-32-10")
        # SGD: its step is linear in the gradient, so rounding differences stay rounding-sized
        # (Adam divides by sqrt(v) and turns a near-zero gradient's rounding into an lr step)
        history = fit(Distiller(student, table, "hinton", temperature=4.0, alpha=0.9), train,
                      epochs=2, batch_size=32, lr=0.05, seed=0, optimizer="sgd", progress=False,
                      micro_batches=micro_batches)
        return student, history

    (one, h1), (three, h3) = run(1), run(3)
    for p, q in zip(one.parameters(), three.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    assert not torch.equal(one.fc1.weight, create_model("mlp:784-32-10").fc1.weight)
    for a, b in zip(h1, h3):
        for key in ("train_loss", "loss_kd", "loss_ce"):
            assert abs(a[key] - b[key]) < 1e-5 * abs(a[key]), key


def test_evaluate_confusion_and_per_class():
    class Fixed(nn.Module):
        def forward(self, x):  # predicts class = first pixel's value
            return nn.functional.one_hot(x.flatten(1)[:, 0].round().long(), 3).float()

    images = torch.tensor([0, 1, 2, 2, 1], dtype=torch.uint8).reshape(5, 1, 1).expand(5, 1, 1)
    labels = torch.tensor([0, 1, 2, 1, 0])
    result = evaluate(Fixed(), Images(images, labels, mean=0.0, std=1 / 255), batch_size=2)
    assert result["accuracy"] == 3 / 5
    assert result["confusion"] == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert result["per_class_accuracy"] == [0.5, 0.5, 1.0]


def test_rows_matches_indexing():
    """The fast row gather used for every batch is plain ``tensor[index]`` in value."""
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    for index in (torch.randperm(50)[:17], torch.randperm(50, dtype=torch.int32)[:5],
                  torch.arange(50) % 3 == 0, slice(4, 9), torch.tensor([2, 2, 7])):
        assert torch.equal(rows(images, index), images[index])


class _Sizes(nn.Module):
    """Records the batch sizes it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.seen = nn.Linear(4, 3), []

    def forward(self, x):
        self.seen.append(len(x))
        return self.linear(x.flatten(1))


def test_forward_passes_default_to_cpu_sized_batches():
    """Without a batch size, logits and evaluation take 64 at a time on a CPU (faster per image
    there than 256); an explicit size (the config's eval_batch_size) wins."""
    data = Images(torch.zeros(150, 1, 2, 2, dtype=torch.uint8), torch.zeros(150, dtype=torch.long))
    model = _Sizes()
    predict_logits(model, data)
    evaluate(model, data)
    assert model.seen == [64, 64, 22] * 2
    model.seen.clear()
    predict_logits(model, data, batch_size=256)
    assert model.seen == [150]


def test_eval_batch_size_config_defaults_by_device():
    from kdistill.config import load_config

    assert load_config().eval_batch_size is None
    assert load_config(overrides=["eval_batch_size=32"]).eval_batch_size == 32
