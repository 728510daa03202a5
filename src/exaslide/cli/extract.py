"""``exaslide extract``: sample patches of a cohort, index them, optionally write shards."""

from __future__ import annotations

import time
from pathlib import Path

import click

from exaslide.cli.options import backend_option


@click.command("extract")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: index/, shards/, status/.")
@click.option("--sampler", type=click.Choice(["grid", "random"]), default="grid",
              show_default=True, help="Full grid coverage, or random patches per class.")
@click.option("--patch-size", type=int, default=256, show_default=True,
              help="Patch side in output pixels.")
@click.option("--level", type=int, default=None, help="Read patches at this level [0].")
@click.option("--mpp", type=float, default=None,
              help="Read patches at this resolution (um/px) instead of a level.")
@click.option("--stride", type=int, default=None, help="Grid step in pixels [patch size].")
@click.option("--region", "regions", multiple=True, metavar="LABEL",
              help="Grid: only patches centred inside annotations with this label "
                   "(e.g. tumour; repeatable). Slides without annotations give none.")
@click.option("--per-class", type=int, default=2000, show_default=True,
              help="Random sampler: patches per class per slide.")
@click.option("--min-tissue", type=float, default=0.5, show_default=True,
              help="Minimum tissue fraction of a patch.")
@click.option("--label-rule", type=click.Choice(["centre", "fraction"]), default="centre",
              show_default=True, help="Label by the centre pixel or by tumour fraction.")
@click.option("--tumour-threshold", type=float, default=0.5, show_default=True,
              help="Tumour fraction for the 'fraction' label rule.")
@click.option("--materialize", type=click.Choice(["png", "jpeg"]), default=None,
              help="Also write pixels into WebDataset tar shards.")
@click.option("--quality", type=int, default=90, show_default=True, help="JPEG quality.")
@click.option("--shard-size", type=int, default=1000, show_default=True,
              help="Samples per shard.")
@click.option("--keep-blank", is_flag=True,
              help="Keep blank (white, black, flat) patches when materialising.")
@click.option("--workers", type=int, default=None,
              help="Dask LocalCluster worker processes [one per core].")
@click.option("--scheduler", default=None,
              help="Address of an existing Dask scheduler (e.g. tcp://host:8786), or "
                   "'inline' to run in this process.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--label-map", type=click.Path(dir_okay=False),
              help="CSV (group,label) or JSON mapping extra group names.")
@click.option("--overwrite", is_flag=True, help="Redo slides already finished.")
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
    if workers is not None and scheduler is not None:
        raise click.UsageError("give --workers or --scheduler, not both")
    if workers is not None and workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    spec = PatchSpec(size=patch_size, level=level if mpp is None else None, mpp=mpp)
    if mpp is None and level is None:
        spec = PatchSpec(size=patch_size, level=0)
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
    with _Progress(len(entries)) as progress:
        outcomes = run_extraction(entries, out_dir, options, workers=workers,
                                  scheduler=scheduler, overwrite=overwrite,
                                  on_event=progress.event)
    _summary(outcomes, out_dir, time.perf_counter() - started)


class _Progress:
    """One tqdm bar over patches (total grows as slides are planned), slides as postfix."""

    def __init__(self, slides: int):
        from exaslide.cli.options import progress_bar

        self.bar = progress_bar(0, "patches")
        self.slides, self.finished = slides, 0

    def event(self, kind: str, value) -> None:
        if kind == "patches":
            self.bar.total += value
            self.bar.refresh()
        elif kind == "progress":
            self.bar.update(value)
        elif kind == "slide":
            self.finished += 1
            self.bar.set_postfix_str(f"slides {self.finished}/{self.slides}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def _summary(outcomes, out_dir: str, seconds: float) -> None:
    done = [o for o in outcomes if o.status == "done"]
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = len(outcomes) - len(done) - len(failed)
    patches = sum(o.patches for o in done)
    tumour = sum(o.counts.get("tumour", 0) for o in done)
    blank = sum(o.blank for o in done)
    for o in failed:
        click.echo(f"exaslide: error: {o.slide_id}: {o.error}", err=True)
    click.echo(f"{len(outcomes)} slides: {len(done)} done, {skipped} already done, "
               f"{len(failed)} failed")
    click.echo(f"{patches} patches ({tumour} tumour, {patches - tumour} normal), "
               f"{blank} blank rejected, {seconds:.1f} s ({patches / max(seconds, 1e-9):.0f} "
               f"patches/s)")
    click.echo(f"index: {Path(out_dir) / 'index'}")
    if failed:
        raise SystemExit(1)
