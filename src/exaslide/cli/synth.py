"""``exaslide synth``: synthetic pyramidal slides (and cohorts) with ground-truth XML."""

from __future__ import annotations

from pathlib import Path

import click

from exaslide.cli.options import progress_bar


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--width", type=int, default=8192, show_default=True,
              help="Level-0 width (in a cohort: the base, each slide varies by up to 25%).")
@click.option("--height", type=int, default=6144, show_default=True,
              help="Level-0 height (in a cohort: the base, varied like --width).")
@click.option("--tumours", type=int, default=3, show_default=True,
              help="Tumours per slide (in a cohort: up to this many per tumour slide).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--mpp", type=float, default=0.5, show_default=True, help="Microns per pixel.")
@click.option("--tile", type=int, default=256, show_default=True, help="Tile side.")
@click.option("--quality", type=int, default=90, show_default=True, help="JPEG quality.")
@click.option("--name", default=None, help="File stem of a single slide [synth_<seed>].")
@click.option("--cohort", type=int, default=None, help="Write a cohort of N slides instead.")
@click.option("--tumour-fraction", type=float, default=0.5, show_default=True,
              help="Fraction of cohort slides with tumours.")
def command(out_dir, width, height, tumours, seed, mpp, tile, quality, name, cohort,
            tumour_fraction) -> None:
    """Write a synthetic slide OUT_DIR/<name>.tif with its ASAP XML, or a cohort with
    OUT_DIR/manifest.csv."""
    from exaslide.synth import SynthSpec, level_sizes, make_cohort, write_synthetic_slide

    spec = SynthSpec(width=width, height=height, tumours=tumours, seed=seed, mpp=mpp,
                     tile=tile, quality=quality)
    try:
        spec.validate()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if cohort is not None and cohort < 1:
        raise click.BadParameter("a cohort needs at least one slide", param_hint="--cohort")
    if not 0.0 <= tumour_fraction <= 1.0:
        raise click.BadParameter("must be between 0 and 1", param_hint="--tumour-fraction")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cohort is not None:
        with progress_bar(cohort, "slides") as bar:
            manifest = make_cohort(out, cohort, tumour_fraction=tumour_fraction, base=spec,
                                   seed=seed, on_slide=lambda _: bar.update(1))
        click.echo(f"cohort of {cohort} slides; manifest: {manifest}")
        return
    tiles = sum(-(-w // tile) * -(-h // tile) for w, h in level_sizes(spec))
    with progress_bar(tiles, "tiles") as bar:
        made = write_synthetic_slide(out / f"{name or f'synth_{seed}'}.tif", spec,
                                     progress=bar.update)
    click.echo(f"slide: {made.path} ({len(made.level_dimensions)} levels)")
    if made.annotation_path:
        click.echo(f"annotations: {made.annotation_path}")
