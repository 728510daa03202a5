"""MIL models against hand-written references of the published equations, CLAM and
TransMIL state-dict layouts, forward/backward, permutation invariance, wrong weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exaslide.mil.errors import MILError
from exaslide.mil.registry import create_mil_model
from exaslide.mil.weights import load_mil_model, load_reference_weights, save_mil_model

L_IN, L, D = 12, 10, 6


def _abmil_reference(x, w):
    """Ilse et al. 2018 gated attention (eq. 9) + CLAM's fc and classifier, plain ops:
    h = ReLU(W1 x + b1); A = softmax_N(w^T (tanh(V h + bV) * sigm(U h + bU)) + bw);
    M = sum_n A_n h_n; logits = Wc M + bc."""
    h = torch.relu(x @ w["W1"].T + w["b1"])
    gate = torch.tanh(h @ w["V"].T + w["bV"]) * torch.sigmoid(h @ w["U"].T + w["bU"])
    scores = gate @ w["w"].T + w["bw"]  # N x 1
    attention = torch.exp(scores - scores.max()) / torch.exp(scores - scores.max()).sum()
    pooled = (attention * h).sum(dim=0, keepdim=True)
    return pooled @ w["Wc"].T + w["bc"], attention[:, 0], h


def _clam_instance_reference(attention, h, label, inst, k, subtyping):
    """Lu et al. 2021: in the class, the k most attended patches are positives and the k
    least attended negatives; out of the class (subtyping) the k most attended are
    negatives; cross-entropy averaged over the 2k (k) patches."""
    order = sorted(range(len(attention)), key=lambda i: -float(attention[i]))
    top, bottom = order[:k], order[::-1][:k]
    total = torch.zeros((), dtype=h.dtype)
    for c, (W, b) in enumerate(inst):
        def ce(rows, target, W=W, b=b):
            logits = h[rows] @ W.T + b
            log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            return -log_p[:, target].mean(), len(rows)
        if c == label:
            (pos, n1), (neg, n2) = ce(top, 1), ce(bottom, 0)
            total = total + (pos * n1 + neg * n2) / (n1 + n2)
        elif subtyping:
            total = total + ce(top, 0)[0]
    return total / len(inst) if subtyping else total


def _random_weights(n_classes, instance=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype) * 0.5

    w = {"W1": r(L, L_IN), "b1": r(L), "V": r(D, L), "bV": r(D), "U": r(D, L), "bU": r(D),
         "w": r(1, D), "bw": r(1), "Wc": r(n_classes, L), "bc": r(n_classes)}
    inst = [(r(2, L), r(2)) for _ in range(n_classes)] if instance else []
    return w, inst


def _clam_state_dict(w, inst, prefix_index=3):
    """Keys exactly as CLAM's CLAM_SB.state_dict() writes them."""
    p = f"attention_net.{prefix_index}"
    state = {"attention_net.0.weight": w["W1"], "attention_net.0.bias": w["b1"],
             f"{p}.attention_a.0.weight": w["V"], f"{p}.attention_a.0.bias": w["bV"],
             f"{p}.attention_b.0.weight": w["U"], f"{p}.attention_b.0.bias": w["bU"],
             f"{p}.attention_c.weight": w["w"], f"{p}.attention_c.bias": w["bw"],
             "classifiers.weight": w["Wc"], "classifiers.bias": w["bc"]}
    for c, (W, b) in enumerate(inst):
        state[f"instance_classifiers.{c}.weight"] = W
        state[f"instance_classifiers.{c}.bias"] = b
    return state


def _model(name, n_classes, **kwargs):
    return create_mil_model(name, L_IN, n_classes, hidden=[L, D], dropout=0.0,
                            **kwargs).double().eval()


def test_abmil_equals_the_published_equations():
    w, _ = _random_weights(3, instance=False)
    model = _model("abmil", 3)
    load_reference_weights(model, _clam_state_dict(w, []))
    x = torch.randn(57, L_IN, dtype=torch.float64)
    out = model(x)
    logits, attention, _ = _abmil_reference(x, w)
    torch.testing.assert_close(out["logits"], logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["attention"], attention, atol=1e-6, rtol=0)
    assert float(out["attention"].detach().sum()) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(("n_classes", "label", "subtyping", "n"),
                         [(2, 1, False, 40), (2, 0, False, 40), (3, 2, True, 30),
                          (2, 1, False, 5)])  # N < k_sample: k = N
def test_clam_sb_equals_the_published_equations(n_classes, label, subtyping, n):
    w, inst = _random_weights(n_classes)
    model = _model("clam_sb", n_classes, k_sample=8, subtyping=subtyping)
    load_reference_weights(model, _clam_state_dict(w, inst))
    x = torch.randn(n, L_IN, dtype=torch.float64)
    out = model(x, torch.tensor([label]))
    logits, attention, h = _abmil_reference(x, w)
    torch.testing.assert_close(out["logits"], logits, atol=1e-6, rtol=0)
    expected = _clam_instance_reference(attention, h, label, inst, min(8, n), subtyping)
    torch.testing.assert_close(out["instance_loss"], expected, atol=1e-6, rtol=0)
    from exaslide.mil.loop import bag_loss

    total = bag_loss(out, torch.tensor([label]), None, 0.7)
    bag = -torch.log_softmax(logits, dim=1)[0, label]
    torch.testing.assert_close(total, 0.7 * bag + 0.3 * expected, atol=1e-6, rtol=0)


