"""Models: the spec's nets, an MLP builder and a registry of names."""
from .nets import MLP, StudentNet, TeacherNet
from .registry import count_params, create_model, list_models, register_model

__all__ = ["MLP", "StudentNet", "TeacherNet", "count_params", "create_model", "list_models",
           "register_model"]
