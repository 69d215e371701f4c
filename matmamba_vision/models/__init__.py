"""The timm model family: configs, registered models, the official-checkpoint filter."""

from .convert import convert_official_state_dict, is_official_layout, unwrap_state_dict
from .matmamba_vision import Granularity, MatMambaBlock, MatMambaVision, checkpoint_filter_fn

__all__ = [
    "Granularity",
    "MatMambaBlock",
    "MatMambaVision",
    "checkpoint_filter_fn",
    "convert_official_state_dict",
    "is_official_layout",
    "unwrap_state_dict",
]
