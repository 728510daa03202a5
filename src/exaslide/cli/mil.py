"""``exaslide mil train|predict``: MIL slide classifiers on patch features."""

from __future__ import annotations

import click

from exaslide.cli.options import check_config, run_locked


@click.group("mil")
def command() -> None:
    """Multiple-instance learning: slide classifiers (mean-pool, ABMIL, CLAM-SB, TransMIL)
    on the patch features of an embedding store (see docs/mil.md)."""


@command.command("train")
@click.argument("config_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config option (value read as YAML), e.g. --set model=clam_sb.")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoints/last.pt (finished folds are kept).")
@click.option("--check", is_flag=True,
              help="Validate the configuration, print it resolved (YAML) and stop.")
def train_command(config_file, sets, resume, check) -> None:
    """Train and test a MIL model from CONFIG_FILE (YAML: features, manifest, out,
    model, ...). Writes OUT/model.pt, metrics.json, predictions.csv and heatmaps/.
    Slides missing from the store or with empty bags are listed and left out. Several
    processes: torchrun --nproc-per-node N -m exaslide mil train CONFIG_FILE."""
    from exaslide.mil.config import dump_config, load_mil_config

    config = load_mil_config(config_file, list(sets))
    if check:
        check_config(config, dump_config)
        return
    from exaslide.mil.train import train_mil

    result = run_locked(config.out, lambda: train_mil(config, resume=resume))
    if result.metrics is None:  # not rank 0
        return
    for line in result.warnings:
        click.echo(f"exaslide: warning: {line}", err=True)
    click.echo(_train_summary(result))


def _number(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _train_summary(result) -> str:
    m = result.metrics
    what = "out-of-fold" if "folds" in m else "test"
    return (f"{m['model']}: {m['n']} {what} slides: slide AUC {_number(m['slide_auc'])}, "
            f"balanced accuracy {_number(m['balanced_accuracy'])}, macro F1 "
            f"{_number(m['macro_f1'])}; {m['heatmaps']['written']} heatmaps; outputs in "
            f"{result.out} (model: {', '.join(map(str, result.model_paths))})")


@command.command("predict")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("features", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (predictions.csv, heatmaps/, predict.json).")
@click.option("--manifest", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Cohort manifest giving the slide paths for the heatmaps [the "
                   "extraction's records].")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--heatmaps/--no-heatmaps", default=True, show_default=True,
              help="Write per-patch heatmaps.")
@click.option("--score", type=click.Choice(["attention", "instance"]), default="attention",
              show_default=True, help="Heatmap values (instance: CLAM-SB's instance "
                                      "classifiers).")
def predict_command(model, features, out_dir, manifest, device, heatmaps, score) -> None:
    """Predict every slide of the feature store FEATURES with the MIL MODEL (a model.pt
    of `exaslide mil train`). A slide that cannot be predicted is one line on stderr and
    exit code 1; the others are written."""
    from exaslide.jobs import OutputLock
    from exaslide.mil.predict import predict_mil

    with OutputLock(out_dir):
        result = predict_mil(model, features, out_dir, manifest=manifest, device=device,
                             heatmaps=heatmaps, score=score)
    for line in result.heatmap_failures:
        click.echo(f"exaslide: warning: heatmap {line}", err=True)
    for failure in result.failed:
        click.echo(f"exaslide: error: {failure['slide_id']}: "
                   f"{' '.join(failure['error'].split())}", err=True)
    click.echo(f"{len(result.rows) + len(result.failed)} slides: {len(result.rows)} "
               f"predicted, {len(result.failed)} failed; {result.heatmaps} heatmaps; "
               f"outputs in {result.out}")
    if result.failed:
        raise SystemExit(1)
