"""Distillation objectives: pure functions in a registry (``kdistill losses`` lists them)."""
from .registry import (bind_loss, feature_kind, get_loss, is_feature_loss, list_losses,
                       register_feature_loss, register_loss)
# importing logits and features registers their objectives
from .logits import dkd, hinton, kl, mse, soft_kl, zscore
from .hooks import FeatureHooks, default_feature_layer
from .features import FeatureDistillation, at_loss, attention_map, fitnets_loss

__all__ = ["FeatureDistillation", "FeatureHooks", "at_loss", "attention_map", "bind_loss",
           "default_feature_layer", "dkd", "feature_kind", "fitnets_loss", "get_loss", "hinton",
           "is_feature_loss", "kl", "list_losses", "mse", "register_feature_loss", "register_loss",
           "soft_kl", "zscore"]
