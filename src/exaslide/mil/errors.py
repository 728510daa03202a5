"""The MIL error: a subclass of :class:`~exaslide.errors.TrainingError` (a MIL run is a
training run: bad configuration, features, bags or weights)."""

from __future__ import annotations

from exaslide.errors import TrainingError


class MILError(TrainingError):
    """A MIL model cannot be trained or run: a bad configuration, a feature store that
    does not fit the model, an unusable bag, a weights file of another architecture."""
