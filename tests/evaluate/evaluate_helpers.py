"""Helpers for the evaluation tests: annotation sets and heatmaps built from known geometry."""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import Point

from exaslide.annotations import Annotation, AnnotationSet
from exaslide.evaluate.heatmap import Heatmap

MPP = 0.25  #: level-0 um/px of the fake slides


def disc(x: float, y: float, diameter_um: float, mpp: float = MPP):
    """A round lesion of the given diameter (um) centred at level-0 (x, y)."""
    return Point(x, y).buffer(diameter_um / mpp / 2, quad_segs=32)


def annotation_set(tumours=(), exclusions=()) -> AnnotationSet:
    """An AnnotationSet of tumour (group _0) and exclusion (group _2) polygons."""
    items = [Annotation(geometry=g, label="tumour", group="_0", name=f"t{i}", kind="polygon",
                        source=g) for i, g in enumerate(tumours)]
    items += [Annotation(geometry=g, label="exclusion", group="_2", name=f"e{i}",
                         kind="polygon", source=g) for i, g in enumerate(exclusions)]
    return AnnotationSet(annotations=items, format="asap")


def heatmap_from_geometry(geometry, size=(20000, 20000), cell=256.0, inside=1.0,
                          outside=0.0, mpp=MPP) -> Heatmap:
    """A heatmap whose cells are ``inside`` where their centre lies in ``geometry``."""
    rows, cols = int(np.ceil(size[1] / cell)), int(np.ceil(size[0] / cell))
    meta = {"slide_id": "s", "slide": "s.tif", "level0_size": list(size),
            "mpp": [mpp, mpp], "origin": [0, 0], "cell": cell, "patch_footprint": cell,
            "classes": ["normal", "tumour"], "model": "test"}
    heatmap = Heatmap(np.zeros((rows, cols), np.float32), meta)
    x, y = heatmap.grid_centres()
    xx, yy = np.meshgrid(x, y)
    hit = shapely.contains_xy(geometry, xx, yy) if not geometry.is_empty else np.zeros_like(xx)
    heatmap.probabilities[:] = np.where(hit, inside, outside)
    return heatmap
