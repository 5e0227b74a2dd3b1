"""Training steps replayed as CUDA graphs give the same training as eager steps. Skipped without
a CUDA GPU; on one: ``python -m pytest tests/test_cuda_graph.py``."""
import pytest
import torch

from kdistill import cuda_graph
from kdistill.data import load_dataset
from kdistill.data.augment import Augment
from kdistill.engine import Distiller, Images, fit, predict_views
from kdistill.models import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def captures(monkeypatch) -> list[int]:
    """Counts the graphs recorded."""
    count: list[int] = []
    capture = cuda_graph.GraphedStep._capture

    def counted(self, inputs):
        count.append(1)
        capture(self, inputs)

    monkeypatch.setattr(cuda_graph.GraphedStep, "_capture", counted)
    return count


def _train(train: Images, model: str, graphs: bool, teacher=None, augment=Augment(),
           schedule: str = "constant", micro_batches: int = 1
           ) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(0)
    student = create_model(model).cuda()
    # 512 images in batches of 48: 10 replayed steps and a smaller, eager last step per epoch
    history = fit(Distiller(student, teacher, "hinton", temperature=4.0, alpha=0.9), train,
                  epochs=3, batch_size=48, lr=1e-3, seed=0, schedule=schedule, augment=augment,
                  progress=False, cuda_graphs=graphs, micro_batches=micro_batches)
    return student, history


@pytest.mark.parametrize("model,schedule,translate,micro_batches", [
    ("mlp:784-32-10", "constant", 0, 1),
    ("mlp:784-32-10", "cosine", 1, 1),   # the lr reaches the graph through a tensor
    ("spec-teacher", "constant", 1, 1),  # convolutions
    ("mlp:784-32-10", "constant", 1, 3),  # one graph holds all three micro-batches
])
def test_graphed_steps_train_like_eager_steps(idx_dir, captures, model, schedule, translate,
                                              micro_batches):
    ds = load_dataset(str(idx_dir))
    train = Images(ds.train_images, ds.train_labels).to("cuda")
    augment = Augment(translate)
    teacher = None
    if translate:  # a student of a per-view teacher table, as `mnist-best` trains one
        torch.manual_seed(1)
        teacher = predict_views(create_model("mlp:784-16-10").cuda(), train, augment)
    eager, eager_history = _train(train, model, False, teacher, augment, schedule, micro_batches)
    assert not captures
    graphed, graphed_history = _train(train, model, True, teacher, augment, schedule,
                                      micro_batches)
    assert len(captures) == 1
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-5), name
    for a, b in zip(eager_history, graphed_history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a.keys() == b.keys()


def test_graphed_dropout_training_learns(idx_dir, captures):
    ds = load_dataset(str(idx_dir))
    train = Images(ds.train_images, ds.train_labels).to("cuda")
    torch.manual_seed(0)
    model = create_model("mlp:784-64-10", dropout=0.5).cuda()
    history = fit(Distiller(model), train, epochs=4, batch_size=64, lr=1e-3, seed=0,
                  progress=False)
    assert len(captures) == 1
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
