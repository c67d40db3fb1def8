"""Pure-PyTorch DIEN and the baselines of the paper's Tables 2 and 4."""
from dien.model.base import CTRModel, HistoryEncoding, ModelOutput
from dien.model.config import ModelConfig
from dien.model.registry import MODELS, build_model, resolve_config

__all__ = ["CTRModel", "HistoryEncoding", "ModelOutput", "ModelConfig", "MODELS", "build_model", "resolve_config"]
