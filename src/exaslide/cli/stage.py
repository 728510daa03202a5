"""``exaslide stage``: CAMELYON17 slide classes from heatmaps and patient pN-stages.

``stage train`` fits the slide classifier on heatmaps of slides of known class;
``stage predict`` classifies every slide (with a trained model, or the rule without one),
stages every patient and writes the official submission CSV that ``exaslide evaluate
stage`` scores.
"""

from __future__ import annotations

from pathlib import Path

import click

_ESTIMATORS = ("random-forest", "gradient-boosting")  # slide_classes.ESTIMATORS, unimported


def _common(function):
    """Options shared by both subcommands."""
    function = click.option("--class", "positive_class", default="tumour", show_default=True,
                            help="The tumour class: heatmaps whose metadata names another "
                                 "class are refused.")(function)
    function = click.option("--mpp", type=float, default=None,
                            help="Level-0 microns per pixel, when the heatmaps do not say "
                                 "(or to override).")(function)
    function = click.option("--split", default=None,
                            help="Use only the manifest slides of this split.")(function)
    return click.argument("heatmaps", type=click.Path(file_okay=False))(function)


@click.group("stage")
def command() -> None:
    """CAMELYON17: `train` a slide classifier (negative/itc/micro/macro) on heatmaps,
    `predict` slide classes and patient pN-stages into the official submission CSV."""


def _failures(failed: dict[str, str]) -> None:
    for name, error in failed.items():
        click.echo(f"exaslide: error: {name}: {error}", err=True)


@command.command("train")
@_common
@click.option("--manifest", required=True, type=click.Path(dir_okay=False),
              help="Manifest with a slide_class column (negative, itc, micro, macro).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Model folder (slide_classifier.joblib/.json).")
@click.option("--estimator", type=click.Choice(_ESTIMATORS), default="random-forest",
              show_default=True, help="scikit-learn classifier.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
def train(heatmaps, split, mpp, positive_class, manifest, out_dir, estimator, seed) -> None:
    """Fit the slide classifier on the HEATMAPS (folder of `exaslide infer` outputs) of
    the --manifest slides and their slide_class."""
    from exaslide.evaluate.staging import StageOptions, train_from_heatmaps
    from exaslide.jobs import OutputLock

    options = StageOptions(mpp=mpp, positive_class=positive_class, split=split,
                           estimator=estimator, seed=seed)
    with OutputLock(out_dir):
        result = train_from_heatmaps(heatmaps, manifest, out_dir, options)
    for warning in result.warnings:
        click.echo(f"exaslide: warning: {warning}", err=True)
    _failures(result.failed)
    meta = result.classifier.meta
    counts = ", ".join(f"{k} {v}" for k, v in meta["class_counts"].items())
    cv = meta.get("cross_validation")
    shown = f"cross-validated accuracy {cv['accuracy']:.3f} ({cv['folds']} folds)" if cv \
        else "no cross-validation (a class has fewer than 2 slides)"
    click.echo(f"slide classifier ({estimator}) on {result.slides} slides ({counts}); "
               f"{shown}; {len(result.failed)} failed; model: {Path(out_dir)}")
    if result.failed:
        raise SystemExit(1)


@command.command("predict")
@_common
@click.option("--out", "out_csv", required=True, type=click.Path(dir_okay=False),
              help="Submission CSV (official format: patient,stage).")
@click.option("--model", type=click.Path(file_okay=False), default=None,
              help="Model folder from `exaslide stage train`; without it, the rule: the "
                   "longest region at --threshold against 0.2 / 2 mm.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Slides to predict (default: every heatmap of the folder), their split "
                   "and patient column.")
@click.option("--threshold", type=float, default=None,
              help="Probability threshold of the rule [0.5]; only without --model.")
@click.option("--predictions", type=click.Path(dir_okay=False), default=None,
              help="Also write a per-slide CSV (class, probabilities or diameter, error).")
def predict(heatmaps, split, mpp, positive_class, out_csv, model, manifest, threshold,
            predictions) -> None:
    """Classify the slides of HEATMAPS, stage each patient (pN0..pN2) and write the
    submission CSV; score it with `exaslide evaluate stage`."""
    from exaslide.evaluate.staging import StageOptions, predict_stages

    if model is not None and threshold is not None:
        raise click.UsageError("--threshold sets the rule used without --model; a trained "
                               "model has its own")
    options = StageOptions(mpp=mpp, positive_class=positive_class, split=split,
                           threshold=0.5 if threshold is None else threshold)
    result = predict_stages(heatmaps, out_csv, model=model, manifest=manifest,
                            options=options, predictions_csv=predictions)
    for patient, missing in result.incomplete.items():
        click.echo(f"exaslide: warning: {patient}: staged from {len(missing)} node(s) fewer "
                   f"(not classified: {', '.join(missing)})", err=True)
    _failures(result.failed)
    method = "trained model" if result.method == "model" else \
        f"rule at threshold {options.threshold}"
    click.echo(f"{len(result.slide_classes)} slides classified ({method}), "
               f"{len(result.failed)} failed; {len(result.stages)} patients staged; "
               f"submission: {result.path}")
    if result.failed:
        raise SystemExit(1)


@command.command("from-predictions")
@click.argument("predictions", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", "out_csv", required=True, type=click.Path(dir_okay=False),
              help="Submission CSV (official format: patient,stage).")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Slides to stage, their split and patient column (default: every slide "
                   "of PREDICTIONS, patients from <patient>_node_<n> names).")
@click.option("--split", default=None, help="Only the manifest slides of this split.")
def from_predictions(predictions, out_csv, manifest, split) -> None:
    """Stage each patient from slide classes predicted elsewhere: PREDICTIONS is a CSV
    with slide_id and predicted (what `exaslide mil` writes for task camelyon17) or
    slide_class; writes the submission CSV."""
    from exaslide.evaluate.staging import stages_from_slide_classes_csv

    result = stages_from_slide_classes_csv(predictions, out_csv, manifest=manifest,
                                           split=split)
    for patient, missing in result.incomplete.items():
        click.echo(f"exaslide: warning: {patient}: staged from {len(missing)} node(s) fewer "
                   f"(not in the predictions: {', '.join(missing)})", err=True)
    _failures(result.failed)
    click.echo(f"{len(result.slide_classes)} slides, {len(result.stages)} patients staged; "
               f"submission: {result.path}")
    if result.failed:
        raise SystemExit(1)
