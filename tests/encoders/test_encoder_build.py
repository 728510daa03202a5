"""Building encoders: every architecture (the giant ones on the ``meta`` device, their
parameter counts checked against the cards), weights in the published key layout load
and give identical outputs, and bad weights fail in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exaslide.encoders import (
    EncoderError,
    build_backbone,
    build_encoder,
    encode,
    get_spec,
    weights_id,
)
from exaslide.encoders.build import output_dim
from exaslide.encoders.module import Encoder

#: Parameters of each architecture as built from its spec (exact; a change of a spec or
#: of timm shows here). ``card``: the count the model card or paper gives, and the
#: relative tolerance it is checked to: 1% for a card giving 3 significant digits
#: (Virchow2: 632M), 5% for 2 (H-optimus: 1.1B). Where the card gives none the count is
#: reported in docs/encoders.md.
PARAMS = {
    "uni": (303_350_784, None),
    "uni2-h": (681_394_176, None),
    "virchow2": (631_239_424, (632e6, 0.01)),
    "h-optimus-0": (1_134_774_272, (1.1e9, 0.05)),
    "h-optimus-1": (1_134_774_272, (1.1e9, 0.05)),
    "prov-gigapath": (1_134_953_984, None),
    "phikon-v2": (303_350_784, None),
    "resnet50-trunc": (8_543_296, None),
}
#: A narrow ViT built by each spec's own builder (the spec's other arguments kept).
TINY = {"embed_dim": 64, "depth": 1, "num_heads": 4, "mlp_ratio": 4.0}
VITS = ["uni", "uni2-h", "virchow2", "h-optimus-0", "prov-gigapath", "phikon-v2"]


def _images(n=2, size=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_full_size_architecture_on_meta(name):
    spec = get_spec(name)
    with torch.device("meta"):
        backbone = build_backbone(spec)
        encoder = Encoder(backbone, spec.pooling, output_dim(spec, backbone), name)
        out = encoder(torch.empty(2, 3, spec.size, spec.size))
    count = sum(p.numel() for p in backbone.parameters())
    exact, card = PARAMS[name]
    assert count == exact
    if card is not None:
        assert abs(count - card[0]) <= card[1] * card[0]
    assert tuple(out.shape) == (2, spec.dim) and encoder.embedding_dim == spec.dim


def test_resnet50_trunc_is_clams_truncated_resnet(tmp_path):
    import torchvision

    torch.manual_seed(1)
    full = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "resnet50.pth"  # the published (torchvision) layout, layer4 and fc too
    torch.save(full.state_dict(), path)
    module, _ = build_encoder("resnet50-trunc", weights=path)
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        f = full
        ref = f.layer3(f.layer2(f.layer1(f.maxpool(f.relu(f.bn1(f.conv1(x)))))))
        expected = torch.nn.functional.adaptive_avg_pool2d(ref, 1).flatten(1)
        got = module(x)
    assert got.shape == (2, 1024) and torch.equal(got, expected)
    assert module.exaslide_weights == weights_id(path)


def _card_rule(name, backbone, x):
    """The embedding as each card computes it from the timm model's output."""
    out = backbone(x)
    if name == "virchow2":  # card: class token ++ mean of output[:, 5:]
        return torch.cat([out[:, 0], out[:, 5:].mean(1)], dim=-1)
    return out  # timm's pooled class token (num_classes=0)


@pytest.mark.parametrize("name", VITS[:-1])
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_published_timm_layout_loads_and_gives_identical_outputs(name, fmt, tmp_path):
    spec = get_spec(name)
    torch.manual_seed(2)
    source = build_backbone(spec, TINY).eval()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "bin":
        torch.save(source.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    module, _ = build_encoder(name, weights=path, overrides=TINY)
    x = torch.rand(1, 3, spec.size, spec.size)
    with torch.inference_mode():
        expected = _card_rule(name, source, x)
        got = module(x)
    assert got.shape == (1, 128 if name == "virchow2" else 64)
    assert torch.equal(got, expected)


def _hf_dinov2():
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, patch_size=16, image_size=224,
                                       layerscale_value=1e-5)
    torch.manual_seed(3)
    model = transformers.Dinov2Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _transformers4_names(state):
    """The key names of the published phikon-v2 file (saved by transformers 4)."""
    out = {}
    for key, value in state.items():
        for new, old in (("attention.q_proj.", "attention.attention.query."),
                         ("attention.k_proj.", "attention.attention.key."),
                         ("attention.v_proj.", "attention.attention.value."),
                         ("attention.o_proj.", "attention.output.dense.")):
            key = key.replace(new, old)
        out[key] = value
    return out


