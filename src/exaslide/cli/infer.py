"""``exaslide infer``: whole-slide probability heatmaps with a trained model."""

from __future__ import annotations

import time

import click

from exaslide.cli.options import backend_option, decode_option, field_option
from exaslide.infer.cohort import InferOptions


@click.command("infer")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("slides")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: <slide_id>.heatmap.npy/.json/.tif and .overlay.png.")
@click.option("--stride", type=int, default=None,
              help="Cell side in level-0 pixels [the patch footprint: no overlap].")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Patches per forward pass.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda or cuda:N (under torchrun, cuda is each rank's GPU).")
@click.option("--workers", type=int, default=None,
              help="Patch-reading processes per slide [0 on cpu: read in this process; "
                   "on cuda the cores of this process's share less one, up to 16].")
@decode_option("reading processes", "heatmap", "for a JPEG-tiled slide")
@field_option(InferOptions, "min_tissue", "--min-tissue",
              help="Smallest tissue share of a patch for its cell to be computed.")
@field_option(InferOptions, "class_name", "--class", "class_name",
              help="The class whose probability is mapped.")
@click.option("--no-amp", is_flag=True, help="No bf16 autocast on CUDA.")
@click.option("--overwrite", is_flag=True,
              help="Redo slides already done with the same MODEL file, slide and settings.")
@backend_option
def command(model, slides, out_dir, stride, batch_size, device, workers, decode, min_tissue,
            class_name, no_amp, overwrite, backend) -> None:
    """Write a tumour-probability heatmap of SLIDES (one slide, or a manifest CSV with
    slide_id,path,...) with MODEL (a file written by training / save_model) into --out.
    Slides already done with the same MODEL file, slide and settings are skipped; under
    torchrun each rank takes every n-th slide. Exit code 1 when a slide failed."""
    from exaslide.cli.options import progress_bar
    from exaslide.infer import infer_cohort
    from exaslide.runtime import distributed_context

    if stride is not None and stride < 1:
        raise click.BadParameter("must be at least 1", param_hint="--stride")
    if batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    if workers is not None and workers < 0:
        raise click.BadParameter("must be at least 0", param_hint="--workers")
    if not 0.0 <= min_tissue <= 1.0:
        raise click.BadParameter("must be between 0 and 1", param_hint="--min-tissue")
    rank, world_size = distributed_context()
    started = time.perf_counter()
    bar = progress_bar(None, "slides")
    try:
        outcomes = infer_cohort(model, slides, out_dir, stride=stride, batch_size=batch_size,
                                device=device, workers=workers, decode=decode,
                                amp=not no_amp,
                                min_tissue=min_tissue, class_name=class_name,
                                backend=backend, overwrite=overwrite,
                                on_result=lambda _: bar.update(1))
    finally:
        bar.close()
    _summary(outcomes, out_dir, time.perf_counter() - started,
             f"rank {rank}/{world_size}: " if world_size > 1 else "")


def _summary(outcomes, out_dir: str, seconds: float, prefix: str) -> None:
    from exaslide.cli.options import out_location, report_outcomes

    cells = sum(o.cells for o in outcomes if o.status == "done")
    status = "infer_status.json" if not prefix else "infer_status.rank*.json"
    report_outcomes(outcomes, out_location(out_dir, status),
                    f"{cells} cells in {seconds:.1f} s ({cells / max(seconds, 1e-9):.0f} "
                    f"cells/s); heatmaps in {out_location(out_dir)}", prefix)
