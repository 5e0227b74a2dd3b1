"""kdistill: train a teacher, distill it into a small student, and measure what it gained.

    import kdistill
    result = kdistill.run("mnist-spec", out="runs/demo", overrides=["student.epochs=3"])
    print(result.metrics["models"]["student"]["test_accuracy"])
"""
__version__ = "0.1.0"

from .config import RunConfig, list_presets, load_config  # noqa: E402
from .data import Dataset, list_datasets, load_dataset  # noqa: E402
from .engine import Distiller, evaluate, fit  # noqa: E402
from .errors import KdistillError  # noqa: E402
from .losses import list_losses  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .pipeline import Run, run  # noqa: E402

__all__ = ["Dataset", "Distiller", "KdistillError", "Run", "RunConfig", "create_model", "evaluate", "fit",
           "list_datasets", "list_losses", "list_models", "list_presets", "load_config",
           "load_dataset", "run", "__version__"]
