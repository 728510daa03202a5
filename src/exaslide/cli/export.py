"""``exaslide export``: exaslide's results for other tools (``geojson``: QuPath)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from exaslide.errors import ExportError
from exaslide.export.geojson import DEFAULT_MAX_TILES
from exaslide.export.tissue import TISSUE_MPP

SUFFIXES = (".geojson", ".json")


@click.group("export")
def command() -> None:
    """Export exaslide's results to other tools (`geojson`: QuPath objects)."""


@command.command("geojson")
@click.argument("slide", required=False)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The .geojson file to write (QuPath: File > Import objects).")
@click.option("--from", "from_dir", type=click.Path(file_okay=False),
              help="An exaslide output folder (the demo's, an inference or evaluation "
                   "folder): SLIDE is then a slide id, and its slide and annotation (from "
                   "the folder's manifest), heatmaps, MIL attention and detections are "
                   "found there. Options below override what is found.")
@click.option("--annotations", "annotation", type=click.Path(dir_okay=False),
              help="Annotation file (ASAP XML, GeoJSON, NCRF JSON, CSV) of the slide.")
@click.option("--label-map", type=click.Path(dir_okay=False),
              help="CSV (group,label) or JSON mapping extra group names to tumour/exclusion.")
@click.option("--heatmap", "heatmaps", multiple=True, type=click.Path(),
              help="A heatmap (<id>.heatmap.npy, or a folder of them) of the slide, "
                   "probability or MIL attention; repeatable.")
@click.option("--detections", type=click.Path(dir_okay=False),
              help="Detections CSV (slide_id,x,y,p[,outcome,lesion], as `exaslide "
                   "evaluate` writes); the slide's rows become points.")
@click.option("--tissue", is_flag=True, help="Add tissue contours (needs SLIDE).")
@click.option("--tissue-mpp", type=float, default=TISSUE_MPP, show_default=True,
              help="Resolution of the tissue detection, in um/px.")
@click.option("--no-ignore", is_flag=True,
              help="Write exclusions only as holes of the tumour polygons, not also as "
                   "'Ignore*' annotations.")
@click.option("--min-probability", type=float,
              help="Write only heatmap cells with a value >= this.")
@click.option("--max-tiles", type=click.IntRange(min=0), default=DEFAULT_MAX_TILES,
              show_default=True, help="Most tiles written per heatmap.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def geojson_command(slide, out, from_dir, annotation, label_map, heatmaps, detections,
                    tissue, tissue_mpp, no_ignore, min_probability, max_tiles,
                    overwrite) -> None:
    """Write SLIDE's annotations (exclusions as holes of the tumour polygons and as
    'Ignore*'), tissue contours, heatmap cells (tiles with a measurement), detections and
    FROC outcomes (points) as a QuPath GeoJSON FeatureCollection in level-0 pixels.

    SLIDE is a slide file or URL, or with --from a slide id. See docs/qupath.md."""
    from exaslide.export.inputs import folder_inputs
    from exaslide.naming import slide_stem

    slide_id = ""
    manifest = None
    if from_dir is not None:
        if not slide:
            raise click.UsageError("--from needs the slide id as SLIDE")
        found = folder_inputs(from_dir, slide)
        slide_id, manifest = slide, found.manifest
        slide = found.slide
        annotation = annotation or found.annotation
        heatmaps = heatmaps or tuple(found.heatmaps)
        detections = detections or found.detections
    elif slide:
        slide_id = slide_stem(slide)
    if tissue and not slide:
        raise click.UsageError("--tissue needs the slide (SLIDE, or a slide listed in the "
                               "--from folder's manifest)")
    if not (annotation or heatmaps or detections or tissue):
        raise click.UsageError("nothing to export: give --annotations, --heatmap, "
                               "--detections, --tissue or --from")
    out_path = _check_out(out, overwrite, [slide, annotation, label_map, detections,
                                           manifest, *_heatmap_files(heatmaps, slide_id)])
    summary = _export(out_path, slide, slide_id, annotation, label_map, heatmaps, detections,
                      tissue, tissue_mpp, not no_ignore, min_probability, max_tiles)
    click.echo(summary.line())


def _heatmap_files(heatmaps, slide_id: str) -> list[Path]:
    """The .npy and .json files a --heatmap names (for the overwrite check)."""
    from exaslide.heatmaps import JSON_SUFFIX, NPY_SUFFIX, heatmap_paths

    files: list[Path] = []
    for item in heatmaps:
        path = Path(item)
        if path.is_dir():
            files.extend(heatmap_paths(path, slide_id) if slide_id else
                         [*path.glob(f"*{NPY_SUFFIX}"), *path.glob(f"*{JSON_SUFFIX}")])
        else:
            files.extend([path, path.with_name(path.name.removesuffix(NPY_SUFFIX)
                                               + JSON_SUFFIX)])
    return files


def _check_out(out: str, overwrite: bool, inputs: list) -> Path:
    """The output path, after refusing a wrong suffix, an input and (without
    --overwrite) an existing file."""
    from exaslide.storage import is_remote

    path = Path(out)
    if path.suffix.lower() not in SUFFIXES:
        raise click.BadParameter(f"{out}: the file to write must end with .geojson or .json",
                                 param_hint="--out")
    for item in inputs:
        if item is None or is_remote(item):
            continue
        if _same_file(path, Path(item)):
            raise ExportError(f"{out}: this is an input ({item}); choose another --out file")
    if path.exists() and not overwrite:
        raise ExportError(f"{out}: exists; pass --overwrite to replace it")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        return False
    return a.resolve() == b.resolve()


def _export(out, slide, slide_id, annotation, label_map, heatmap_args, detections, tissue,
            tissue_mpp, ignore_regions, min_probability, max_tiles):
    from exaslide.annotations import read_annotations
    from exaslide.export.geojson import export_geojson
    from exaslide.export.inputs import read_detections
    from exaslide.export.tissue import tissue_polygons
    from exaslide.heatmaps import read_heatmap
    from exaslide.slides import open_slide

    handle = open_slide(slide) if slide else None
    try:
        size = tuple(handle.dimensions) if handle is not None else None
        heatmaps = [read_heatmap(h, slide_id if slide_id and Path(h).is_dir() else None)
                    for h in heatmap_args]
        slide_id = slide_id or next((h.slide_id for h in heatmaps if h.slide_id), "")
        if detections and not slide_id:
            raise click.UsageError("--detections needs the slide's id: give SLIDE, --from "
                                   "or a --heatmap")
        ann = read_annotations(annotation, label_map=label_map) if annotation else None
        polygons = tissue_polygons(handle, mpp=tissue_mpp) if tissue else []
        points = read_detections(detections, slide_id) if detections else None
        return export_geojson(out, annotations=ann, heatmaps=heatmaps, tissue=polygons,
                              detections=points, slide_id=slide_id, slide_size=size,
                              ignore_regions=ignore_regions, min_value=min_probability,
                              max_tiles=max_tiles)
    finally:
        if handle is not None:
            handle.close()
