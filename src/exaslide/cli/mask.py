"""``exaslide mask``: label masks (background / normal / tumour) for a slide or a cohort."""

from __future__ import annotations

from pathlib import Path

import click

from exaslide.cli.options import (
    JobProgress,
    backend_option,
    executor_choice,
    field_option,
    out_location,
    overwrite_option,
    report_outcomes,
    scheduler_option,
    workers_option,
)
from exaslide.masks.tissue import TissueParams
from exaslide.naming import slide_stem  # also the default slide id of `exaslide infer`


@click.command("mask")
@click.argument("slide", required=False)
@click.option("--annotations", "annotation", type=click.Path(dir_okay=False),
              help="Annotation file (ASAP XML, GeoJSON, NCRF JSON, CSV) for SLIDE.")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="Cohort manifest CSV instead of SLIDE (slide_id,path,annotation,label,split).")
@click.option("--level", type=int, help="Pyramid level of the mask.")
@click.option("--mpp", type=float, help="Resolution of the mask in microns per pixel.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder.")
@click.option("--label-map", type=click.Path(dir_okay=False),
              help="CSV (group,label) or JSON mapping extra group names to tumour/exclusion.")
@click.option("--tissue-threshold", type=float, default=None,
              help="Fixed saturation threshold (0-255) instead of Otsu.")
@field_option(TissueParams, "min_area_um2", "--min-tissue-area",
              help="Smallest tissue component kept, in um^2.")
@field_option(TissueParams, "kernel_um", "--kernel-um",
              help="Morphology disc diameter in microns.")
@click.option("--no-tiff", is_flag=True, help="Do not write the pyramidal mask TIFF.")
@overwrite_option
@workers_option("1: slides one after another in this process")
@scheduler_option
@backend_option
def command(slide, annotation, manifest, level, mpp, out_dir, label_map, tissue_threshold,
            min_tissue_area, kernel_um, no_tiff, overwrite, workers, scheduler,
            backend) -> None:
    """Write SLIDE's mask PNG (0 background, 1 normal, 2 tumour), overlay, figure, pyramidal
    TIFF and JSON summary into --out; or do it for every slide of --manifest."""
    from exaslide.annotations import load_label_map
    from exaslide.masks.run import MaskOptions

    if (slide is None) == (manifest is None):
        raise click.UsageError("give either SLIDE or --manifest CSV")
    if (level is None) == (mpp is None):
        raise click.UsageError("give exactly one of --level or --mpp")
    if manifest and annotation:
        raise click.UsageError("--annotations is for one SLIDE; a manifest names its own")
    workers, scheduler = executor_choice(workers, scheduler, "inline")
    tissue = TissueParams(threshold=tissue_threshold, min_area_um2=min_tissue_area,
                          kernel_um=kernel_um)
    options = MaskOptions(level=level, mpp=mpp, backend=backend, tissue=tissue,
                          label_map=load_label_map(label_map) if label_map else None,
                          pyramid=not no_tiff)
    if slide:
        _one(slide, annotation, out_dir, options)
    else:
        _cohort(manifest, out_dir, options, overwrite, workers, scheduler)


def _one(slide: str, annotation: str | None, out_dir: str, options) -> None:
    from exaslide.jobs import OutputLock
    from exaslide.masks.run import mask_slide

    stem = slide_stem(slide)
    with OutputLock(out_dir):
        summary = mask_slide(slide, annotation, out_dir, stem, options)
    counts = summary["pixel_counts"]
    click.echo(f"{slide}: mask {summary['mask']['width']}x{summary['mask']['height']} "
               f"(tumour {counts['tumour']} px, normal {counts['normal']} px)")
    for repair in summary["repairs"]:
        click.echo(f"  repaired annotation {repair['name']!r}: {repair['problem']} "
                   f"({repair['action']})", err=True)
    click.echo(f"figure: {Path(out_dir) / (stem + '_figure.png')}")


def _cohort(manifest: str, out_dir: str, options, overwrite: bool, workers, scheduler) -> None:
    from exaslide.manifest import read_manifest
    from exaslide.masks.run import mask_cohort

    entries = read_manifest(manifest)
    with JobProgress(len(entries), "masks") as progress:
        outcomes = mask_cohort(entries, out_dir, options, overwrite=overwrite,
                               workers=workers, scheduler=scheduler,
                               on_event=progress.event)
    report_outcomes(outcomes, out_location(out_dir, "mask_status.json"))
