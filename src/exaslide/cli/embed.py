"""``exaslide embed`` (patch embeddings into a store) and ``exaslide embed-slides``
(slide embeddings from a patch store)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from exaslide.cli.options import decode_option


def _summary(outcomes, what: str, unit: str, count: int, out_dir, seconds: float,
             status: str, prefix: str = "") -> None:
    from exaslide.cli.options import out_location, report_outcomes

    report_outcomes(outcomes, out_location(out_dir, status),
                    f"{count} {unit} in {seconds:.1f} s; {what} in {out_location(out_dir)}",
                    prefix)


@click.command("embed")
@click.argument("model", required=False)
@click.argument("extract_dir", required=False)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Embedding store folder (embeddings.json, parts/<slide_id>.*).")
@click.option("--split", default=None, help="Embed only the patches of this split.")
@click.option("--batch-size", type=int, default=256, show_default=True,
              help="Patches per forward pass.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda or cuda:N (under torchrun, cuda is each rank's GPU).")
@click.option("--workers", type=int, default=None,
              help="Patch-loading processes (0: load in the main process) [default: 0 on "
                   "cpu; on cuda the cores less one, up to 16].")
@decode_option("loading processes", "vectors", "when the first 4 slides are JPEG-tiled")
@click.option("--size", type=int, default=None,
              help="Read SIZE x SIZE pixels centred on each patch [the model's patch size, "
                   "else the indexed size].")
@click.option("--pretrained", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Local weights for a MODEL given by name.")
@click.option("--encoder", default=None, metavar="NAME",
              help="A foundation-model encoder instead of MODEL (exaslide encoders list): "
                   "patches are read at its µm/px and size, centred on the indexed ones.")
@click.option("--weights", default=None, metavar="PATH",
              help="The --encoder's local weights: a file, a folder holding it, a Hugging "
                   "Face cache folder, or 'random' (seeded random weights, to test a "
                   "pipeline) [the local Hugging Face cache].")
@click.option("--hf-cache", type=click.Path(file_okay=False), default=None,
              help="Hugging Face hub cache holding the --encoder's weights [huggingface_hub's"
                   " default]; never downloaded from.")
def command(model, extract_dir, out_dir, split, batch_size, device, workers, decode, size,
            pretrained, encoder, weights, hf_cache) -> None:
    """Embed the patches of EXTRACT_DIR (an `exaslide extract` output) with MODEL (a file
    written by training / save_model, or a registered model name such as small-cnn or
    resnet50) or with --encoder NAME (then MODEL is left out) into the store --out:
    penultimate-layer features or the encoder's embeddings, one part per slide. Slides
    already done with the same model and settings are skipped; under torchrun each rank
    takes every n-th slide. Exit code 1 when a slide failed."""
    from exaslide.cli.options import progress_bar
    from exaslide.retrieval.embed import embed_patches
    from exaslide.runtime import distributed_context

    model, extract_dir = _model_and_dir(model, extract_dir, encoder, weights, size,
                                        pretrained)
    if batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    if workers is not None and workers < 0:
        raise click.BadParameter("must be at least 0", param_hint="--workers")
    if size is not None and size < 8:
        raise click.BadParameter("must be at least 8", param_hint="--size")
    filter = None
    if split is not None:
        import pyarrow.compute as pc

        filter = pc.field("split") == split
    rank, world_size = distributed_context()
    outcomes = []
    bar = progress_bar(None, "slides")

    def on_result(outcome) -> None:
        outcomes.append(outcome)
        bar.update(1)

    started = time.perf_counter()
    try:
        embed_patches(model, extract_dir, out_dir, filter=filter, batch_size=batch_size,
                      device=device, workers=workers, size=size, pretrained=pretrained,
                      encoder=encoder, weights=weights, hf_cache=hf_cache,
                      on_result=on_result, decode=decode)
    finally:
        bar.close()
    _summary(outcomes, "embeddings", "patches", sum(o.patches for o in outcomes), out_dir,
             time.perf_counter() - started,
             "embed_status.json" if world_size == 1 else "embed_status.rank*.json",
             f"rank {rank}/{world_size}: " if world_size > 1 else "")


def _model_and_dir(model, extract_dir, encoder, weights, size, pretrained):
    """``(MODEL, EXTRACT_DIR)`` of ``embed patches``: with --encoder the one argument is
    EXTRACT_DIR."""
    if encoder is not None:
        if extract_dir is not None:
            raise click.UsageError("give MODEL or --encoder, not both")
        model, extract_dir = None, model
        for value, hint in ((size, "--size"), (pretrained, "--pretrained")):
            if value is not None:
                raise click.BadParameter("not with --encoder (its spec fixes the input size "
                                         "and its weights come from --weights)",
                                         param_hint=hint)
    elif weights is not None or model is None:
        raise click.UsageError("--weights goes with --encoder" if weights is not None
                               else "missing MODEL (or --encoder NAME) and EXTRACT_DIR")
    if extract_dir is None:
        raise click.UsageError("missing EXTRACT_DIR")
    from exaslide.storage.urls import is_remote

    if not is_remote(extract_dir) and not Path(extract_dir).exists():
        raise click.BadParameter(f"{extract_dir}: no such folder or file",
                                 param_hint="EXTRACT_DIR")
    return model, extract_dir


@click.command("embed-slides")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Slide embedding store folder.")
@click.option("--method", type=click.Choice(["mean", "mosaic"]), default="mean",
              show_default=True,
              help="mean: one mean vector per slide; mosaic: the patches nearest the "
                   "k-means centroids of the slide (Yottixel-like).")
@click.option("--mosaic-size", type=int, default=16, show_default=True,
              help="Clusters (representative patches) per slide for --method mosaic.")
@click.option("--seed", type=int, default=0, show_default=True, help="k-means seed.")
def slides_command(store, out_dir, method, mosaic_size, seed) -> None:
    """Slide embeddings from STORE (a patch store written by `exaslide embed`) into --out.
    Slides already done are skipped. Exit code 1 when a slide failed."""
    from exaslide.retrieval.aggregate import slide_embeddings

    if mosaic_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--mosaic-size")
    outcomes: list = []
    started = time.perf_counter()
    slide_embeddings(store, out_dir, method=method, mosaic_size=mosaic_size, seed=seed,
                     on_result=outcomes.append)
    _summary(outcomes, "slide embeddings", "vectors", sum(o.rows for o in outcomes),
             out_dir, time.perf_counter() - started, "embed-slides_status.json")
