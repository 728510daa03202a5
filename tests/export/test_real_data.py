"""Export round trips on real files from ../shared/data (skipped when absent): a real
QuPath export with cells and measurements, and a CAMELYON16 XML with exclusions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qupath_layout import check_layout

from exaslide.annotations import EXCLUSION, TUMOUR, read_annotations
from exaslide.export import export_geojson, tumour_region
from exaslide.masks import rasterize

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "annotations"
QUPATH = DATA / "geojson" / "qupath_Single_cells.geojson"
CAMELYON = DATA / "camelyon16" / "test_040.xml"


def _need(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"real test data not found: {path} (see ../shared/data/PROVENANCE.md)")


def _shape(ann):
    return (ann.group, ann.name, ann.kind, ann.properties.get("objectType"),
            ann.properties.get("measurements"), ann.properties.get("id"),
            ann.properties.get("isLocked"), ann.color, ann.geometry.wkb_hex)


def test_real_qupath_export_round_trips(tmp_path):
    _need(QUPATH)
    original = read_annotations(QUPATH)
    out = tmp_path / "again.geojson"
    summary = export_geojson(out, annotations=original)
    features = check_layout(json.loads(out.read_text(encoding="utf-8")))
    assert summary.counts == {"other annotations": 131} and len(features) == 131
    back = read_annotations(out)
    assert [_shape(a) for a in back] == [_shape(a) for a in original]
    cells = [a for a in back if a.properties["objectType"] == "cell"]
    assert len(cells) == 121 and all(a.properties["measurements"] for a in cells)
    # the ids QuPath gave its objects are kept
    source = json.loads(QUPATH.read_text(encoding="utf-8"))["features"]
    assert [f["id"] for f in features] == [f["id"] for f in source]


def test_real_camelyon16_exclusions_become_holes(tmp_path):
    _need(CAMELYON)
    original = read_annotations(CAMELYON)
    assert original.labels() == {"tumour": 34, "exclusion": 44}
    out = tmp_path / "test_040.geojson"
    export_geojson(out, annotations=original)
    features = check_layout(json.loads(out.read_text(encoding="utf-8")))
    tumours = [f for f in features if f["properties"]["classification"]["name"] == "Tumor"]
    assert sum(len(f["geometry"]["coordinates"]) - 1 for f in tumours) > 0  # holes
    back = read_annotations(out)
    expected = tumour_region(original)
    assert back.union(TUMOUR).symmetric_difference(expected).area < 1e-6 * expected.area
    assert {a.group for a in back if a.label == EXCLUSION} == {"Ignore*"}
    # the mask at 64x downsample (as exaslide's masks would draw it) is the same
    _, _, maxx, maxy = original.bounds()
    shape = (int(maxy // 64) + 2, int(maxx // 64) + 2)
    want = rasterize(original.union(TUMOUR), shape, downsample=64) & \
        ~rasterize(original.union(EXCLUSION), shape, downsample=64)
    got = rasterize(back.union(TUMOUR), shape, downsample=64) & \
        ~rasterize(back.union(EXCLUSION), shape, downsample=64)
    assert want.sum() > 50_000 and np.array_equal(got, want)
