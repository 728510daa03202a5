"""``exaslide synth``: synthetic pyramidal slides (and cohorts) with ground-truth XML."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import click

from exaslide.cli.options import progress_bar


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--width", type=int, default=8192, show_default=True,
              help="Level-0 width, at most 250000 (in a cohort: the base, each slide varies "
                   "by up to 25%).")
@click.option("--height", type=int, default=6144, show_default=True,
              help="Level-0 height, at most 250000 (in a cohort: the base, varied like "
                   "--width).")
@click.option("--tumours", type=int, default=3, show_default=True,
              help="Tumours per slide (in a cohort: up to this many per tumour slide).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--mpp", type=float, default=0.5, show_default=True, help="Microns per pixel.")
@click.option("--tile", type=int, default=256, show_default=True, help="Tile side.")
@click.option("--quality", type=int, default=90, show_default=True, help="JPEG quality.")
@click.option("--name", default=None,
              help="File stem of a single slide, a plain file name [synth_<seed>].")
@click.option("--cohort", type=int, default=None, help="Write a cohort of N slides instead.")
@click.option("--tumour-fraction", type=float, default=0.5, show_default=True,
              help="Fraction of cohort slides with tumours.")
@click.option("--patients", is_flag=True,
              help="With --cohort N: N CAMELYON17 patients x 5 lymph-node slides (lesions "
                   "sized by the ITC/micro/macro definitions, stages pN0..pN2), with "
                   "patient and slide_class in the manifest and the reference stage.csv. "
                   "Slides default to 2048 x 2048 at 2 um/px; --tumours caps the lesions "
                   "per node.")
@click.pass_context
def command(ctx, out_dir, width, height, tumours, seed, mpp, tile, quality, name, cohort,
            tumour_fraction, patients) -> None:
    """Write a synthetic slide OUT_DIR/<name>.tif with its ASAP XML, or a cohort with
    OUT_DIR/manifest.csv (--cohort N; with --patients, N patients of 5 nodes and
    OUT_DIR/stage.csv). Sizes, --name and the free disk space are checked before
    anything is written; SIGTERM or Ctrl-C removes the unfinished slide."""
    from exaslide.synth import SynthSpec, level_sizes, make_cohort, write_synthetic_slide
    from exaslide.synth.slide import check_disk_space, estimated_disk_bytes

    if patients:
        width, height, mpp = _patient_defaults(ctx, width, height, mpp)
    spec = SynthSpec(width=width, height=height, tumours=tumours, seed=seed, mpp=mpp,
                     tile=tile, quality=quality)
    spec.validate()
    if cohort is not None and cohort < 1:
        raise click.BadParameter("a cohort needs at least one slide", param_hint="--cohort")
    if not 0.0 <= tumour_fraction <= 1.0:
        raise click.BadParameter("must be between 0 and 1", param_hint="--tumour-fraction")
    out = Path(out_dir)
    if patients:
        _patients(ctx, out, cohort, spec, seed)
        return
    if cohort is not None:
        with _interruptible(), progress_bar(cohort, "slides") as bar:
            manifest = make_cohort(out, cohort, tumour_fraction=tumour_fraction, base=spec,
                                   seed=seed, on_slide=lambda _: bar.update(1))
        click.echo(f"cohort of {cohort} slides; manifest: {manifest}")
        return
    target = out / f"{_plain_name(name or f'synth_{seed}')}.tif"
    check_disk_space(out, estimated_disk_bytes(spec))
    tiles = sum(-(-w // tile) * -(-h // tile) for w, h in level_sizes(spec))
    with _interruptible(), progress_bar(tiles, "tiles") as bar:
        made = write_synthetic_slide(target, spec, progress=bar.update)
    click.echo(f"slide: {made.path} ({len(made.level_dimensions)} levels)")
    if made.annotation_path:
        click.echo(f"annotations: {made.annotation_path}")


def _patient_defaults(ctx: click.Context, width: int, height: int, mpp: float
                      ) -> tuple[int, int, float]:
    """Width, height and mpp of node slides: the patient defaults (2048 x 2048 at
    2 um/px) for those not given on the command line or in a config file."""
    from click.core import ParameterSource

    from exaslide.synth.patients import PATIENT_SPEC

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                                   ParameterSource.DEFAULT_MAP)

    return (width if given("width") else PATIENT_SPEC.width,
            height if given("height") else PATIENT_SPEC.height,
            mpp if given("mpp") else PATIENT_SPEC.mpp)


def _patients(ctx: click.Context, out: Path, cohort: int | None, spec, seed: int) -> None:
    """``--cohort N --patients``: N patients x 5 node slides, manifest and stage CSVs."""
    from click.core import ParameterSource

    from exaslide.synth.patients import NODES_PER_PATIENT, make_patients

    if cohort is None:
        raise click.UsageError("--patients needs --cohort N (the number of patients)")
    for option in ("tumour_fraction", "name"):
        if ctx.get_parameter_source(option) == ParameterSource.COMMANDLINE:
            raise click.UsageError(f"--{option.replace('_', '-')} does not apply to "
                                   "--patients (the stages decide which nodes have lesions)")
    with _interruptible(), progress_bar(cohort * NODES_PER_PATIENT, "slides") as bar:
        manifest = make_patients(out, cohort, base=spec, seed=seed,
                                 on_slide=lambda _: bar.update(1))
    click.echo(f"{cohort} patients x {NODES_PER_PATIENT} nodes; manifest: {manifest}; "
               f"reference stages: {out / 'stage.csv'}")


def _plain_name(name: str) -> str:
    """``name`` when it is a plain file stem (the slide id rule: no separator, no
    ``..``, no leading dot, no control character, at most 200 bytes)."""
    from exaslide.naming import shown_id, slide_id_problem
    from exaslide.synth.slide import SynthError

    problem = slide_id_problem(name)
    if problem is not None:
        raise SynthError(f"--name {shown_id(name)} is not a plain file name: it {problem}")
    return name


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``SystemExit(128 + signal)`` in the main thread, so
    the atomic writes delete their temporaries on the way out; a second signal during that
    clean-up is ignored. Prints one ``exaslide: interrupted`` line."""
    caught: list[int] = []

    def handler(signum, frame):
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signal.SIG_IGN)
        caught.append(signum)
        raise SystemExit(128 + signum)

    previous = {number: signal.signal(number, handler)
                for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except SystemExit:
        if caught:
            click.echo(f"exaslide: interrupted by {signal.Signals(caught[0]).name}; the "
                       "unfinished slide was removed", err=True)
        raise
    finally:
        for number, before in previous.items():
            signal.signal(number, before)
