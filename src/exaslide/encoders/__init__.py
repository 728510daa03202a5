"""Pathology foundation-model patch encoders: a registry of specs, built offline.

>>> from exaslide.encoders import get_spec, build_encoder, encode
>>> spec = get_spec("uni")                       # size 224, 0.5 µm/px, ImageNet mean/std
>>> module, spec = build_encoder("uni")          # doctest: +SKIP  (weights from the HF cache)
>>> features = encode(module, spec, patches)     # doctest: +SKIP  (N, 1024)

Modules, bottom to top: ``specs`` (the registry; imports nothing heavy), ``hub`` (finding
weights in local files and the Hugging Face cache; never downloads), ``module`` (the
``Encoder`` wrapper; imports torch), ``build`` (``build_encoder``, ``encode``). Every
number of every spec is cited in ``docs/encoders.md``.
"""

from exaslide.encoders.build import (
    build_backbone,
    build_encoder,
    dinov2_hf_to_timm,
    encode,
    load_backbone,
    read_weights,
    weights_id,
)
from exaslide.encoders.hub import (
    WeightsStatus,
    expected_path,
    find_in_cache,
    hf_cache_dir,
    resolve_weights,
    weights_status,
)
from exaslide.encoders.specs import (
    POOLINGS,
    EncoderError,
    EncoderSpec,
    all_specs,
    available_encoders,
    get_spec,
)

__all__ = [
    "POOLINGS",
    "EncoderError",
    "EncoderSpec",
    "WeightsStatus",
    "all_specs",
    "available_encoders",
    "build_backbone",
    "build_encoder",
    "dinov2_hf_to_timm",
    "encode",
    "expected_path",
    "find_in_cache",
    "get_spec",
    "hf_cache_dir",
    "load_backbone",
    "read_weights",
    "resolve_weights",
    "weights_id",
    "weights_status",
]