def test_clam_layouts_load_old_new_wrapped_and_into_abmil(tmp_path):
    w, inst = _random_weights(2)
    x = torch.randn(20, L_IN, dtype=torch.float64)
    expected = _abmil_reference(x, w)[0]
    layouts = {"new": _clam_state_dict(w, inst),
               "old (no dropout)": _clam_state_dict(w, inst, prefix_index=2),
               "DataParallel": {f"module.{k}": v for k, v in _clam_state_dict(w, inst).items()}}
    for name, state in layouts.items():
        path = tmp_path / f"{name}.pt"
        torch.save(state, path)
        for arch in ("clam_sb", "abmil"):
            model = _model(arch, 2)
            load_reference_weights(model, path)
            torch.testing.assert_close(model(x)["logits"], expected, atol=1e-6, rtol=0,
                                       msg=f"{name} into {arch}")


def test_transmil_reference_layout_loads_from_a_lightning_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = create_mil_model("transmil", L_IN, 2, hidden=[16]).eval()
    keys = set(source.state_dict())
    for key in ("_fc1.0.weight", "cls_token", "layer1.norm.weight", "layer1.attn.to_qkv.weight",
                "layer1.attn.to_out.0.bias", "layer1.attn.res_conv.weight",
                "layer2.attn.to_qkv.weight", "pos_layer.proj.weight", "pos_layer.proj1.bias",
                "pos_layer.proj2.weight", "norm.bias", "_fc2.weight"):
        assert key in keys  # the reference's names (szc19990412/TransMIL)
    path = tmp_path / "epoch=10.ckpt"
    torch.save({"epoch": 10, "state_dict": {f"model.{k}": v for k, v in
                                            source.state_dict().items()}}, path)
    target = create_mil_model("transmil", L_IN, 2, hidden=[16]).eval()
    load_reference_weights(target, path)
    x = torch.randn(23, L_IN)
    torch.testing.assert_close(target(x)["logits"], source(x)["logits"])


@pytest.mark.parametrize("name", ["meanpool", "abmil", "clam_sb", "transmil"])
def test_forward_backward_on_tiny_bags(name, one_torch_thread):
    torch.manual_seed(0)
    hidden = [16] if name in ("meanpool", "transmil") else [L, D]
    model = create_mil_model(name, L_IN, 3, hidden=hidden).train()
    for n in (1, 2, 5, 17):
        out = model(torch.randn(n, L_IN), torch.tensor([1]))
        assert out["logits"].shape == (1, 3)
        loss = F.cross_entropy(out["logits"], torch.tensor([1])) + out.get("instance_loss", 0)
        model.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        scores = model.eval().patch_scores(torch.randn(n, L_IN))
        model.train()
        assert scores.shape == (n,) and float(scores.min()) >= 0 and float(scores.max()) <= 1


@pytest.mark.parametrize("name", ["meanpool", "abmil", "clam_sb"])
def test_attention_pooling_is_permutation_invariant(name):
    torch.manual_seed(0)
    hidden = [16] if name == "meanpool" else [L, D]
    model = create_mil_model(name, L_IN, 2, hidden=hidden).double().eval()
    x = torch.randn(31, L_IN, dtype=torch.float64)
    perm = torch.randperm(31)
    a, b = model(x), model(x[perm])
    torch.testing.assert_close(a["logits"], b["logits"], atol=1e-12, rtol=0)
    if "attention" in a:
        torch.testing.assert_close(a["attention"][perm], b["attention"], atol=1e-12, rtol=0)


def test_weights_of_another_architecture_are_one_line(tmp_path):
    transmil = create_mil_model("transmil", L_IN, 2, hidden=[16])
    path = tmp_path / "transmil.pt"
    torch.save(transmil.state_dict(), path)
    with pytest.raises(MILError) as info:
        load_reference_weights(_model("abmil", 2), path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "abmil" in message
    assert "missing attention_net.0.bias" in message and "unexpected" in message
    w, inst = _random_weights(2)  # CLAM weights for 12-dim features into a 24-dim model
    wide = create_mil_model("clam_sb", 2 * L_IN, 2, hidden=[L, D])
    with pytest.raises(MILError, match=r"attention_net.0.weight \[10, 12\] \(the model's: "
                                       r"\[10, 24\]\)"):
        load_reference_weights(wide, _clam_state_dict(w, inst))


def test_model_file_round_trip_and_foreign_files(tmp_path):
    from exaslide.models import create_model, save_model

    model = _model("clam_sb", 2).float()
    path = save_mil_model(tmp_path / "model.pt", model, {"classes": ["normal", "tumour"]})
    assert (tmp_path / "model.pt.sha256").exists()
    again, meta = load_mil_model(path)
    assert meta["model"] == "clam_sb" and meta["dims"]["hidden"] == [L, D]
    x = torch.randn(9, L_IN)
    torch.testing.assert_close(again(x)["logits"], model(x)["logits"])
    patch_model = save_model(tmp_path / "cnn.pt", create_model("small-cnn", num_classes=2),
                             {"classes": ["normal", "tumour"]})
    with pytest.raises(MILError, match=r"cnn.pt: a patch model file \('small-cnn'"):
        load_mil_model(patch_model)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(MILError, match="not an exaslide MIL model file"):
        load_mil_model(tmp_path / "bare.pt")
