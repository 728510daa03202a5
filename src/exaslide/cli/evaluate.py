"""``exaslide evaluate``: metrics of heatmaps against a manifest; ``evaluate stage``: the
CAMELYON17 pN-stage kappa of a submission."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

_RUN_OPTIONS = ("heatmaps", "manifest", "out_dir", "patch_predictions", "split", "mpp")


@click.group("evaluate", invoke_without_command=True)
@click.option("--heatmaps", type=click.Path(), help="Folder of <slide_id>.heatmap.npy/.json "
              "files (from `exaslide infer`).")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="Cohort manifest CSV: each slide's id, annotation and label.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output folder for metrics.json, CSVs and figures.")
@click.option("--patch-predictions", type=click.Path(dir_okay=False),
              help="CSV of patch labels and scores (columns label,score) for patch metrics.")
@click.option("--split", default=None, help="Evaluate only the manifest slides of this split.")
@click.option("--mpp", type=float, default=None,
              help="Level-0 microns per pixel, when the heatmaps do not say (or to override).")
@click.option("--detection-threshold", type=float, default=0.5, show_default=True,
              help="Lowest probability of a lesion detection (FROC).")
@click.option("--min-distance-um", type=float, default=200.0, show_default=True,
              help="Suppression distance between lesion detections, in microns.")
@click.option("--slide-score", "slide_method", type=click.Choice(["max", "p99"]),
              default="max", show_default=True, help="Slide score from its heatmap.")
@click.option("--froc-method", type=click.Choice(["official", "linear"]), default="official",
              show_default=True, help="How sensitivities at 1/4..8 FPs are read off the FROC.")
@click.option("--patch-threshold", type=float, default=0.5, show_default=True,
              help="Patch predicted tumour when its score is at least this.")
@click.option("--class", "positive_class", default="tumour", show_default=True,
              help="The positive class: heatmaps whose metadata names another class "
                   "(`exaslide infer --class`) are refused.")
@click.pass_context
def command(ctx: click.Context, heatmaps, manifest, out_dir, patch_predictions, split, mpp,
            detection_threshold, min_distance_um, slide_method, froc_method,
            patch_threshold, positive_class) -> None:
    """Evaluate predictions: `heatmaps` (patch/slide AUC and CAMELYON16 FROC), `stage`
    (CAMELYON17 pN-stage kappa), `retrieval` (precision@k and mAP of an index)."""
    if ctx.invoked_subcommand is not None:
        given = [f"--{n.replace('_dir', '').replace('_', '-')}" for n in _RUN_OPTIONS
                 if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)} belong to `exaslide evaluate "
                                   f"heatmaps`, not to `exaslide evaluate "
                                   f"{ctx.invoked_subcommand}`")
        return
    if heatmaps is None and manifest is None and out_dir is None:
        click.echo(ctx.get_help())
        return
    click.echo("exaslide: note: `exaslide evaluate --heatmaps ...` is now `exaslide evaluate "
               "heatmaps ...`; the old form goes in the next release", err=True)
    _heatmaps(heatmaps, manifest, out_dir, patch_predictions, split, mpp, detection_threshold,
              min_distance_um, slide_method, froc_method, patch_threshold, positive_class)


def _heatmaps(heatmaps, manifest, out_dir, patch_predictions, split, mpp,
              detection_threshold, min_distance_um, slide_method, froc_method,
              patch_threshold, positive_class) -> None:
    """Patch, slide (ROC AUC) and lesion (CAMELYON16 FROC) metrics of the heatmaps in
    --heatmaps against --manifest; writes metrics.json, slide_scores.csv, detections.csv
    and ROC/FROC figures into --out."""
    missing = [f"--{n}" for n, v in (("heatmaps", heatmaps), ("manifest", manifest),
                                      ("out", out_dir)) if v is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)}")
    from exaslide.evaluate.run import EvaluateOptions, evaluate_run

    options = EvaluateOptions(detection_threshold=detection_threshold,
                              min_distance_um=min_distance_um, slide_method=slide_method,
                              froc_method=froc_method, patch_threshold=patch_threshold,
                              mpp=mpp, split=split, positive_class=positive_class)
    from exaslide.jobs import OutputLock

    with OutputLock(out_dir):
        metrics = evaluate_run(heatmaps, manifest, out_dir, patch_predictions, options)
    _report(metrics, Path(out_dir))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _report(metrics: dict, out: Path) -> None:
    patch, slide, lesion = metrics["patch"], metrics["slide"], metrics["lesion"]
    if patch:
        click.echo(f"patch: n={patch['n']} AUC {_fmt(patch['roc_auc'])} accuracy "
                   f"{_fmt(patch['accuracy'])} F1 {_fmt(patch['f1'])}")
    if slide:
        click.echo(f"slide: n={slide['n']} ({slide['positives']} tumour) AUC "
                   f"{_fmt(slide['roc_auc'])}")
    if lesion:
        click.echo(f"lesion: FROC score {_fmt(lesion['score'])} ({lesion['num_lesions']} "
                   f"lesions, {lesion['num_slides']} slides)")
    failed = metrics["slides"]["failed"]
    for item in failed:
        click.echo(f"exaslide: error: {item['slide_id']}: {item['error']}", err=True)
    click.echo(f"{metrics['slides']['evaluated']} slides evaluated, {len(failed)} failed; "
               f"metrics in {out / 'metrics.json'}")
    if failed:
        raise SystemExit(1)


@command.command("stage")
@click.option("--reference", required=True, type=click.Path(dir_okay=False),
              help="Reference stage CSV (official format: patient,stage).")
@click.option("--submission", required=True, type=click.Path(dir_okay=False),
              help="Submitted stage CSV (same format).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def stage(reference: str, submission: str, as_json: bool) -> None:
    """CAMELYON17 score: quadratic-weighted Cohen's kappa of the submitted patient pN-stages
    against the reference."""
    from exaslide.evaluate.camelyon17 import stage_report

    report = stage_report(reference, submission)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"kappa (quadratic) {report['kappa']:.4f} over {report['patients']} patients; "
               f"accuracy {report['accuracy']:.4f}")


heatmaps = click.Command("heatmaps", params=[p for p in command.params
                                             if p.name not in ("help",)],
                         callback=_heatmaps, help=_heatmaps.__doc__)
command.add_command(heatmaps)
