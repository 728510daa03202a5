"""The encoder registry: one :class:`EncoderSpec` per named patch encoder.

A spec says everything needed to build an encoder and feed it exactly what it was trained
on: the architecture (a timm name and keyword arguments, or a builder), the input size and
resolution, the normalisation, the embedding rule, the embedding dimension, the parameter
count its card gives, the licence and where its weights come from. Every number is taken
from the model's card or paper; ``docs/encoders.md`` cites each one.

This module imports nothing heavy (no torch, no timm): ``exaslide encoders list`` reads it
at once. :mod:`exaslide.encoders.build` builds modules from the specs, as timm's
``_factory`` builds from its ``_registry``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from exaslide.errors import ModelError

#: Normalisation of ImageNet-trained models (torchvision, timm ``IMAGENET_DEFAULT_*``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Bioptimus' own normalisation (H-optimus-0 and -1 model cards).
BIOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
BIOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

#: Embedding rules. ``cls``: the class token after the final norm; ``cls+mean``: the class
#: token concatenated with the mean of the patch tokens (register tokens excluded);
#: ``avgpool``: global average pooling of a CNN's last feature map; ``model``: the model
#: file's own :func:`~exaslide.models.forward_features` (penultimate layer);
#: ``attnpool``: an attentional pooler (CONCH; not buildable here).
POOLINGS = ("cls", "cls+mean", "avgpool", "model", "attnpool")

#: Layer classes named in specs (resolved by the builder, so specs stay importable
#: without torch).
SWIGLU = "timm.layers.SwiGLUPacked"
SILU = "torch.nn.SiLU"


class EncoderError(ModelError):
    """An encoder cannot be named, built or given its weights: unknown name, an encoder
    that cannot be built offline, missing weights, weights of another architecture."""


@dataclass(frozen=True)
class EncoderSpec:
    """What one registered encoder is (see the module doc).

    Attributes:
        name: the registry name (``exaslide encoders list``).
        title: the model's own name.
        builder: ``"timm"`` (``timm.create_model(arch, **kwargs)``), ``"resnet50-trunc"``,
            ``"exaslide-model"`` (a model file of :func:`~exaslide.models.save_model`) or
            ``"unbuildable"``.
        arch: the timm architecture name (``builder == "timm"``).
        kwargs: keyword arguments of the architecture, as the card gives them; layer
            classes are named by their import path (:data:`SWIGLU`, :data:`SILU`).
        size: input side in pixels.
        mpp: resolution the patches are read at, in µm/px.
        mean, std: per-channel normalisation of 0-1 RGB.
        pooling: the embedding rule, one of :data:`POOLINGS`.
        dim: embedding dimension.
        params: parameter count the card or paper gives (``None``: none given).
        key_layout: the layout of the published weights (``"timm"``, ``"torchvision"``,
            ``"transformers-dinov2"``: mapped to timm's on load).
        licence: the licence and access conditions (``gated``: the weights are behind an
            access request on Hugging Face, which exaslide never bypasses).
        hf_repo, hf_files: the Hugging Face repository and the weights file names in it,
            in order of preference.
        card: the model card URL.
        aliases: other names accepted (TRIDENT's and CLAM's names).
        unbuildable: why the encoder cannot be built offline (``builder ==
            "unbuildable"``).
        notes: what the user should know (resolution choices, differences found).
    """

    name: str
    title: str
    builder: str
    size: int | None
    mpp: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    pooling: str
    dim: int | None
    card: str
    licence: str
    gated: bool = False
    arch: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    params: int | None = None
    key_layout: str = "timm"
    hf_repo: str | None = None
    hf_files: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    unbuildable: str = ""
    notes: str = ""

    @property
    def buildable(self) -> bool:
        """False for encoders that need code exaslide does not have (CONCH)."""
        return self.builder != "unbuildable"

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (``exaslide encoders list --json``, minus the weights
        status)."""
        return {"name": self.name, "title": self.title, "dim": self.dim, "mpp": self.mpp,
                "size": self.size, "pooling": self.pooling,
                "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None,
                "arch": self.arch, "params": self.params, "licence": self.licence,
                "gated": self.gated, "hf_repo": self.hf_repo,
                "hf_files": list(self.hf_files), "card": self.card,
                "buildable": self.buildable, "aliases": list(self.aliases)}


_VIT_L16 = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
            "dynamic_img_size": True}

