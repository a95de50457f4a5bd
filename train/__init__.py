"""Train causal LMs on a datamill corpus: `train(config) -> TrainResult`, or `datamill train CONFIG`.

The names below are loaded on first use, so `datamill --help` does not pay for importing torch.
"""

from importlib import import_module

_HOMES = {"TrainConfig": "config", "TrainConfigError": "config", "load_config": "config",
          "TrainResult": "runtime", "train": "loop"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'datamill.train' has no attribute {name!r}")
    return getattr(import_module(f"datamill.train.{_HOMES[name]}"), name)
