from m2dist.config.loader import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
)
from m2dist.config.model import ModelConfig
from m2dist.config.schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    DeepSpeedConfig,
    LoggingConfig,
    OptimizerConfig,
    ParallelConfig,
    ScheduleConfig,
    TrainerConfig,
)

__all__ = [
    "CheckpointConfig", "Config", "ConfigError", "DataConfig", "DeepSpeedConfig", "LoggingConfig", "ModelConfig",
    "OptimizerConfig", "ParallelConfig", "ScheduleConfig", "TrainerConfig",
    "config_from_dict", "config_to_dict", "config_to_yaml", "load_config",
]
