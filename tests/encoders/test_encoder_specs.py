"""The registry: every spec's numbers are the card's, names resolve, unknown ones fail in
one line with close matches, and the registry imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exaslide.encoders import POOLINGS, EncoderError, all_specs, available_encoders, get_spec

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BIOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

#: (size, µm/px, mean/std, embedding rule, dim) as the model cards give them (cited in
#: docs/encoders.md): the transforms the specs apply must be these.
CARDS = {
    "uni": (224, 0.5, IMAGENET, "cls", 1024),
    "uni2-h": (224, 0.5, IMAGENET, "cls", 1536),
    "virchow2": (224, 0.5, IMAGENET, "cls+mean", 2560),
    "h-optimus-0": (224, 0.5, BIOPTIMUS, "cls", 1536),
    "h-optimus-1": (224, 0.5, BIOPTIMUS, "cls", 1536),
    "prov-gigapath": (224, 0.5, IMAGENET, "cls", 1536),
    "phikon-v2": (224, 0.5, IMAGENET, "cls", 1024),
    "resnet50-trunc": (224, 0.5, IMAGENET, "avgpool", 1024),
}

#: The timm arguments the cards pass (UNI's and UNI2-h's README, Virchow2's and
#: Prov-GigaPath's config.json, H-optimus' card), layer classes by name.
CARD_KWARGS = {
    "uni": ("vit_large_patch16_224", {"img_size": 224, "patch_size": 16,
                                      "init_values": 1e-5, "num_classes": 0,
                                      "dynamic_img_size": True}),
    "uni2-h": ("vit_giant_patch14_224", {
        "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
        "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0,
        "no_embed_class": True, "mlp_layer": "timm.layers.SwiGLUPacked",
        "act_layer": "torch.nn.SiLU", "reg_tokens": 8, "dynamic_img_size": True}),
    "virchow2": ("vit_huge_patch14_224", {
        "img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4,
        "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True,
        "mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}),
    "h-optimus-0": ("vit_giant_patch14_reg4_dinov2", {
        "img_size": 224, "init_values": 1e-5, "num_classes": 0, "global_pool": "token",
        "dynamic_img_size": False}),
    "prov-gigapath": ("vit_giant_patch14_dinov2", {
        "img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
        "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0,
        "global_pool": "token"}),
}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_transforms_and_rules_are_the_cards(name):
    spec = get_spec(name)
    size, mpp, (mean, std), pooling, dim = CARDS[name]
    assert (spec.size, spec.mpp, spec.mean, spec.std, spec.pooling, spec.dim) == \
        (size, mpp, mean, std, pooling, dim)


@pytest.mark.parametrize("name", sorted(CARD_KWARGS))
def test_architecture_arguments_are_the_cards(name):
    arch, kwargs = CARD_KWARGS[name]
    spec = get_spec(name)
    assert spec.arch == arch and spec.kwargs == kwargs


def test_every_spec_is_complete():
    names = available_encoders()
    assert {"uni", "uni2-h", "virchow2", "h-optimus-0", "h-optimus-1", "prov-gigapath",
            "phikon-v2", "conch", "resnet50-trunc", "exaslide"} == set(names)
    for spec in all_specs():
        assert spec.pooling in POOLINGS and spec.card and spec.licence
        description = spec.describe()
        assert {"name", "dim", "mpp", "size"} <= set(description)
        if spec.hf_repo:
            assert spec.hf_files and spec.card.startswith("https://huggingface.co/")
    assert get_spec("h-optimus-1").kwargs == get_spec("h-optimus-0").kwargs
    assert not get_spec("conch").buildable and "conch package" in get_spec("conch").unbuildable


@pytest.mark.parametrize("alias,name", [("UNI_v1", "uni"), ("uni_v2", "uni2-h"),
                                        ("hoptimus0", "h-optimus-0"),
                                        ("gigapath", "prov-gigapath"),
                                        ("resnet50_trunc", "resnet50-trunc"),
                                        (" Virchow2 ", "virchow2")])
def test_names_and_aliases_resolve(alias, name):
    assert get_spec(alias).name == name


def test_unknown_names_fail_in_one_line_with_close_matches():
    with pytest.raises(EncoderError) as info:
        get_spec("virchow")
    message = str(info.value)
    assert "\n" not in message and "did you mean virchow2?" in message
    assert "exaslide encoders list" in message
    with pytest.raises(EncoderError, match="unknown encoder 'zzz'; known encoders: uni"):
        get_spec("zzz")


def test_the_registry_imports_nothing_heavy():
    code = ("import sys, exaslide.encoders, exaslide.cli.encoders; "
            "print(sorted(m for m in ('torch', 'timm', 'huggingface_hub') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
