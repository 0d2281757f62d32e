"""Plain single-device PyTorch models: M2-BERT/GPT/ViT and Transformer baselines.

Public API: build_model, from_preset, preset_config, list_presets, optimizer_groups,
flops_per_token, count_parameters, ModelConfig.
"""

from m2dist.models.build import build_model
from m2dist.config.model import ModelConfig
from m2dist.models.flops import flops_per_token
from m2dist.models.optim import count_parameters, optimizer_groups

_PRESET_API = ("from_preset", "list_presets", "preset_config")


def __getattr__(name):
    # Imported on first use so that ``python -m m2dist.models.presets`` runs the module only once.
    if name in _PRESET_API:
        from m2dist.models import presets

        return getattr(presets, name)
    raise AttributeError(f"module 'm2dist.models' has no attribute {name!r}")


__all__ = [
    "ModelConfig", "build_model", "count_parameters", "flops_per_token", "from_preset", "list_presets",
    "optimizer_groups", "preset_config",
]
