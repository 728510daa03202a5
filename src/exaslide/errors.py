"""The exception hierarchy: one root, ``ExaslideError``, and one subclass per domain.

Messages say what was expected, what was found and what to do; library code chains the
underlying cause with ``raise ... from exc``. The CLI prints ``str(error)`` on one line and
exits with code 2.
"""

from __future__ import annotations


class ExaslideError(Exception):
    """Root of every error exaslide raises on purpose."""


class SlideError(ExaslideError):
    """A slide could not be opened or read."""


class SlideOpenError(SlideError):
    """No backend could open the file (missing, unsupported format, corrupt header)."""


class SlideReadError(SlideError):
    """The slide opened but a region could not be read (corrupt tile, out of bounds)."""


class LevelError(SlideError):
    """A requested level, downsample or resolution does not exist in the slide."""


class AnnotationError(ExaslideError):
    """An annotation file could not be parsed or holds invalid content."""


class HostileXMLError(AnnotationError):
    """An XML file uses entities, DTDs or external references (billion laughs, XXE)."""


class MaskError(ExaslideError):
    """A mask could not be computed with the given parameters."""


class ManifestError(ExaslideError):
    """A cohort manifest is malformed."""


class StorageError(ExaslideError, OSError):
    """A remote file (fsspec URL) could not be read: unreachable server, missing object, a
    body shorter than the advertised size. Also an ``OSError``, so code that treats an
    unreadable input as an I/O failure treats a remote one the same way."""


class AugmentError(ExaslideError):
    """A transform was built with invalid parameters or given an unsupported input."""


class DatasetError(ExaslideError):
    """A training dataset cannot be built or read: no index, unknown slides, corrupt
    shards."""


class TrainingError(ExaslideError):
    """A training run cannot start or continue: bad configuration, no data, a checkpoint
    that does not match."""


class ModelError(ExaslideError):
    """A model cannot be built or its weights loaded: unknown name, missing optional
    package, a missing, corrupt or mismatched weights file."""


class InferenceError(ExaslideError):
    """Inference cannot run: a model whose metadata lacks what inference needs (classes,
    patch size), an unknown class, an unavailable device."""


class EvaluationError(ExaslideError):
    """Predictions or ground truth cannot be evaluated: a missing or malformed heatmap, a
    stage CSV with unknown patients or stage names, metrics that need data not given."""


class RetrievalError(ExaslideError):
    """Embeddings, vector indexes or queries that cannot be used as asked."""


class ExportError(ExaslideError):
    """An export that cannot be made: inputs that do not belong together, too many tiles,
    an output that would overwrite an input."""


class ViewerError(ExaslideError):
    """A path the viewer cannot serve (not a slide, manifest or exaslide output folder),
    or a server that cannot start."""


class EnvError(ExaslideError):
    """An environment report that cannot be made (an unreachable Dask scheduler)."""