_SPECS: tuple[EncoderSpec, ...] = (
    EncoderSpec(
        name="uni", title="UNI", builder="timm", arch="vit_large_patch16_224",
        kwargs=dict(_VIT_L16), size=224, mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        pooling="cls", dim=1024, params=None, hf_repo="MahmoodLab/UNI",
        hf_files=("pytorch_model.bin",), card="https://huggingface.co/MahmoodLab/UNI",
        licence="CC-BY-NC-ND-4.0, gated (non-commercial academic research only)",
        gated=True, aliases=("uni_v1", "uni-v1"),
        notes="ViT-L/16 (DINOv2), trained on 20x tiles; the card's transform resizes to 224."),
    EncoderSpec(
        name="uni2-h", title="UNI2-h", builder="timm", arch="vit_giant_patch14_224",
        kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                "num_classes": 0, "no_embed_class": True, "mlp_layer": SWIGLU,
                "act_layer": SILU, "reg_tokens": 8, "dynamic_img_size": True},
        size=224, mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls", dim=1536,
        params=None, hf_repo="MahmoodLab/UNI2-h", hf_files=("pytorch_model.bin",),
        card="https://huggingface.co/MahmoodLab/UNI2-h",
        licence="CC-BY-NC-ND-4.0, gated (non-commercial academic research only)",
        gated=True, aliases=("uni_v2", "uni2", "uni2h"),
        notes="ViT-H/14 with 8 register tokens and SwiGLU; class token after the norm."),
    EncoderSpec(
        name="virchow2", title="Virchow2", builder="timm", arch="vit_huge_patch14_224",
        kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4,
                "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True,
                "mlp_layer": SWIGLU, "act_layer": SILU},
        size=224, mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls+mean",
        dim=2560, params=632_000_000, hf_repo="paige-ai/Virchow2",
        hf_files=("pytorch_model.bin", "model.safetensors"),
        card="https://huggingface.co/paige-ai/Virchow2",
        licence="CC-BY-NC-ND-4.0, gated (non-commercial academic research only)",
        gated=True, aliases=("virchow-2", "virchow_v2"),
        notes="Trained on 5x/10x/20x/40x tiles (mixed magnification); 0.5 µm/px (20x) is "
              "the default here. Embedding = class token ++ mean of the 256 patch tokens "
              "(tokens 1-4 are registers and are left out)."),
    EncoderSpec(
        name="h-optimus-0", title="H-optimus-0", builder="timm",
        arch="vit_giant_patch14_reg4_dinov2",
        kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                "global_pool": "token", "dynamic_img_size": False},
        size=224, mpp=0.5, mean=BIOPTIMUS_MEAN, std=BIOPTIMUS_STD, pooling="cls",
        dim=1536, params=1_100_000_000, hf_repo="bioptimus/H-optimus-0",
        hf_files=("pytorch_model.bin",), card="https://huggingface.co/bioptimus/H-optimus-0",
        licence="Apache-2.0", gated=False, aliases=("hoptimus0", "h_optimus_0"),
        notes="ViT-g/14 with 4 registers; Bioptimus' own mean/std."),
    EncoderSpec(
        name="h-optimus-1", title="H-optimus-1", builder="timm",
        arch="vit_giant_patch14_reg4_dinov2",
        kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                "global_pool": "token", "dynamic_img_size": False},
        size=224, mpp=0.5, mean=BIOPTIMUS_MEAN, std=BIOPTIMUS_STD, pooling="cls",
        dim=1536, params=1_100_000_000, hf_repo="bioptimus/H-optimus-1",
        hf_files=("pytorch_model.bin",), card="https://huggingface.co/bioptimus/H-optimus-1",
        licence="CC-BY-NC-ND-4.0, gated (non-commercial academic research only)",
        gated=True, aliases=("hoptimus1", "h_optimus_1"),
        notes="Same architecture and normalisation as H-optimus-0."),
    EncoderSpec(
        name="prov-gigapath", title="Prov-GigaPath tile encoder", builder="timm",
        arch="vit_giant_patch14_dinov2",
        kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                "depth": 40, "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334,
                "num_classes": 0, "global_pool": "token"},
        size=224, mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls", dim=1536,
        params=None, hf_repo="prov-gigapath/prov-gigapath", hf_files=("pytorch_model.bin",),
        card="https://huggingface.co/prov-gigapath/prov-gigapath",
        licence="Apache-2.0, gated (research use only, not for clinical use)",
        gated=True, aliases=("gigapath", "prov_gigapath"),
        notes="ViT-g with 16 px patches (the timm name says 14; the hub config.json "
              "overrides it). The card resizes 256 px tiles to 256 (bicubic) and "
              "centre-crops 224: a centre crop of a 0.5 µm/px tile, which is what exaslide "
              "reads."),
    EncoderSpec(
        name="phikon-v2", title="Phikon-v2", builder="timm", arch="vit_large_patch16_224",
        kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0},
        size=224, mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls", dim=1024,
        params=None, key_layout="transformers-dinov2", hf_repo="owkin/phikon-v2",
        hf_files=("model.safetensors",), card="https://huggingface.co/owkin/phikon-v2",
        licence="Owkin non-commercial licence", gated=False,
        aliases=("phikon_v2", "phikon2"),
        notes="Published as a transformers Dinov2Model; built here as the same ViT-L/16 in "
              "timm with its keys mapped (see docs/encoders.md). Embedding = "
              "last_hidden_state[:, 0] (class token after the final layernorm)."),
    EncoderSpec(
        name="conch", title="CONCH (image encoder)", builder="unbuildable", size=448,
        mpp=None, mean=None, std=None, pooling="attnpool", dim=512,
        hf_repo="MahmoodLab/CONCH",
        hf_files=("pytorch_model.bin",), card="https://huggingface.co/MahmoodLab/CONCH",
        licence="CC-BY-NC-ND-4.0, gated (non-commercial academic research only)",
        gated=True, aliases=("conch_v1", "conch-v1"),
        unbuildable="not buildable offline: CONCH's image encoder (a CoCa ViT-B/16 with "
                    "attentional pooling) needs the conch package "
                    "(https://github.com/mahmoodlab/CONCH), whose code exaslide does not "
                    "copy; embed with another encoder"),
    EncoderSpec(
        name="resnet50-trunc", title="ResNet-50 truncated after layer 3 (CLAM)",
        builder="resnet50-trunc", size=224, mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        pooling="avgpool", dim=1024, params=None, key_layout="torchvision",
        hf_repo="timm/resnet50.tv_in1k", hf_files=("model.safetensors", "pytorch_model.bin"),
        card="https://huggingface.co/timm/resnet50.tv_in1k", licence="BSD-3-Clause",
        gated=False, aliases=("resnet50_trunc", "resnet50-clam"),
        notes="torchvision ImageNet weights (IMAGENET1K_V1, as CLAM loads them); layer4 and "
              "fc are dropped, layer3's 1024 channels are average-pooled."),
    EncoderSpec(
        name="exaslide", title="exaslide model file", builder="exaslide-model", size=None,
        mpp=None, mean=None, std=None, pooling="model", dim=None,
        card="docs/models.md", licence="yours", key_layout="exaslide",
        aliases=("exaslide-model",),
        notes="A model written by exaslide train / save_model (--weights MODEL.pt): its file "
              "gives the patch size, resolution and normalisation."),
)

_BY_NAME: dict[str, EncoderSpec] = {s.name: s for s in _SPECS}
_ALIASES: dict[str, str] = {a: s.name for s in _SPECS for a in s.aliases}


def available_encoders() -> list[str]:
    """Registered encoder names, in registry order."""
    return [s.name for s in _SPECS]


def all_specs() -> list[EncoderSpec]:
    """Every registered spec, in registry order."""
    return list(_SPECS)


def get_spec(name: str) -> EncoderSpec:
    """The spec registered as ``name`` (or one of its aliases; case-insensitive).

    Raises:
        EncoderError: unknown name; the message lists the closest names.
    """
    key = str(name).strip().lower()
    spec = _BY_NAME.get(key) or _BY_NAME.get(_ALIASES.get(key, ""))
    if spec is not None:
        return spec
    close = difflib.get_close_matches(key, [*_BY_NAME, *_ALIASES], n=3, cutoff=0.5)
    close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise EncoderError(f"unknown encoder {name!r}; {hint}known encoders: "
                       f"{', '.join(available_encoders())} (exaslide encoders list)")
