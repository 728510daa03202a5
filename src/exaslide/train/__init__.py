"""Training: a config, one loop for CPU / GPU / multi-GPU (torchrun), checkpoints, resume.

- :class:`~exaslide.train.config.TrainConfig`, :func:`~exaslide.train.config.load_config`
- :func:`~exaslide.train.loop.train` -> :class:`~exaslide.train.loop.TrainResult`

See ``docs/training.md``. The loop (and torch) is imported on first use, so that a
configuration can be checked without importing torch.
"""

from typing import TYPE_CHECKING, Any

from exaslide.train.config import TrainConfig, load_config

if TYPE_CHECKING:
    from exaslide.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "train"):
        from exaslide.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
