"""Distillation objectives: pure functions in a registry (``kdistill losses`` lists them)."""
from .registry import bind_loss, get_loss, list_losses, register_loss
from . import logits  # noqa: F401  (registers the logit losses)
from .logits import hinton, kl, soft_kl

__all__ = ["bind_loss", "get_loss", "hinton", "kl", "list_losses", "register_loss", "soft_kl"]
