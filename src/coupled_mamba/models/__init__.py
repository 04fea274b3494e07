"""Task models, their one config dataclass and the model registry.

    from coupled_mamba.models import CoupledMambaModel, create_model, list_models
    model = create_model("coupled_mamba", input_dims=[768, 74, 35])  # any name from list_models()
    y = model([text, audio, vision], mask=masks)                     # (B, num_outputs)
    model.save_pretrained("ckpt"); model = CoupledMambaModel.from_pretrained("ckpt")
"""

from ._base import MultimodalModel, from_pretrained
from ._registry import create_model, list_models, model_entry, register_model
from .config import TASKS, CoupledMambaConfig
from .coupled_mamba import CoupledMambaModel, StreamState
from .coupled_mamba2 import CoupledMamba2Model
from .cross_attention import CrossAttentionModel

__all__ = [
    "TASKS",
    "CoupledMambaConfig",
    "CoupledMamba2Model",
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
