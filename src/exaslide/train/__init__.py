"""Training: a config, one loop for CPU / GPU / multi-GPU (torchrun), checkpoints, resume.

- :class:`~exaslide.train.config.TrainConfig`, :func:`~exaslide.train.config.load_config`
- :func:`~exaslide.train.loop.train` -> :class:`~exaslide.train.loop.TrainResult`

See ``docs/training.md``.
"""

from exaslide.train.config import TrainConfig, load_config
from exaslide.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
