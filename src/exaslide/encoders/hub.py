"""Finding an encoder's weights on this machine: a file, a folder, or a local Hugging Face
cache. Nothing here can download: the cache is only read, with
``huggingface_hub.try_to_load_from_cache`` (which never touches the network) and a scan of
``models--ORG--NAME/snapshots/<revision>/`` for caches without a ``refs/main``.

Where the weights are not found, the error names the path they were expected at and the
model card to get them from (gated models need an access request there, which exaslide
never bypasses).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from exaslide.encoders.specs import EncoderError, EncoderSpec


@dataclass(frozen=True)
class WeightsStatus:
    """Where an encoder's weights are, or where they were looked for.

    Attributes:
        state: ``"found"``, ``"not found"``, ``"model file"`` (the ``exaslide`` encoder:
            a model file must be given) or ``"not buildable"``.
        path: the weights file (``state == "found"``).
        expected: where they were looked for (the cache path to put them at).
    """

    state: str
    path: Path | None = None
    expected: str = ""

    def describe(self) -> dict:
        """JSON-ready form."""
        return {"state": self.state, "path": str(self.path) if self.path else None,
                "expected": self.expected or None}


def hf_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache: ``cache_dir``, else ``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (huggingface_hub's own rule)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def repo_folder(repo_id: str) -> str:
    """The cache folder name of a model repository: ``models--ORG--NAME``."""
    return "models--" + repo_id.replace("/", "--")


def expected_path(spec: EncoderSpec, cache_dir: str | os.PathLike | None = None) -> str:
    """Where the spec's first weights file belongs in the hub cache."""
    name = spec.hf_files[0] if spec.hf_files else "WEIGHTS"
    return str(hf_cache_dir(cache_dir) / repo_folder(spec.hf_repo or "ORG/NAME") /
               "snapshots" / "<revision>" / name)


def find_in_cache(spec: EncoderSpec, cache_dir: str | os.PathLike | None = None
                  ) -> Path | None:
    """The spec's weights file in the hub cache, or ``None``: the revision ``refs/main``
    points to first, else the newest snapshot holding one of ``spec.hf_files``."""
    if not spec.hf_repo or not spec.hf_files:
        return None
    root = hf_cache_dir(cache_dir)
    from huggingface_hub import try_to_load_from_cache

    for name in spec.hf_files:
        try:
            hit = try_to_load_from_cache(spec.hf_repo, name, cache_dir=str(root))
        except (OSError, ValueError):  # an unreadable or malformed cache entry
            hit = None
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    snapshots = root / repo_folder(spec.hf_repo) / "snapshots"
    candidates = [p for name in spec.hf_files for p in snapshots.glob(f"*/{name}")
                  if p.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, -len(str(p))))


def resolve_weights(spec: EncoderSpec, weights: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """The weights file of ``spec``: ``weights`` itself (a file), a file of
    ``spec.hf_files`` in the folder ``weights`` (a snapshot or a download folder), the
    spec's repository in the hub cache ``weights`` (a folder holding
    ``models--ORG--NAME``), else the spec's repository in the default hub cache.

    Raises:
        EncoderError: nothing found; one line naming the expected path and the card.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            for name in spec.hf_files:
                if (path / name).is_file():
                    return path / name
            if spec.hf_repo and (path / repo_folder(spec.hf_repo)).is_dir():
                found = find_in_cache(spec, path)
                if found is not None:
                    return found
            raise EncoderError(f"{path}: no weights of {spec.name} in this folder (expected "
                               f"{_expected_in(spec, path)}); get them from {spec.card}")
        raise EncoderError(f"{path}: no such weights file for {spec.name}; get "
                           f"{_files(spec)} from {spec.card}")
    found = find_in_cache(spec, cache_dir)
    if found is not None:
        return found
    raise EncoderError(f"{spec.name}: weights not found at {expected_path(spec, cache_dir)};"
                       f" get {_files(spec)} from {spec.card}"
                       f"{' (gated: request access there)' if spec.gated else ''} and "
                       "pass --weights FILE, or put them in the Hugging Face cache")


def _files(spec: EncoderSpec) -> str:
    return " or ".join(spec.hf_files) if spec.hf_files else "the weights file"


def _expected_in(spec: EncoderSpec, folder: Path) -> str:
    first = spec.hf_files[0] if spec.hf_files else "WEIGHTS"
    if spec.hf_repo:
        return f"{folder / first} or {folder / repo_folder(spec.hf_repo)}/snapshots/*/{first}"
    return str(folder / first)


def weights_status(spec: EncoderSpec, cache_dir: str | os.PathLike | None = None
                   ) -> WeightsStatus:
    """Whether the spec's weights are in the hub cache (for ``exaslide encoders
    list``)."""
    if not spec.buildable:
        return WeightsStatus("not buildable")
    if spec.builder == "exaslide-model":
        return WeightsStatus("model file", expected="--weights MODEL.pt")
    found = find_in_cache(spec, cache_dir)
    if found is not None:
        return WeightsStatus("found", found)
    return WeightsStatus("not found", expected=expected_path(spec, cache_dir))
