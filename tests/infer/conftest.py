"""Inference fixtures: the known colour model saved with ``save_model``; one CPU thread."""

from __future__ import annotations

import pytest
from colour_model import colour_meta

from exaslide.models import save_model


@pytest.fixture(scope="session")
def colour_model_file(tmp_path_factory):
    """``model.pt``: the colour model, 32-pixel patches at level 1 (128 level-0 px)."""
    from exaslide.models import create_model

    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_model(path, create_model("test-colour", num_classes=2), colour_meta())


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every inference test on one torch thread (``one_torch_thread``, tests/conftest.py)."""
