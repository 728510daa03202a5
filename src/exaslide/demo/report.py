"""``report.html``: one self-describing page of the demo's figures and metrics.

The page links the images beside it (relative paths), so the output folder can be moved
or served as it is: the three-panel mask figure, the training curves, the heatmap overlays
of the test slides, the FROC curve, the ROC curves and a table of the metrics.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from exaslide.atomic import write_text


def plot_training(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and validation AUC per epoch (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    left.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    if all("val_loss" in row for row in history):
        left.plot(epochs, [row["val_loss"] for row in history], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    left.legend()
    right.plot(epochs, [row.get("val_auc") for row in history], "o-", color="C2")
    right.set(xlabel="epoch", ylabel="ROC AUC", title="Validation AUC", ylim=(0.0, 1.02))
    figure.tight_layout()
    with_tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(with_tmp)
    plt.close(figure)
    with_tmp.replace(path)
    return path


def format_seconds(seconds: float) -> str:
    """A duration for people: ``12.3 s`` under a minute, ``1 min 05 s`` under an hour,
    ``1 h 02 min`` above."""
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _image(out: Path, path: Path, caption: str) -> str:
    if not path.exists():
        return f"<p class='missing'>{html.escape(caption)}: not produced</p>"
    source = html.escape(str(path.relative_to(out)))
    return (f"<figure><a href='{source}'><img src='{source}' alt='{html.escape(caption)}'>"
            f"</a><figcaption>{html.escape(caption)}</figcaption></figure>")


def _confusion(title: str, classes: list[str] | None, matrix: list[list[int]] | None) -> str:
    """A confusion matrix as an HTML table (rows: reference, columns: predicted)."""
    if not classes or not matrix:
        return f"<p class='missing'>{html.escape(title)}: not produced</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in classes)
    body = "".join(f"<tr><th>{html.escape(str(c))}</th>" +
                   "".join(f"<td>{int(v)}</td>" for v in row) + "</tr>"
                   for c, row in zip(classes, matrix, strict=False))
    return (f"<table><caption>{html.escape(title)}</caption><tr><th></th>{head}</tr>"
            f"{body}</table>")


def write_report(out: Path, metrics: dict[str, Any], *, figure: Path,
                 test_slides: list[str]) -> Path:
    """Write ``out/report.html`` (and ``out/training_curves.png``)."""
    curves = plot_training(metrics["training"]["history"], out / "training_curves.png")
    patch, lesion = metrics.get("patch") or {}, metrics.get("lesion") or {}
    rows = [
        ("Patch ROC AUC (test slides)", metrics.get("patch_auc")),
        ("Patch accuracy at 0.5", patch.get("accuracy")),
        ("Patch F1 at 0.5", patch.get("f1")),
        ("Slide ROC AUC (max probability)", metrics.get("slide_auc")),
        ("Lesion FROC score (CAMELYON16)", metrics.get("froc")),
        ("Image-to-image retrieval precision@10 (test queries, by label)",
         metrics.get("retrieval_precision_at_10")),
        ("Text-to-image recall@10 (held-out captioned figures)",
         metrics.get("text_to_image_recall_at_10")),
        ("Text-to-image recall@10, random baseline",
         (metrics.get("captions") or {}).get("random", {}).get(10)),
        ("MIL (ABMIL) slide ROC AUC (test slides, CNN features)",
         metrics.get("mil_slide_auc")),
        ("CAMELYON17 pN-stage quadratic kappa (test patients)", metrics.get("stage_kappa")),
        ("Test slides", len(test_slides)),
        ("Best validation AUC (epoch)",
         f"{_number(metrics['training']['best_val_auc'])} "
         f"({metrics['training']['best_epoch']})"),
    ]
    rows += [(f"Time: {name}", format_seconds(value))
             for name, value in metrics.get("seconds", {}).items()]
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{_number(v)}</td></tr>"
                      for k, v in rows)
    overlays = "\n".join(_image(out, out / "heatmaps" / f"{s}.overlay.png",
                                f"{s}: tumour probability") for s in test_slides)
    sensitivities = lesion.get("sensitivity_at") or {}
    froc_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_number(v)}</td></tr>"
                        for k, v in sensitivities.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>exaslide demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
img {{ max-width: 520px; max-height: 420px; border: 1px solid #ddd; }}
.missing {{ color: #a00; }}
</style></head><body>
<h1>exaslide demo</h1>
<p>A synthetic cohort with known tumours: masks, patches, a small CNN trained on CPU,
whole-slide heatmaps of the held-out test slides, and the CAMELYON16 metrics.</p>
<h2>Metrics</h2>
<table>{table}</table>
<h2>Slide, normal tissue and tumour mask</h2>
{_image(out, figure, "slide | normal-tissue mask | tumour mask")}
<h2>Training</h2>
{_image(out, curves, "loss and validation AUC per epoch")}
<h2>Heatmaps of the test slides</h2>
{overlays}
<h2>Lesion detection (FROC)</h2>
{_image(out, out / "evaluation" / "froc.png", "FROC curve")}
<table><tr><th>average false positives per slide</th><th>sensitivity</th></tr>
{froc_rows}</table>
<h2>ROC curves</h2>
{_image(out, out / "evaluation" / "patch_roc.png", "patch-level ROC")}
{_image(out, out / "evaluation" / "slide_roc.png", "slide-level ROC")}
<h2>Case-based retrieval</h2>
<p>Patches of the test slides queried against the training and validation patches (by
the trained model's embeddings, exact cosine search); and a text query against synthetic
captioned figures, through projection heads trained with a contrastive loss.</p>
{_image(out, out / "retrieval_gallery.png", "a tumour query patch and its nearest patches")}
{_image(out, out / "text_query_gallery.png",
        "text query: " + str((metrics.get("captions") or {}).get("query", "")))}
<h2>Slide-level learning (MIL)</h2>
<p>ABMIL (gated attention, CLAM's form) trained on the CNN's patch features: the test
slide's CNN heatmap (left) and its attention map, scaled to the slide's MIL score
(right).</p>
{_image(out, out / "mil_attention.png", "CNN heatmap | ABMIL attention")}
{_confusion("MIL slides (rows: reference, columns: predicted)",
            (metrics.get("mil") or {}).get("classes"),
            (metrics.get("mil") or {}).get("confusion_matrix"))}
<h2>CAMELYON17: lymph-node classes and patient pN stage</h2>
<p>Synthetic patients with lesions sized by the CAMELYON17 definitions; a slide classifier
on features of the CNN heatmaps (trained on the training patients), the official stage
rule, and the quadratic kappa on the test patients.</p>
{_confusion("node classes", (metrics.get("camelyon17") or {}).get("slide_classes", {})
            .get("classes"), (metrics.get("camelyon17") or {}).get("slide_classes", {})
            .get("confusion_matrix"))}
{_confusion("pN stages", (metrics.get("camelyon17") or {}).get("stage", {}).get("stages"),
            (metrics.get("camelyon17") or {}).get("stage", {}).get("confusion_matrix"))}
<p>All numbers: <a href="metrics.json">metrics.json</a>;
evaluation details: <a href="evaluation/metrics.json">evaluation/metrics.json</a>.</p>
</body></html>
"""
    return write_text(out / "report.html", page)
