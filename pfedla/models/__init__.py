from pfedla.models.cnn import MODEL_NAMES, build_model
from pfedla.models.layers import layer_groups

__all__ = ["MODEL_NAMES", "build_model", "layer_groups"]
