"""``exaslide extract``: sample patches of a cohort, index them, optionally write shards."""

from __future__ import annotations

import time

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
from exaslide.patches.job import ExtractOptions
from exaslide.patches.spec import LABEL_RULES, SAMPLERS, PatchSpec, SamplingOptions


@click.command("extract")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: index/, shards/, status/.")
@field_option(SamplingOptions, "sampler", "--sampler", choices=SAMPLERS,
              help="Full grid coverage, or random patches per class.")
@field_option(PatchSpec, "size", "--patch-size", help="Patch side in output pixels.")
@click.option("--level", type=int, default=None, help="Read patches at this level [0].")
@click.option("--mpp", type=float, default=None,
              help="Read patches at this resolution (um/px) instead of a level.")
@click.option("--stride", type=int, default=None, help="Grid step in pixels [patch size].")
@click.option("--region", "regions", multiple=True, metavar="LABEL",
              help="Grid: only patches centred inside annotations with this label "
                   "(e.g. tumour; repeatable). Slides without annotations give none.")
@field_option(SamplingOptions, "per_class", "--per-class",
              help="Random sampler: patches per class per slide.")
@field_option(SamplingOptions, "min_tissue", "--min-tissue",
              help="Minimum tissue fraction of a patch.")
@field_option(SamplingOptions, "label_rule", "--label-rule", choices=LABEL_RULES,
              help="Label by the centre pixel or by tumour fraction.")
@field_option(SamplingOptions, "tumour_threshold", "--tumour-threshold",
              help="Tumour fraction for the 'fraction' label rule.")
@click.option("--materialize", type=click.Choice(["png", "jpeg"]), default=None,
              help="Also write pixels into WebDataset tar shards.")
@field_option(ExtractOptions, "quality", "--quality", help="JPEG quality.")
@field_option(ExtractOptions, "shard_size", "--shard-size",
              help="Samples per shard.")
@click.option("--keep-blank", is_flag=True,
              help="Keep blank (white, black, flat) patches when materialising.")
@workers_option("one per core")
@scheduler_option
@field_option(SamplingOptions, "seed", "--seed", help="Random seed.")
@click.option("--label-map", type=click.Path(dir_okay=False),
              help="CSV (group,label) or JSON mapping extra group names.")
@overwrite_option
@backend_option
def command(manifest, out_dir, sampler, patch_size, level, mpp, stride, per_class, min_tissue,
            label_rule, tumour_threshold, materialize, quality, shard_size, keep_blank,
            workers, scheduler, seed, label_map, overwrite, backend, regions) -> None:
    """Sample patches of every slide in MANIFEST (slide_id,path,annotation,label,split) and
    write the Parquet index (--out/index/), tar shards with --materialize (--out/shards/)
    and per-slide status files (--out/status/). Finished slides are skipped on a rerun."""
    from exaslide.annotations import load_label_map
    from exaslide.manifest import read_manifest
    from exaslide.patches import (
        ExtractOptions,
        PatchError,
        PatchSpec,
        SamplingOptions,
        run_extraction,
    )

    if level is not None and mpp is not None:
        raise click.UsageError("give --level or --mpp, not both")
    workers, scheduler = executor_choice(workers, scheduler, None)
    spec = PatchSpec(size=patch_size, level=level, mpp=mpp)
    sampling = SamplingOptions(sampler=sampler, stride=stride, per_class=per_class,
                               min_tissue=min_tissue, label_rule=label_rule,
                               tumour_threshold=tumour_threshold, seed=seed)
    options = ExtractOptions(spec=spec, sampling=sampling, materialize=materialize,
                             quality=quality, shard_size=shard_size,
                             reject_blank=not keep_blank, backend=backend,
                             label_map=load_label_map(label_map) if label_map else None,
                             region_labels=tuple(regions) or None)
    try:
        options.validate()
    except PatchError as exc:
        raise click.UsageError(str(exc)) from exc
    entries = read_manifest(manifest)
    started = time.perf_counter()
    with JobProgress(len(entries), "patches") as progress:
        outcomes = run_extraction(entries, out_dir, options, workers=workers,
                                  scheduler=scheduler, overwrite=overwrite,
                                  on_event=progress.event)
    _summary(outcomes, out_dir, time.perf_counter() - started)


def _summary(outcomes, out_dir: str, seconds: float) -> None:
    done = [o for o in outcomes if o.status == "done"]
    patches = sum(o.patches for o in done)
    tumour = sum(o.counts.get("tumour", 0) for o in done)
    blank = sum(o.blank for o in done)
    detail = (f"{patches} patches ({tumour} tumour, {patches - tumour} normal), {blank} "
              f"blank rejected, {seconds:.1f} s ({patches / max(seconds, 1e-9):.0f} "
              "patches/s)")
    click.echo(f"index: {out_location(out_dir, 'index')}")
    report_outcomes(outcomes, out_location(out_dir, "status"), detail)
