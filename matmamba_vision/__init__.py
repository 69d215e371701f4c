"""MatMamba-Vision: Matryoshka state-space vision models for timm.

Importing this package registers the models with timm::

    import timm, matmamba_vision
    model = timm.create_model("matmamba_vision_35m_patch16_224", pretrained=True)
    with model.granularity(128):
        logits = model(images)
"""

from .elastic import count_flops, count_params, extract_submodel
from .export import export_model
from .layers import use_backend
from .models import MatMambaVision, checkpoint_filter_fn, convert_official_state_dict
from .ops import SSD_BACKENDS, ssd_scan
from .selection import select_submodel

__version__ = "0.1.0"
__all__ = [
    "MatMambaVision",
    "checkpoint_filter_fn",
    "convert_official_state_dict",
    "extract_submodel",
    "count_params",
    "count_flops",
    "export_model",
    "select_submodel",
    "use_backend",
    "SSD_BACKENDS",
    "ssd_scan",
]
