"""QuPath GeoJSON export: layout, round trip through exaslide's reader, masks, tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from qupath_layout import check_layout

from exaslide.annotations import EXCLUSION, TUMOUR, map_label, read_annotations
from exaslide.export import (
    Detection,
    ExportError,
    export_geojson,
    read_detections,
    tissue_polygons,
    tumour_region,
)
from exaslide.export.geojson import ATTENTION, DETECTION_CLASS, OUTCOME_CLASSES, PROBABILITY
from exaslide.heatmaps import read_heatmap
from exaslide.masks import make_label_mask, rasterize
from exaslide.slides import open_slide


@pytest.fixture(scope="module")
def original(synth_slide):
    return read_annotations(synth_slide.annotation_path)


def _export(path, **kwargs):
    summary = export_geojson(path, **kwargs)
    data = json.loads(path.read_text(encoding="utf-8"))
    return summary, check_layout(data)


def test_exclusions_become_holes_of_the_tumours_they_cut(tmp_path, original):
    assert original.labels() == {"tumour": 3, "exclusion": 3}
    summary, features = _export(tmp_path / "a.geojson", annotations=original, slide_id="s")
    tumours = [f for f in features if f["properties"].get("classification", {}).get("name")
               == "Tumor"]
    assert summary.counts == {"tumour": len(tumours), "Ignore*": 3}
    assert all(f["properties"]["objectType"] == "annotation" for f in tumours)
    assert all(f["geometry"]["type"] == "Polygon" for f in tumours)
    assert sum(len(f["geometry"]["coordinates"]) - 1 for f in tumours) == 3  # 3 holes
    back = read_annotations(tmp_path / "a.geojson")
    expected = original.union(TUMOUR).difference(original.union(EXCLUSION))
    found = back.union(TUMOUR)  # the holes alone: Ignore* not subtracted
    assert found.symmetric_difference(expected).area < 1e-6 * expected.area
    assert tumour_region(back).symmetric_difference(expected).area < 1e-6 * expected.area
    assert back.union(EXCLUSION).equals(original.union(EXCLUSION))
    assert {a.group for a in back if a.label == EXCLUSION} == {"Ignore*"}


@pytest.mark.parametrize("ignore_regions", [True, False])
def test_mask_from_export_equals_mask_from_xml(tmp_path, synth_slide, original,
                                              ignore_regions):
    path = tmp_path / "a.geojson"
    export_geojson(path, annotations=original, ignore_regions=ignore_regions)
    with open_slide(synth_slide.path) as slide:
        want = make_label_mask(slide, original, level=1)
        got = make_label_mask(slide, read_annotations(path), level=1)
    assert (want.labels == 2).sum() > 1000
    assert np.array_equal(got.labels, want.labels)


def test_everything_at_once_round_trips(tmp_path, synth_slide, original, heatmap_folder,
                                       attention_folder, detections_csv):
    heat = read_heatmap(heatmap_folder, "slide")
    attention = read_heatmap(attention_folder, "slide")
    with open_slide(synth_slide.path) as slide:
        tissue = tissue_polygons(slide)
    path = tmp_path / "all.geojson"
    summary, _ = _export(
        path, annotations=original, heatmaps=[heat, attention], tissue=tissue,
        detections=read_detections(detections_csv, "slide"), slide_id="slide",
        slide_size=(3072, 2304))
    computed = int(np.isfinite(heat.probabilities).sum())
    assert summary.counts["tiles"] == computed == 8 * 12
    assert summary.counts["attention tiles"] == computed
    assert summary.counts["detections"] == 4 and summary.counts["tissue"] >= 1
    back = read_annotations(path)
    # nothing that was not tumour comes back as tumour, nor as exclusion
    for ann in back:
        if ann.label in (TUMOUR, EXCLUSION):
            assert ann.properties["objectType"] == "annotation" and ann.is_area
            assert ann.group in ("Tumor", "Ignore*")
    expected = tumour_region(original)
    assert tumour_region(back).symmetric_difference(expected).area < 1e-6 * expected.area
    tiles = [a for a in back if a.properties.get("objectType") == "tile"]
    by_cell = {}
    for ann in tiles:
        x, y = ann.geometry.centroid.x, ann.geometry.centroid.y
        assert ann.geometry.area == pytest.approx(256 * 256)
        by_cell[(ann.group, int(y // 256), int(x // 256))] = ann.properties["measurements"]
    for (group, r, c), m in by_cell.items():
        source, name = (heat, PROBABILITY) if group == "Heatmap" else (attention, ATTENTION)
        assert m == {name: pytest.approx(float(source.probabilities[r, c]), abs=1e-7)}
    assert by_cell[("Heatmap", 1, 1)] == {PROBABILITY: 0.0}  # a computed 0 is kept
    assert not any(r == 0 for _, r, _ in by_cell)  # NaN cells are left out
    with open_slide(synth_slide.path) as slide:
        assert np.array_equal(make_label_mask(slide, back, level=1).labels,
                              make_label_mask(slide, original, level=1).labels)


def test_detections_are_points_whose_classes_are_no_label(tmp_path, detections_csv):
    found = read_detections(detections_csv, "slide")
    assert [d.outcome for d in found] == ["tp", "fp", "itc", ""]
    _, features = _export(tmp_path / "d.geojson", detections=found, slide_id="slide")
    classes = [f["properties"]["classification"]["name"] for f in features]
    assert classes == ["TP", "FP", "ITC", "Detection"]
    assert features[0]["geometry"] == {"type": "Point", "coordinates": [1000.0, 1100.0]}
    assert features[0]["properties"]["objectType"] == "detection"
    assert features[0]["properties"]["measurements"] == {PROBABILITY: 0.97, "Lesion": 2.0}
    for name in [*OUTCOME_CLASSES.values(), DETECTION_CLASS, "Heatmap", "Attention",
                 "Tissue"]:
        assert map_label(name) not in (TUMOUR, EXCLUSION), name
    back = read_annotations(tmp_path / "d.geojson")
    assert back.union(TUMOUR).is_empty and [a.kind for a in back] == ["point"] * 4


def test_tissue_contours_cover_the_detected_tissue(synth_slide):
    with open_slide(synth_slide.path) as slide:
        polygons = tissue_polygons(slide)
        mask = make_label_mask(slide, None, downsample=16).tissue
    drawn = rasterize(shapely.union_all(polygons), mask.shape, downsample=16)
    iou = (drawn & mask).sum() / (drawn | mask).sum()
    assert iou > 0.95
    truth = synth_slide.layout.tissue
    assert shapely.union_all(polygons).intersection(truth).area > 0.9 * truth.area


def test_ids_are_deterministic_and_unique(tmp_path, original, heatmap_folder):
    heat = read_heatmap(heatmap_folder, "slide")
    a, b = tmp_path / "a.geojson", tmp_path / "b.geojson"
    export_geojson(a, annotations=original, heatmaps=[heat], slide_id="slide")
    export_geojson(b, annotations=original, heatmaps=[heat], slide_id="slide")
    assert a.read_bytes() == b.read_bytes()
    other = tmp_path / "c.geojson"
    export_geojson(other, annotations=original, slide_id="slide2")
    ids = {f["id"] for f in json.loads(a.read_text())["features"]}
    assert ids.isdisjoint(f["id"] for f in json.loads(other.read_text())["features"])


def test_min_value_and_max_tiles(tmp_path, heatmap_folder):
    heat = read_heatmap(heatmap_folder, "slide")
    high = int((np.nan_to_num(heat.probabilities, nan=-1) >= 0.5).sum())
    summary = export_geojson(tmp_path / "h.geojson", heatmaps=[heat], min_value=0.5)
    assert summary.counts == {"tiles": high}
    with pytest.raises(ExportError, match=r"96 heatmap cells.*limit of 95"):
        export_geojson(tmp_path / "big.geojson", heatmaps=[heat], max_tiles=95)
    assert not (tmp_path / "big.geojson").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.geojson"]  # no temporaries


def test_heatmap_of_another_slide_is_refused(tmp_path, heatmap_folder):
    heat = read_heatmap(heatmap_folder, "slide")
    with pytest.raises(ExportError, match="a heatmap of slide 'slide', not 'other'"):
        export_geojson(tmp_path / "x.geojson", heatmaps=[heat], slide_id="other")
    with pytest.raises(ExportError, match="3072x2304 slide, but the slide is 100x100"):
        export_geojson(tmp_path / "x.geojson", heatmaps=[heat], slide_size=(100, 100))
    assert list(tmp_path.iterdir()) == []


def test_bad_detection_rows_name_their_line(tmp_path):
    bad = tmp_path / "d.csv"
    bad.write_text("slide_id,x,y,p\ns,1,2,0.5\ns,nan,2,0.5\n", encoding="utf-8")
    with pytest.raises(ExportError, match=r"d\.csv:3: x, y and p must be finite"):
        read_detections(bad, "s")
    bad.write_text("slide_id,x,y\ns,1,2\n", encoding="utf-8")
    with pytest.raises(ExportError, match="p missing"):
        read_detections(bad, "s")
    bad.write_text("slide_id,x,y,p\ns,1,two,0.5\n", encoding="utf-8")
    with pytest.raises(ExportError, match=r"d\.csv:2: x, y, p and lesion must be numbers"):
        read_detections(bad, "s")
    assert read_detections(bad, "no such slide") == []
    with pytest.raises(ExportError, match="cannot read the detections CSV"):
        read_detections(tmp_path / "missing.csv", "s")


def test_nan_in_a_feature_is_refused(tmp_path):
    with pytest.raises(ExportError, match="cannot be written as JSON"):
        export_geojson(tmp_path / "n.geojson", detections=[Detection(1.0, 2.0, float("nan"))])
    assert list(tmp_path.iterdir()) == []
