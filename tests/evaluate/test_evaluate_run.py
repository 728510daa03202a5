"""``evaluate_run`` as a library: heatmaps of another class are refused."""

from __future__ import annotations

import json

import pytest
import shapely
from evaluate_helpers import heatmap_from_geometry

from exaslide.errors import EvaluationError
from exaslide.evaluate import write_heatmap
from exaslide.evaluate.run import EvaluateOptions, evaluate_run
from exaslide.manifest import ManifestEntry

SIZE = (8000, 8000)


def _cohort(tmp_path, classes: dict[str, str | None]) -> list[ManifestEntry]:
    heatmaps = tmp_path / "heatmaps"
    entries = []
    for i, (slide_id, name) in enumerate(classes.items()):
        heatmap = heatmap_from_geometry(shapely.Polygon(), SIZE, outside=0.1 * (i + 1))
        meta = dict(heatmap.meta, **({} if name is None else {"class": name}))
        write_heatmap(heatmaps, slide_id, heatmap.probabilities, meta)
        entries.append(ManifestEntry(slide_id=slide_id, path=f"{slide_id}.tif",
                                     annotation=None, label="normal" if i % 2 else "tumour",
                                     split=""))
    return entries


def test_heatmaps_of_the_positive_class_or_without_class_are_evaluated(tmp_path):
    entries = _cohort(tmp_path, {"a": "tumour", "b": None})
    metrics = evaluate_run(tmp_path / "heatmaps", entries, tmp_path / "eval")
    assert metrics["slides"] == {"evaluated": 2, "failed": []}
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["options"][
        "positive_class"] == "tumour"


def test_heatmap_of_another_class_is_refused(tmp_path):
    entries = _cohort(tmp_path, {"a": "tumour", "b": "normal"})
    with pytest.raises(EvaluationError, match=r"^b: .*class 'normal', not 'tumour'"):
        evaluate_run(tmp_path / "heatmaps", entries, tmp_path / "eval")
    assert not (tmp_path / "eval" / "metrics.json").exists()
    # the positive class is an option: then the tumour heatmap is the wrong one
    with pytest.raises(EvaluationError, match=r"^a: .*class 'tumour', not 'normal'"):
        evaluate_run(tmp_path / "heatmaps", entries, tmp_path / "eval",
                     options=EvaluateOptions(positive_class="normal"))
