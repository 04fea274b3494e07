"""Task models, their one config dataclass and the model registry.

    from coupled_mamba.models import CoupledMambaConfig, create_model, list_models, from_pretrained
    cfg = CoupledMambaConfig(input_dims=[768, 74, 35], modality_names=["text", "audio", "vision"])
    model = create_model("coupled_mamba", cfg)      # any name from list_models()
    y = model([text, audio, vision], mask=masks)    # (B, num_outputs)
"""

from ._base import MultimodalModel, from_pretrained
from ._registry import create_model, list_models, model_entry, register_model
from .config import TASKS, CoupledMambaConfig
from .coupled_mamba import CoupledMambaModel, StreamState
from .cross_attention import CrossAttentionModel

__all__ = [
    "TASKS",
    "CoupledMambaConfig",
    "CoupledMambaModel",
    "CrossAttentionModel",
    "MultimodalModel",
    "StreamState",
    "create_model",
    "from_pretrained",
    "list_models",
    "model_entry",
    "register_model",
]
