"""``exaslide info SLIDE``: what a slide contains."""

from __future__ import annotations

import json

import click

from exaslide.cli.options import backend_option


@click.command("info")
@click.argument("slide")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--properties", is_flag=True, help="Also list every metadata property.")
@backend_option
def command(slide: str, as_json: bool, properties: bool, backend: str | None) -> None:
    """Show levels, resolution, vendor and associated images of SLIDE."""
    from exaslide.slides import open_slide

    with open_slide(slide, backend=backend) as s:
        info = s.info()
        if properties:
            info["properties"] = dict(s.properties)
        if as_json:
            click.echo(json.dumps(info, indent=2))
            return
        click.echo(f"{info['path']}")
        click.echo(f"  backend {info['backend']}, vendor {info['vendor']}")
        mpp = f"{info['mpp'][0]:.4g} x {info['mpp'][1]:.4g} um/px" if info["mpp"] else "unknown"
        click.echo(f"  size {info['dimensions'][0]} x {info['dimensions'][1]}, mpp {mpp}, "
                   f"objective {info['objective_power'] or 'unknown'}")
        for i, ((w, h), d) in enumerate(zip(info["level_dimensions"],
                                            info["level_downsamples"], strict=True)):
            click.echo(f"  level {i}: {w} x {h} (downsample {d:.4g})")
        click.echo(f"  associated images: {', '.join(info['associated_images']) or 'none'}")
        for key, value in info.get("properties", {}).items():
            click.echo(f"  {key} = {value}")
