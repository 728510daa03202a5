"""Multiple-instance learning: slide classifiers on bags of patch features.

>>> from exaslide.mil import load_mil_config, train_mil, predict_mil
>>> config = load_mil_config("mil.yaml", ["model=abmil"])         # doctest: +SKIP
>>> result = train_mil(config)                                   # doctest: +SKIP
>>> result.metrics["slide_auc"]                                  # doctest: +SKIP
>>> predict_mil("runs/mil/model.pt", "features/", "mil_pred/")   # doctest: +SKIP

Models (:data:`MIL_MODELS`): ``meanpool`` (mean-pool + MLP), ``abmil`` (gated
attention, CLAM's form), ``clam_sb`` (CLAM single-branch), ``transmil``. Bags are the
memory-mapped parts of an embedding store (:mod:`exaslide.mil.bags`); labels, splits and
patients come from the cohort manifest. See ``docs/mil.md``.
"""

import importlib

_EXPORTS = {
    "MILConfig": "config", "load_mil_config": "config", "dump_config": "config",
    "MILError": "errors",
    "FeatureStore": "bags", "build_cohort": "bags",
    "MIL_MODELS": "registry", "create_mil_model": "registry", "mil_model_names": "registry",
    "save_mil_model": "weights", "load_mil_model": "weights",
    "load_reference_weights": "weights",
    "MILResult": "train", "train_mil": "train",
    "PredictResult": "predict", "predict_mil": "predict",
    "slide_metrics": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Lazy exports: importing :mod:`exaslide.mil` imports neither torch nor pydantic."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'exaslide.mil' has no attribute {name!r}")
    return getattr(importlib.import_module(f"exaslide.mil.{_EXPORTS[name]}"), name)
