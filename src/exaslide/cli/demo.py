"""``exaslide demo``: the whole current pipeline on built-in synthetic data."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out", "out_dir", default="demo-out", show_default=True,
              type=click.Path(file_okay=False), help="Output folder.")
@click.option("--width", type=int, default=12288, show_default=True)
@click.option("--height", type=int, default=9216, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def command(out_dir: str, width: int, height: int, seed: int) -> None:
    """Generate a synthetic slide with tumours, write its label masks and figure, then
    extract its patches (index + JPEG shards) on a Dask LocalCluster."""
    from exaslide.masks.run import MaskOptions, mask_slide
    from exaslide.synth import SynthSpec, write_synthetic_slide

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = SynthSpec(width=width, height=height, tumours=4, seed=seed)
    click.echo(f"1/3 writing a {width}x{height} synthetic slide with {spec.tumours} tumours")
    made = write_synthetic_slide(out / "demo_slide.tif", spec)
    click.echo("2/3 computing tissue and tumour masks at 8 um/px")
    summary = mask_slide(made.path, made.annotation_path, out, "demo_slide",
                         MaskOptions(mpp=8.0))
    areas = summary["areas_um2"]
    exact = summary["annotation_tumour_area_um2"]
    click.echo(f"tumour area: mask {areas['tumour'] / 1e6:.3f} mm2, annotation "
               f"{exact / 1e6:.3f} mm2; normal tissue {areas['normal'] / 1e6:.3f} mm2")
    click.echo("3/3 extracting 256-px patches of the tissue (grid, JPEG shards)")
    _extract(made, out / "patches")
    click.echo(f"figure: {out / 'demo_slide_figure.png'}")


def _extract(made, out: Path) -> None:
    from exaslide.manifest import ManifestEntry
    from exaslide.patches import ExtractOptions, run_extraction

    entry = ManifestEntry("demo_slide", made.path, made.annotation_path, "tumour", "train")
    [outcome] = run_extraction([entry], out, ExtractOptions(materialize="jpeg"),
                               overwrite=True)
    shards = len(list((out / "shards").glob("*.tar")))
    click.echo(f"patches: {outcome.patches} ({outcome.counts['tumour']} tumour) in "
               f"{shards} shard(s); index: {out / 'index'}")
