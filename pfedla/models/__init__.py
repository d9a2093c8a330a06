from pfedla.models.build import build_model, model_class
from pfedla.models.layers import layer_groups

__all__ = ["build_model", "layer_groups", "model_class"]
