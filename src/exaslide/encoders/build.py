"""Building encoders from their specs, loading local weights, and encoding images.

>>> from exaslide.encoders import build_encoder, encode
>>> module, spec = build_encoder("uni", weights="pytorch_model.bin")   # doctest: +SKIP
>>> features = encode(module, spec, patches_uint8_nhwc)                # doctest: +SKIP

Architectures come from timm (``timm.create_model(spec.arch, **spec.kwargs)``) or
torchvision; weights only from local files (:mod:`exaslide.encoders.hub`). With weights,
the model is built on the ``meta`` device and the file's tensors are assigned to it (no
random initialisation of a billion parameters to throw away); every tensor of the model
must be in the file, with its shape, or the load is refused in one line. torch and timm
are imported only when an encoder is built.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exaslide.encoders.hub import resolve_weights
from exaslide.encoders.specs import SILU, SWIGLU, EncoderError, EncoderSpec, get_spec

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Seed of an encoder's random weights (``random_weights=True``): the same weights in
#: every process and run, so a resumed or multi-rank embedding stays in one space.
RANDOM_SEED = 0
#: Tensors of a torchvision/timm ResNet-50 that the truncated trunk does not use.
RESNET_UNUSED = ("layer4.", "fc.")
#: Prefixes stripped from every key of a weights file when all keys have them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.", "dinov2.")


def _layer(name: Any) -> Any:
    """A layer class from its name in a spec (:data:`SWIGLU`, :data:`SILU`)."""
    if name == SWIGLU:
        from timm.layers import SwiGLUPacked

        return SwiGLUPacked
    if name == SILU:
        import torch

        return torch.nn.SiLU
    return name


def build_backbone(spec: EncoderSpec, overrides: Mapping[str, Any] | None = None):
    """The spec's architecture with fresh (random) weights, on torch's current default
    device (``with torch.device("meta"):`` builds a giant one without memory).

    Args:
        overrides: architecture keyword arguments replacing the spec's (tests build a
            narrow ViT with the spec's own builder this way).

    Raises:
        EncoderError: the spec cannot be built offline (CONCH) or is a model file.
    """
    if not spec.buildable:
        raise EncoderError(f"{spec.name}: {spec.unbuildable}")
    if spec.builder == "resnet50-trunc":
        from exaslide.encoders.module import ResNet50Trunc

        return ResNet50Trunc()
    if spec.builder != "timm":
        raise EncoderError(f"{spec.name}: built from a model file; pass weights=MODEL.pt")
    import timm

    kwargs = {k: _layer(v) for k, v in {**spec.kwargs, **(overrides or {})}.items()}
    return timm.create_model(spec.arch, pretrained=False, **kwargs)


def output_dim(spec: EncoderSpec, backbone) -> int:
    """Embedding length of ``backbone`` under the spec's rule."""
    if spec.builder == "resnet50-trunc":
        return int(backbone.layer3[-1].conv3.out_channels)
    width = int(backbone.num_features)
    return 2 * width if spec.pooling == "cls+mean" else width


def build_encoder(name: str | EncoderSpec, weights: str | os.PathLike | None = None, *,
                  random_weights: bool = False, cache_dir: str | os.PathLike | None = None,
                  overrides: Mapping[str, Any] | None = None):
    """Build a registered encoder, in eval mode on the CPU.

    Args:
        name: a registry name or alias (``exaslide encoders list``), or a spec.
        weights: a local weights file, a folder holding it (a Hugging Face snapshot or a
            download folder), or a Hugging Face cache folder; default: the spec's
            repository in the local hub cache. For ``exaslide``: the model file.
        random_weights: build with seeded random weights instead (to exercise a pipeline
            without the real weights; the embeddings mean nothing).
        cache_dir: the Hugging Face hub cache to look in (default: huggingface_hub's).
        overrides: architecture arguments replacing the spec's (tests, experiments).

    Returns:
        ``(module, spec)``: an :class:`~exaslide.encoders.module.Encoder`, and the spec it
        was built from (for ``exaslide``: completed from the model file). The module's
        ``exaslide_weights`` says which weights it holds (``sha256:...`` or
        ``random:seed0``), ``exaslide_weights_path`` where they came from.

    Raises:
        EncoderError: unknown name, an encoder not buildable offline, weights not found
            (the message names the expected path and the model card), weights of another
            architecture.
    """
    spec = name if isinstance(name, EncoderSpec) else get_spec(name)
    if spec.builder == "exaslide-model":
        return _build_exaslide(spec, weights)
    if not spec.buildable:
        raise EncoderError(f"{spec.name}: {spec.unbuildable}")
    if random_weights:
        backbone = _random_backbone(spec, overrides)
        path, weights_tag = None, f"random:seed{RANDOM_SEED}"
    else:
        path = resolve_weights(spec, weights, cache_dir)
        backbone = load_backbone(spec, path, overrides)
        weights_tag = weights_id(path)
    return _wrap(spec, backbone, output_dim(spec, backbone), weights_tag, path), spec


