"""Training: tenant data, model builders, the Ray Train + DeepSpeed fine-tuning and masked-LM pretraining recipes."""
from train._config import FinetuneConfig, check_tenant_id
from train._errors import ConfigError, DataValidationError, TrainError
from train._export import Predictor, read_manifest

__all__ = [
    "FinetuneConfig",
    "check_tenant_id",
    "TrainError",
    "DataValidationError",
    "ConfigError",
    "Predictor",
    "read_manifest",
    "finetune",
    "load_tenant_data",
    "PretrainConfig",
    "pretrain",
]


def __getattr__(name: str):  # heavy imports (Ray, torch) only when asked for
    if name == "finetune":
        from train._finetune import finetune

        return finetune
    if name == "pretrain":
        from train._pretrain import pretrain

        return pretrain
    if name == "PretrainConfig":
        from train._pretrain_config import PretrainConfig

        return PretrainConfig
    if name == "load_tenant_data":
        from train._data import load_tenant_data

        return load_tenant_data
    raise AttributeError(name)
