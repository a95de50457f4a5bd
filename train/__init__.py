"""Train causal LMs on a datamill corpus: `train(config) -> TrainResult`, or `datamill train CONFIG`."""

from datamill.train.config import TrainConfig, TrainConfigError, load_config
from datamill.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainConfigError", "TrainResult", "load_config", "train"]