def _random_backbone(spec: EncoderSpec, overrides):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build_backbone(spec, overrides)


def _wrap(spec: EncoderSpec, backbone, dim: int, weights_tag: str, path: Path | None):
    from exaslide.encoders.module import Encoder

    module = Encoder(backbone, spec.pooling, dim, spec.name)
    module.exaslide_weights = weights_tag
    module.exaslide_weights_path = str(path) if path else None
    return module.eval()


def _build_exaslide(spec: EncoderSpec, weights):
    """The ``exaslide`` encoder: a model file of save_model, its spec read from it."""
    if weights is None:
        raise EncoderError("exaslide: give the model file written by exaslide train "
                           "(--weights MODEL.pt)")
    from exaslide.augment import IMAGENET_MEAN, IMAGENET_STD
    from exaslide.models import embedding_dim, load_model

    model, meta = load_model(weights)
    patch = meta.get("patch") if isinstance(meta.get("patch"), dict) else {}
    resolved = replace(spec, title=f"exaslide model {meta.get('model')}",
                       dim=embedding_dim(model), size=patch.get("size"),
                       mpp=patch.get("mpp"),
                       mean=tuple(meta.get("mean") or IMAGENET_MEAN),
                       std=tuple(meta.get("std") or IMAGENET_STD))
    return _wrap(resolved, model, resolved.dim, weights_id(weights), Path(weights)), resolved


def load_backbone(spec: EncoderSpec, path: str | os.PathLike,
                  overrides: Mapping[str, Any] | None = None):
    """The spec's architecture holding the weights of ``path`` (built on ``meta``, the
    file's tensors assigned to it).

    Raises:
        EncoderError: unreadable file, or weights of another architecture (one line:
            how many tensors are missing, unexpected or of another shape, with an
            example of each).
    """
    import torch

    state = to_spec_layout(spec, read_weights(path))
    with torch.device("meta"):
        backbone = build_backbone(spec, overrides)
    check_state(spec, backbone, state, path)
    state = {k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v
             for k, v in state.items()}
    backbone.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in (*backbone.named_parameters(), *backbone.named_buffers())
            if t.is_meta]
    if left:
        raise EncoderError(f"{path}: {spec.name} has tensors the file does not give "
                           f"({', '.join(left[:3])})")
    return backbone


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file: safetensors, or a PyTorch file (a state dict
    or a dict holding one under ``state_dict`` / ``model``), read with
    ``weights_only=True`` and checked against a ``.sha256`` sidecar when there is one.

    Raises:
        EncoderError: missing, corrupt or unreadable file.
    """
    from exaslide.errors import ModelError
    from exaslide.models.weights import read_state_dict

    p = Path(path)
    if p.suffix == ".safetensors":
        from exaslide.integrity import verify

        verify(p, EncoderError, "copy the weights again", warn_missing=False)
        try:
            from safetensors.torch import load_file

            return _strip(load_file(str(p), device="cpu"))
        except Exception as exc:  # header garbage, truncated file
            raise EncoderError(f"{p}: not a readable safetensors file "
                               f"({type(exc).__name__}: {_first_line(exc)})") from exc
    try:
        return _strip(read_state_dict(p))
    except ModelError as exc:
        raise EncoderError(str(exc)) from exc


def _strip(state: Mapping[str, Any]) -> dict[str, Any]:
    from exaslide.models.weights import strip_prefixes

    return strip_prefixes(state, WRAPPER_PREFIXES)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def to_spec_layout(spec: EncoderSpec, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` in the layout the spec's module uses: transformers' DINOv2 keys mapped to
    timm's (Phikon-v2), a ResNet-50's ``layer4`` / ``fc`` dropped (the trunk). Weights
    already in the module's layout pass unchanged."""
    if spec.key_layout == "transformers-dinov2" and any(k.startswith("embeddings.")
                                                        for k in state):
        return dinov2_hf_to_timm(state)
    if spec.builder == "resnet50-trunc":
        return {k: v for k, v in state.items() if not k.startswith(RESNET_UNUSED)}
    return state


_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
#: query/key/value of one layer: transformers 4 names (the published files) and 5 names.
_HF_QKV = re.compile(r"attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\."
                     r"(weight|bias)")
_HF_BLOCK_KEYS = {"norm1.": "norm1.", "norm2.": "norm2.", "mlp.fc1.": "mlp.fc1.",
                  "mlp.fc2.": "mlp.fc2.", "attention.output.dense.": "attn.proj.",
                  "attention.o_proj.": "attn.proj.", "layer_scale1.lambda1": "ls1.gamma",
                  "layer_scale2.lambda1": "ls2.gamma"}
_QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def dinov2_hf_to_timm(state: Mapping[str, Any]) -> dict[str, Any]:
    """transformers ``Dinov2Model`` keys to timm ``VisionTransformer`` keys.

    ``embeddings.cls_token`` -> ``cls_token``; ``embeddings.position_embeddings`` ->
    ``pos_embed``; ``embeddings.patch_embeddings.projection.*`` -> ``patch_embed.proj.*``;
    per layer ``i`` (``encoder.layer.i.``): ``norm1``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``
    keep their names under ``blocks.i.``; ``attention.attention.{query,key,value}.*``
    (transformers 5: ``attention.{q,k,v}_proj.*``) are concatenated in that order along
    the output dimension into ``attn.qkv.*``; ``attention.output.dense.*`` (5:
    ``attention.o_proj.*``) -> ``attn.proj.*``; ``layer_scale{1,2}.lambda1`` ->
    ``ls{1,2}.gamma``; ``layernorm.*`` -> ``norm.*``. ``embeddings.mask_token`` (used only
    in training) is dropped; any other key is kept as it is (and refused by the load).
    """
    import torch

    out: dict[str, Any] = {}
    qkv: dict[tuple[str, str], dict[int, Any]] = {}
    fixed = {"embeddings.cls_token": "cls_token",
             "embeddings.position_embeddings": "pos_embed"}
    for key, value in state.items():
        layer = _HF_LAYER.fullmatch(key)
        part = _HF_QKV.fullmatch(layer.group(2)) if layer else None
        if key in fixed:
            out[fixed[key]] = value
        elif key == "embeddings.mask_token":
            continue
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("layernorm."):
            out["norm." + key.rsplit(".", 1)[1]] = value
        elif part:
            slot = _QKV_ORDER[part.group(1) or part.group(2)]
            qkv.setdefault((layer.group(1), part.group(3)), {})[slot] = (key, value)
        elif layer and _block_key(layer.group(2)):
            out[f"blocks.{layer.group(1)}.{_block_key(layer.group(2))}"] = value
        else:
            out[key] = value
    for (index, kind), parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            out.update(dict(parts.values()))  # incomplete: refused by the load
            continue
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(
            [parts[0][1], parts[1][1], parts[2][1]], dim=0)
    return out


def _block_key(rest: str) -> str | None:
    for hf, timm_name in _HF_BLOCK_KEYS.items():
        if hf.endswith(".") and rest.startswith(hf):
            return timm_name + rest[len(hf):]
        if rest == hf:
            return timm_name
    return None


def check_state(spec: EncoderSpec, backbone, state: Mapping[str, Any], path) -> None:
    """Refuse a state dict that does not fit the backbone exactly, in one line.

    Raises:
        EncoderError: missing, unexpected or differently shaped tensors.
    """
    target = backbone.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in target
              if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if not (missing or unexpected or shaped):
        return
    parts = [f"{len(items)} {what} (e.g. {items[0]})" for items, what in
             ((missing, "missing"), (unexpected, "unexpected"),
              (shaped, "of another shape (file vs model)")) if items]
    raise EncoderError(f"{path}: not {spec.title} weights ({spec.arch or spec.builder}): "
                       f"{'; '.join(parts)} of the model's {len(target)} tensors; use the "
                       f"file from {spec.card}")


def weights_id(path: str | os.PathLike) -> str:
    """``sha256:<digest>`` of a weights file. A Hugging Face cache file is a link to
    ``blobs/<sha256>`` (large files), whose name is the digest: it is not read again."""
    p = Path(path)
    target = p.resolve()
    if target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name):
        return f"sha256:{target.name}"
    digest = hashlib.sha256()
    with open(target, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def encode(module, spec: EncoderSpec, images, *, device=None, batch_size: int = 64):
    """Embeddings of ``images``: ``(N, H, W, 3)`` uint8 (numpy or torch), or ``(N, 3, H,
    W)`` uint8 or float in 0..1. Images of another size than ``spec.size`` are resized
    (shorter side, bilinear with antialiasing) and centre-cropped; then normalised with
    the spec's mean/std and run through the encoder's rule.

    Returns:
        A float32 ``(N, dim)`` tensor on the CPU.
    """
    import torch

    from exaslide.augment import to_float

    x = _as_nchw(images)
    if spec.size and tuple(x.shape[-2:]) != (spec.size, spec.size):
        from torchvision.transforms.v2 import functional as F

        x = F.center_crop(F.resize(x, [spec.size], antialias=True), [spec.size])
    device = torch.device(device) if device is not None else \
        next(module.parameters()).device
    out = []
    with torch.inference_mode():
        for chunk in torch.split(x, batch_size):
            batch = to_float(chunk.to(device), spec.mean, spec.std)
            out.append(module.forward_features(batch).float().cpu())
    return torch.cat(out) if out else torch.empty(0, spec.dim or 0)


def _as_nchw(images):
    import numpy as np
    import torch

    if isinstance(images, np.ndarray):
        array = np.ascontiguousarray(images)
        x = torch.from_numpy(array if array.flags.writeable else array.copy())
    else:
        x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise EncoderError(f"encode: expected a batch of images (N, H, W, 3) or (N, 3, H, "
                           f"W), got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise EncoderError(f"encode: expected RGB images, got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise EncoderError(f"encode: expected uint8 or float images, got {x.dtype}")
    return x.contiguous()
