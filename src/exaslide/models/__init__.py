"""Models: a registry of classifiers for patches, and model checkpoint files.

>>> from exaslide.models import create_model, save_model, load_model
>>> model = create_model("small-cnn", num_classes=2)            # doctest: +SKIP
>>> save_model("model.pt", model, {"classes": ["normal", "tumour"]})  # doctest: +SKIP
>>> model, meta = load_model("model.pt")                        # doctest: +SKIP

Registered names: ``"small-cnn"`` (a 2.75 M-parameter CNN), ``"resnet18"``,
``"resnet50"`` (torchvision), and ``"timm:<name>"`` for any timm model when timm is
installed. Weights are random unless ``pretrained`` names a local file: nothing is ever
downloaded. torch is imported only when a model is built. See ``docs/models.md``.

Modules, bottom to top (each imports only those before it): ``registry`` (names to
builders), ``zoo`` (the built-in builders), ``features``, ``weights`` (reading weights
files), ``factory`` (``create_model``, ``load_pretrained``), ``checkpoint``
(``save_model``, ``load_model``).
"""

from exaslide.models.checkpoint import load_model, save_model
from exaslide.models.factory import create_model, load_pretrained, model_name
from exaslide.models.features import embedding_dim, forward_features, unwrap
from exaslide.models.registry import ModelError, available_models, register_model
from exaslide.models.weights import CHECKPOINT_FORMAT, read_state_dict

__all__ = [
    "CHECKPOINT_FORMAT",
    "ModelError",
    "available_models",
    "create_model",
    "embedding_dim",
    "forward_features",
    "load_model",
    "load_pretrained",
    "model_name",
    "read_state_dict",
    "register_model",
    "save_model",
    "unwrap",
]
