"""``exaslide demo``: the whole pipeline on built-in synthetic data."""

from __future__ import annotations

import shlex
from pathlib import Path

import click


@click.command("demo")
@click.option("--out", "out_dir", default="demo_out", show_default=True,
              type=click.Path(file_okay=False), help="Output folder.")
@click.option("--slides", type=int, default=12, show_default=True,
              help="Synthetic slides (half with tumours; at least 6).")
@click.option("--width", type=int, default=4096, show_default=True)
@click.option("--height", type=int, default=3072, show_default=True)
@click.option("--epochs", type=int, default=4, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True,
              help="Dask workers for patch extraction.")
@click.option("--patients", type=click.IntRange(min=10), default=10, show_default=True,
              help="Synthetic CAMELYON17 patients (5 lymph nodes each; at least 10, so "
                   "that every pN stage has a test patient).")
@click.option("--seed", type=int, default=7, show_default=True)
def command(out_dir: str, slides: int, width: int, height: int, epochs: int, workers: int,
            patients: int, seed: int) -> None:
    """Synthetic cohort -> masks -> patches -> training -> heatmaps -> evaluation ->
    retrieval -> MIL -> CAMELYON17 staging, then OUT/report.html and OUT/metrics.json
    (patch_auc, slide_auc, froc, mil_slide_auc, stage_kappa, ...)."""
    from exaslide.extras import require

    for extra in ("eval", "train", "retrieval", "encoders"):  # before any work is done
        require(extra)
    from exaslide.demo import DemoOptions, run_demo

    if slides < 6:
        raise click.BadParameter("the demo needs at least 6 slides (3 splits x 2 classes)",
                                 param_hint="--slides")
    options = DemoOptions(slides=slides, width=width, height=height, epochs=epochs,
                          workers=workers, seed=seed, patients=patients)
    metrics = run_demo(Path(out_dir), options, say=click.echo)

    def show(value):
        return "n/a" if value is None else f"{value:.3f}"

    click.echo(f"patch AUC {show(metrics['patch_auc'])}, slide AUC "
               f"{show(metrics['slide_auc'])}, FROC {show(metrics['froc'])}, MIL slide AUC "
               f"{show(metrics['mil_slide_auc'])}, pN-stage kappa "
               f"{show(metrics['stage_kappa'])}; report: {Path(out_dir) / 'report.html'}")
    click.echo(f"see the results on the slides: exaslide view {shlex.quote(str(out_dir))}")
