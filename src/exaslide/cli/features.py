"""``exaslide features export|import``: CLAM/TRIDENT feature files (``<slide_id>.h5`` with
``features`` and ``coords``) from and into an embedding store."""

from __future__ import annotations

import time
from pathlib import Path

import click

from exaslide.cli.options import field_option, overwrite_option
from exaslide.retrieval.h5features import FORMATS, ExportOptions

manifest_option = click.option(
    "--manifest", type=click.Path(dir_okay=False, exists=True), default=None,
    help="Cohort CSV (slide_id, path, ...).")


@click.group("features")
def command() -> None:
    """CLAM/TRIDENT feature files (.h5): `export` a patch store to them, `import` them
    into a store."""


def _run(run, out_dir: Path, status: str, verb: str) -> None:
    """Run ``run(on_event)`` with a progress bar and print the engine's summary (exit 1
    when a slide failed)."""
    from exaslide.cli.options import progress_bar, report_outcomes

    bar = progress_bar(None, "slides")
    started = time.perf_counter()

    def on_event(kind: str, value) -> None:
        if kind == "slide":
            bar.update(1)

    try:
        outcomes = run(on_event)
    finally:
        bar.close()
    patches = sum(int(o.result.get("patches", 0)) for o in outcomes
                  if o.status != "failed")
    report_outcomes(outcomes, str(out_dir / status),
                    f"{patches} patches {verb} {out_dir} in "
                    f"{time.perf_counter() - started:.1f} s")


@command.command("export")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of <slide_id>.h5 files.")
@field_option(ExportOptions, "format", "--format", choices=FORMATS,
              help="Whose coords attributes to write: TRIDENT's (patch_size_level0, "
                   "level0/target_magnification...) or CLAM's (patch_level, downsample, "
                   "level_dim...).")
@manifest_option
@click.option("--checksum", is_flag=True,
              help="Also write <slide_id>.h5.sha256 (sha256sum format).")
@overwrite_option
def export_command(store, out_dir, format, manifest, checksum, overwrite) -> None:
    """Write every slide of STORE (a patch store: `exaslide embed patches` or `features
    import`) as --out/<slide_id>.h5: `features` float32 N x D and `coords` int64 N x 2
    (level-0 top-left x, y) with the chosen tool's attributes. The patches' level-0 size
    and the magnification are read from the slides (paths from --manifest, else from
    the extraction the store came from). Slides already exported are skipped; exit
    code 1 when a slide failed."""
    from exaslide.retrieval.h5features import export_h5

    out = Path(out_dir)
    _run(lambda on_event: export_h5(store, out, format=format, manifest=manifest,
                                    checksum=checksum, overwrite=overwrite,
                                    on_event=on_event),
         out, "features-export_status.json", "written to")


@command.command("import")
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", "store", required=True, type=click.Path(file_okay=False),
              help="Embedding store folder (kind patches).")
@click.option("--model", default=None,
              help="Model name recorded in the store [the files' exaslide_model "
                   "attribute, else TRIDENT's features_<encoder> folder name].")
@click.option("--patch-size", type=click.IntRange(min=1), default=None,
              help="Patch side in pixels [the files' patch_size attribute].")
@click.option("--level", type=click.IntRange(min=0), default=None,
              help="Pyramid level the patches were read at [CLAM's patch_level].")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Patch resolution in um/px [TRIDENT: 10 / target_magnification].")
@manifest_option
@overwrite_option
def import_command(source, store, model, patch_size, level, mpp, manifest,
                   overwrite) -> None:
    """Import SOURCE (a folder of CLAM/TRIDENT <slide_id>.h5 feature files, or one file)
    into the store --out, one part per file. CLAM feature files record no patch spec:
    give --patch-size and --level (or --mpp). With --manifest, only its slides are
    imported (SOURCE/<slide_id>.h5) and rows get their split. A bad file is reported
    and the others go on (exit code 1)."""
    from exaslide.retrieval.h5features import import_h5

    if level is not None and mpp is not None:
        raise click.UsageError("give --level or --mpp, not both")
    out = Path(store)
    _run(lambda on_event: import_h5(source, out, model=model, patch_size=patch_size,
                                    level=level, mpp=mpp, manifest=manifest,
                                    overwrite=overwrite, on_event=on_event),
         out, "features-import_status.json", "imported into")