@pytest.mark.parametrize("names", ["transformers5", "published"])
def test_phikon_v2_transformers_layout_maps_to_timm(names, tmp_path):
    from safetensors.torch import save_file

    hf = _hf_dinov2()
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if names == "published":
        state = _transformers4_names(state)
        assert "encoder.layer.0.attention.attention.query.weight" in state
    save_file(state, tmp_path / "model.safetensors")
    module, _ = build_encoder("phikon-v2", weights=tmp_path, overrides={"embed_dim": 64,
                                                                        "depth": 2,
                                                                        "num_heads": 4})
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        expected = hf(pixel_values=x).last_hidden_state[:, 0]
        got = module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_weights_of_another_architecture_fail_in_one_line(tmp_path):
    torch.manual_seed(4)
    path = tmp_path / "uni.bin"
    torch.save(build_backbone(get_spec("uni"), TINY).state_dict(), path)
    with pytest.raises(EncoderError) as info:
        build_encoder("virchow2", weights=path, overrides=TINY)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: not Virchow2 weights")
    assert "missing (e.g. reg_token)" in message and "of another shape" in message
    assert "https://huggingface.co/paige-ai/Virchow2" in message
    with pytest.raises(EncoderError, match=r"not ResNet-50 truncated .* missing \(e\.g\. "
                                           r"conv1.weight\); \d+ unexpected"):
        build_encoder("resnet50-trunc", weights=path)


def test_corrupt_and_unbuildable_fail_in_one_line(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(EncoderError, match="not a readable safetensors file"):
        build_encoder("phikon-v2", weights=bad)
    junk = tmp_path / "pytorch_model.bin"
    junk.write_bytes(b"junk")
    with pytest.raises(EncoderError, match="not a readable PyTorch weights file"):
        build_encoder("uni", weights=junk)
    with pytest.raises(EncoderError, match=r"^conch: not buildable offline: .*conch package"):
        build_encoder("conch", weights=junk)


def test_random_weights_are_seeded_and_encode_takes_any_image_layout():
    a, spec = build_encoder("uni2-h", random_weights=True, overrides=TINY)
    b, _ = build_encoder("uni2-h", random_weights=True, overrides=TINY)
    assert a.exaslide_weights == "random:seed0" and a.exaslide_weights_path is None
    images = _images()
    nhwc = encode(a, spec, images)
    assert torch.equal(nhwc, encode(b, spec, images))
    nchw_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(encode(a, spec, nchw_float), nhwc, rtol=1e-5, atol=1e-5)
    assert encode(a, spec, _images(1, 256)).shape == (1, 64)  # resized + centre-cropped
    with pytest.raises(EncoderError, match="expected RGB images"):
        encode(a, spec, np.zeros((1, 224, 224, 4), np.uint8))


def test_encode_normalises_with_the_spec(tmp_path):
    module, spec = build_encoder("h-optimus-0", random_weights=True, overrides=TINY)
    images = _images(1)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.inference_mode():
        expected = module.backbone(x)
    torch.testing.assert_close(encode(module, spec, images), expected, rtol=1e-5,
                               atol=1e-5)


def test_an_exaslide_model_file_is_an_encoder(tmp_path):
    from exaslide.models import create_model, forward_features, save_model

    torch.manual_seed(5)
    model = create_model("small-cnn").eval()
    meta = {"classes": ["normal", "tumour"], "patch": {"size": 64, "level": None,
                                                       "mpp": 1.0},
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    path = save_model(tmp_path / "model.pt", model, meta)
    module, spec = build_encoder("exaslide", weights=path)
    assert (spec.size, spec.mpp, spec.mean, spec.std) == (64, 1.0, (0.5,) * 3, (0.25,) * 3)
    images = _images(2, 64)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.inference_mode():
        expected = forward_features(model, x)
    torch.testing.assert_close(encode(module, spec, images), expected, rtol=1e-5,
                               atol=1e-5)
    assert spec.dim == expected.shape[1]
    with pytest.raises(EncoderError, match="give the model file"):
        build_encoder("exaslide")
