"""Shared skeleton of every task model: input projection -> encoder -> pooling/fusion head.

Shapes: M modalities, B batch, L length, d_m input width of modality m, d = d_model, O outputs.

Also the save/load format: a directory with ``config.json`` (the config fields plus
``"model_name"``, the registry name) and ``model.safetensors`` (the state dict).
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ..errors import UserInputError
from ..modules._inputs import prepare_inputs
from ..modules.heads import PoolFuseHead
from ..modules.layers import FeatureStandardize, ModalityProjection
from ._registry import create_model, model_entry
from .config import CoupledMambaConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class MultimodalModel(nn.Module):
    """Base class: per-modality input projections, an encoder (set by the subclass as
    ``self.encoder``, whose ``forward_valid(xs, valid)`` maps M (B, L, d) to M (B, L, d)) and a
    :class:`PoolFuseHead`.

    Call: ``model(inputs, mask=None, present=None) -> (B, O)``
        inputs: list/tuple of M tensors (B, L, d_m) or a dict keyed by modality name;
        mask: None, a shared (B, L) bool, or M (B, L) bool (True = valid step, right padding);
        present: (B, M) bool, False for a missing modality.
    Output: raw values (regression) or logits (classification, multilabel), (B, num_outputs).

    Steps that are padding or belong to an absent modality are zeroed in the raw inputs (so NaN or
    garbage there cannot reach any output or gradient) and again after the projection (so the
    encoder sees exactly zero), and they are excluded from pooling and fusion.
    """

    model_name = "multimodal"

    def __init__(self, config: CoupledMambaConfig):
        super().__init__()
        if not isinstance(config, CoupledMambaConfig):
            raise ValueError(f"config: expected a CoupledMambaConfig, got {type(config).__name__}")
        self.config = config
        ranks = config.input_ranks or [0] * config.n_modalities
        self.input_norms = nn.ModuleList(FeatureStandardize(d_m, r)
                                         for d_m, r in zip(config.input_dims, ranks, strict=True))
        self.projections = nn.ModuleList(
            ModalityProjection(norm.out_features, config.proj_hidden, config.d_model,
                               config.norm_eps)
            for norm in self.input_norms
        )
        self.head = PoolFuseHead(
            config.n_modalities, config.d_model, config.num_outputs, pooling=config.pooling,
            fusion=config.fusion, hidden=config.head_hidden, dropout=config.dropout,
        )

    # --- forward -------------------------------------------------------------------------------
    def _prepare(self, inputs, mask, present):
        """Validate (the model's one check of its inputs) and project.

        Returns (projected M x (B, L, d), valid (M, B, L) bool or None); the encoder's
        ``forward_valid`` takes both without checking them again.
        """
        cfg = self.config
        xs, _, _, valid = prepare_inputs(  # valid: (M, B, L) or None
            inputs, mask, present, cfg.modality_names, cfg.input_dims, dtype=self.weight_dtype)
        if valid is not None:
            xs = [torch.where(valid[m][..., None], x, 0.0) for m, x in enumerate(xs)]
        return self.project(xs), valid

    def project(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Standardise and project M raw inputs (B, [L,] d_m) to (B, [L,] d_model)."""
        noise = self.config.input_noise if self.training else 0.0
        out = []
        for norm, proj, x in zip(self.input_norms, self.projections, xs, strict=True):
            z = norm(x)  # (B, [L,] d_m) or (B, [L,] rank_m) when reduced
            out.append(proj(z + noise * torch.randn_like(z) if noise else z))
        return out

    def set_input_statistics(self, means, stds, components=None) -> None:
        """Per-feature mean and std of each modality's training inputs: M arrays (d_m,) each
        (``coupled_mamba.data.feature_statistics`` computes them over valid steps); with
        ``config.input_ranks``, ``components`` holds M arrays (d_m, rank_m) of leading principal
        directions of the standardised inputs, None where rank_m is 0
        (``coupled_mamba.data.principal_components``)."""
        if len(means) != len(self.input_norms) or len(stds) != len(self.input_norms):
            raise ValueError(f"set_input_statistics: expected {len(self.input_norms)} means and "
                             f"stds, got {len(means)} and {len(stds)}")
        for m, (norm, mean, std) in enumerate(zip(self.input_norms, means, stds, strict=True)):
            shapes = (tuple(torch.as_tensor(mean).shape), tuple(torch.as_tensor(std).shape))
            if shapes != (tuple(norm.shift.shape),) * 2:
                raise ValueError(f"set_input_statistics: modality {m} expects "
                                 f"({norm.shift.numel()},) statistics, got {shapes[0]} and "
                                 f"{shapes[1]}")
            norm.set_statistics(mean, std, components=None if components is None
                                else components[m])

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the input projections, which the inputs must share."""
        return next(self.projections.parameters()).dtype

    def encode(self, inputs, mask=None, present=None) -> list[torch.Tensor]:
        """The encoder outputs: a list of M tensors (B, L, d_model)."""
        projected, valid = self._prepare(inputs, mask, present)
        return self.encoder.forward_valid(projected, valid)

    def forward(self, inputs, mask=None, present=None) -> torch.Tensor:
        """See the class docstring. Returns (B, num_outputs)."""
        projected, valid = self._prepare(inputs, mask, present)
        return self.head(self.encoder.forward_valid(projected, valid), valid)

    # --- introspection -------------------------------------------------------------------------
    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (elements), optionally only those with requires_grad."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _describe_encoder(self) -> str:
        raise NotImplementedError

    def summary(self) -> str:
        """One line: name, modalities, encoder, head, parameter count."""
        c = self.config
        mods = ", ".join(f"{n}:{d}" for n, d in zip(c.modality_names, c.input_dims, strict=True))
        return (f"{self.model_name}: M={c.n_modalities} [{mods}] -> d_model {c.d_model}, "
                f"{self._describe_encoder()}; pooling {c.pooling}, fusion {c.fusion}, "
                f"{c.task} -> {c.num_outputs}; {self.num_parameters():,} parameters")

    # --- save / load (Hugging Face's names and layout) --------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``config.json`` (with the registry name) and ``model.safetensors``."""
        directory = os.fspath(save_directory)
        os.makedirs(directory, exist_ok=True)
        data = {"model_name": self.model_name, **self.config.to_dict()}
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        save_model(self, os.path.join(directory, WEIGHTS_NAME),
                   metadata={"model_name": self.model_name})

    @classmethod
    def from_pretrained(cls, pretrained_model_path: str | os.PathLike,
                        device: str | torch.device = "cpu") -> MultimodalModel:
        """Rebuild a model saved with :meth:`save_pretrained`; returned in eval mode on ``device``.

        The registry name is read from ``config.json`` and every weight must match (strict
        load). Called on a subclass (``CoupledMambaModel.from_pretrained``), the saved model must
        be an instance of it.

        Raises:
            OSError: the directory, ``config.json`` or ``model.safetensors`` is missing.
            UserInputError (a ValueError): a file is malformed or damaged, or the weights do not
                match the config.
        """
        directory = os.fspath(pretrained_model_path)
        cfg_path = os.path.join(directory, CONFIG_NAME)
        weights = os.path.join(directory, WEIGHTS_NAME)
        for path in (cfg_path, weights):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{directory} has no file named "
                                        f"{os.path.basename(path)} (expected a directory "
                                        "written by save_pretrained)")
        with open(cfg_path, "rb") as f:
            try:
                data = json.load(f)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                raise UserInputError(f"{cfg_path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or "model_name" not in data:
            raise UserInputError(f"{cfg_path}: missing the key 'model_name' (the registry name)")
        name = data.pop("model_name")
        try:
            config = CoupledMambaConfig.from_dict(data)
            entry_cls = model_entry(name).cls
        except UserInputError as exc:
            raise UserInputError(f"{cfg_path}: {exc}") from None
        if not issubclass(entry_cls, cls):
            raise UserInputError(f"{cfg_path}: holds a {name!r} model ({entry_cls.__name__}), "
                                 f"not a {cls.__name__}")
        model = create_model(name, config)
        try:
            missing, unexpected = load_model(model, weights, strict=False, device=str(device))
        except (SafetensorError, RuntimeError) as exc:  # damaged file; shape mismatch
            raise UserInputError(f"{weights}: cannot load ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())})") from None
        if missing or unexpected:
            raise UserInputError(f"{weights}: does not match {name!r} built from {cfg_path} "
                                 f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})")
        return model.to(device).eval()


def from_pretrained(pretrained_model_path: str | os.PathLike,
                    device: str | torch.device = "cpu") -> MultimodalModel:
    """Any registered model saved with ``save_pretrained``
    (:meth:`MultimodalModel.from_pretrained`)."""
    return MultimodalModel.from_pretrained(pretrained_model_path, device)
