"""Models: the MNIST tutorial's nets, an MLP builder, the CIFAR zoo and a registry of names."""
from .nets import MLP, ConvNet, Ensemble, StudentNet, TeacherNet
from .registry import count_params, create_model, list_models, register_model
from . import cifar  # noqa: E402,F401  (registers the CIFAR zoo)

__all__ = ["MLP", "ConvNet", "Ensemble", "StudentNet", "TeacherNet", "count_params", "create_model", "list_models",
           "register_model"]
