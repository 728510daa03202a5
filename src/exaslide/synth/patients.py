"""Synthetic CAMELYON17 patients: 5 lymph-node slides each, lesions sized by the definitions.

Each patient is given a pN-stage (the five stages in turn over a seeded permutation of the
patients, so any 5 or more patients cover ``pN0``, ``pN0(i+)``, ``pN1mi``, ``pN1`` and
``pN2``); its node classes are drawn to give that stage under
:func:`exaslide.evaluate.camelyon17.pn_stage`; each node gets lesions whose longest
diameters (the diameter of their convex hull, at the slide's µm/px) follow the CAMELYON17
definitions:

- ``negative``: no lesion;
- ``itc``: largest lesion 0.08-0.18 mm (an isolated tumour cell cluster is < 0.2 mm);
- ``micro``: largest 0.3-1.6 mm (0.2-2 mm);
- ``macro``: largest 2.4-3.0 mm (> 2 mm), at most 70 % of the slide's shorter side.

A positive node may also hold up to ``base.tumours - 1`` smaller lesions (10-50 % of the
largest, at least 0.05 mm), at least 0.3 mm apart from each other so they stay separate
lesions. Lesion polygons are star-shaped blobs scaled to their exact longest diameter and
written as ASAP XML (``_0`` tumour, no exclusions); the tissue is one blob around the
slide's centre joined with every lesion grown by 60 µm. The slide is painted like any
synthetic slide (:mod:`exaslide.synth.slide`), with texture sets shared by the cohort's
slides (drawing one costs about a second at 2 µm/px, painting a default slide a tenth).

Outputs of :func:`make_patients`: the node slides ``patient_XXX_node_Y.tif`` (+ ``.xml``
for positive nodes), ``manifest.csv`` (``slide_id,path,annotation,label,split,patient,
slide_class`` and ``width,height,mpp,seed,lesions,largest_mm``) and the reference stage
CSVs in the official format: ``stage.csv`` (every patient) and ``stage_<split>.csv`` (the
patients of one split; all nodes of a patient share its split).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import shapely
from shapely.affinity import scale, translate
from shapely.geometry import Point, Polygon

from exaslide.atomic import atomic_path
from exaslide.evaluate.camelyon17 import STAGES, longest_chord, pn_stage, write_stage_csv
from exaslide.manifest import write_manifest
from exaslide.synth.shapes import Layout, blob
from exaslide.synth.slide import (
    TEXTURE_SIZE,
    SynthError,
    SynthSlide,
    SynthSpec,
    _Painter,
    _write_annotations,
    _write_pyramid,
    check_disk_space,
    estimated_disk_bytes,
    level_sizes,
)
from exaslide.synth.texture import make_texture

NODES_PER_PATIENT = 5
MAX_PATIENTS = 10_000
#: Default node slide: 2048 x 2048 at 2 µm/px (4.1 mm a side: room for a 2.9 mm lesion).
PATIENT_SPEC = SynthSpec(width=2048, height=2048, tumours=3, mpp=2.0, exclusion_rate=0.0)
DIAMETER_MM = {"itc": (0.08, 0.18), "micro": (0.3, 1.6), "macro": (2.4, 3.0)}
MACRO_MAX_FRACTION = 0.7  #: a macro-metastasis spans at most this much of the shorter side
SECONDARY_MIN_MM = 0.05
LESION_GAP_MM = 0.3
TISSUE_MARGIN_UM = 60.0
#: Splits of the patients of one stage, in turn (stratified by stage).
SPLIT_PATTERN = ("train", "test", "train", "val", "train", "test")
#: Node slides share this many texture sets by default (drawing textures costs more than
#: painting a small slide).
TEXTURE_POOL = 2


def node_classes_for_stage(stage: str, rng: np.random.Generator,
                           nodes: int = NODES_PER_PATIENT) -> list[str]:
    """Node classes that give ``stage`` under :func:`pn_stage` (shuffled)."""
    if nodes < 4:
        raise SynthError(f"a patient needs at least 4 nodes for pN2, not {nodes}")
    classes = ["negative"] * nodes
    if stage == "pN0(i+)":
        positives = ["itc"] * int(rng.integers(1, 4))
    elif stage == "pN1mi":
        positives = ["micro"] * int(rng.integers(1, 4)) + ["itc"] * int(rng.integers(0, 2))
    elif stage == "pN1":
        positives = ["macro"] + ["micro"] * int(rng.integers(0, 3)) \
            + ["itc"] * int(rng.integers(0, 2))
    elif stage == "pN2":
        count = int(rng.integers(4, min(nodes, 9) + 1))
        macros = int(rng.integers(1, count + 1))
        positives = ["macro"] * macros + ["micro"] * (count - macros)
    elif stage == "pN0":
        positives = []
    else:
        raise SynthError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    classes[: len(positives)] = positives[:nodes]
    classes = [str(c) for c in rng.permutation(classes)]
    if pn_stage(classes) != stage:  # the rule is the reference: never write a wrong label
        raise SynthError(f"internal: node classes {classes} do not give {stage}")
    return classes


def lesion_diameters_mm(slide_class: str, rng: np.random.Generator, max_lesions: int,
                        macro_max_mm: float) -> list[float]:
    """Longest diameters (mm) of a node's lesions, largest (the class-defining one)
    first; empty for ``negative``."""
    if slide_class == "negative":
        return []
    low, high = DIAMETER_MM[slide_class]
    if slide_class == "macro":
        high = min(high, macro_max_mm)
    largest = float(rng.uniform(low, high))
    extra = int(rng.integers(0, max(1, max_lesions)))
    others = [max(SECONDARY_MIN_MM, largest * float(rng.uniform(0.1, 0.5)))
              for _ in range(extra)]
    return [largest, *sorted(others, reverse=True)]


def lesion_polygon(diameter_px: float, rng: np.random.Generator) -> Polygon:
    """A smooth blob whose longest diameter is ``diameter_px``, its bounding box centred
    on the origin."""
    shape = blob(0.0, 0.0, 1.0, rng, roughness=0.3, vertices=64)
    hull = shapely.get_coordinates(shape.convex_hull)
    longest = longest_chord(hull)
    shape = scale(shape, diameter_px / longest, diameter_px / longest, origin=(0, 0))
    x0, y0, x1, y1 = shape.bounds
    return translate(shape, -(x0 + x1) / 2, -(y0 + y1) / 2)


def _place(lesion: Polygon, placed: list[Polygon], inner: Polygon, tissue: Polygon,
           gap_px: float, rng: np.random.Generator) -> Polygon | None:
    """``lesion`` moved to a random spot inside ``inner`` with its centre in ``tissue``,
    at least ``gap_px`` from every placed lesion; None when 300 tries fail."""
    x0, y0, x1, y1 = inner.bounds
    lx0, ly0, lx1, ly1 = lesion.bounds
    if lx1 - lx0 >= x1 - x0 or ly1 - ly0 >= y1 - y0:
        return None
    for _ in range(300):
        cx = rng.uniform(x0 - lx0, x1 - lx1)
        cy = rng.uniform(y0 - ly0, y1 - ly1)
        if not tissue.contains(Point(cx, cy)):
            continue
        moved = translate(lesion, cx, cy)
        if inner.contains(moved) and all(p.distance(moved) >= gap_px for p in placed):
            return moved
    return None


def node_layout(spec: SynthSpec, diameters_mm: list[float], rng: np.random.Generator
                ) -> Layout:
    """The ground truth of one node slide: lesions of the given longest diameters (the
    first always placed, smaller ones dropped when they do not fit) inside the tissue."""
    side = min(spec.width, spec.height)
    mpp = spec.mpp
    node = blob(spec.width / 2, spec.height / 2, 0.38 * side, rng, roughness=0.2)
    frame = shapely.box(0, 0, spec.width, spec.height).buffer(-0.02 * side, join_style="mitre")
    margin = max(2.0, TISSUE_MARGIN_UM / mpp)
    inner = frame.buffer(-margin, join_style="mitre")
    placed: list[Polygon] = []
    for i, diameter in enumerate(diameters_mm):
        lesion = lesion_polygon(diameter * 1000.0 / mpp, rng)
        moved = _place(lesion, placed, inner, node, LESION_GAP_MM * 1000.0 / mpp, rng)
        if moved is None and i == 0:
            moved = translate(lesion, spec.width / 2, spec.height / 2)
        if moved is not None:
            placed.append(moved)
    grown = [p.buffer(margin) for p in placed]
    tissue = shapely.intersection(shapely.union_all([node, *grown]), frame)
    return Layout(tissue, placed, [])


class _NodePainter(_Painter):
    """The synthetic-slide painter with textures made once and shared by many slides."""

    def __init__(self, spec: SynthSpec, layout: Layout, textures: list[np.ndarray]):
        self.spec, self.layout = spec, layout
        self.tumour_region = layout.tumour_region
        self.textures = textures


def node_textures(mpp: float, seed: int) -> list[np.ndarray]:
    """The background, normal and tumour textures of a node slide."""
    return [make_texture(kind, TEXTURE_SIZE, mpp, seed)
            for kind in ("background", "normal", "tumour")]


def write_node_slide(path: str | Path, spec: SynthSpec, layout: Layout,
                     progress: Callable[[int], None] | None = None,
                     textures: list[np.ndarray] | None = None) -> SynthSlide:
    """Write one node slide with a given layout: its ASAP XML (when it has lesions) first,
    then the TIFF, each atomically (as :func:`exaslide.synth.write_synthetic_slide`).
    ``textures`` (:func:`node_textures`) default to those of ``spec.seed``."""
    spec.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    annotation = _write_annotations(path.with_suffix(".xml"), layout) \
        if layout.tumours else None
    sizes = level_sizes(spec)
    with atomic_path(path) as out:
        painter = _NodePainter(spec, layout, textures or node_textures(spec.mpp, spec.seed))
        _write_pyramid(out, spec, sizes, painter.strip, progress)
    return SynthSlide(path, annotation, spec, layout, sizes)


@dataclass
class NodePlan:
    """One node slide to write: its ids, class, parameters and ground truth."""

    slide_id: str
    patient: str
    split: str
    slide_class: str
    spec: SynthSpec
    layout: Layout

    @property
    def largest_mm(self) -> float:
        """Longest diameter of its largest lesion (0 without)."""
        from exaslide.evaluate.camelyon17 import lesion_diameters_mm as measure

        return max(measure(self.layout.tumour_region, self.spec.mpp), default=0.0) \
            if self.layout.tumours else 0.0


def _macro_max_mm(base: SynthSpec) -> float:
    side_mm = min(base.width, base.height) * base.mpp / 1000.0
    high = min(DIAMETER_MM["macro"][1], MACRO_MAX_FRACTION * side_mm)
    low = DIAMETER_MM["macro"][0]
    if high < low + 0.1:
        need = math.ceil((low + 0.1) / MACRO_MAX_FRACTION * 1000.0 / base.mpp)
        raise SynthError(f"a {base.width} x {base.height} slide at {base.mpp} µm/px is "
                         f"{side_mm:.2f} mm across: too small for a macro-metastasis "
                         f"(> 2 mm; drawn {low}-{DIAMETER_MM['macro'][1]} mm); use at least "
                         f"{need} x {need} pixels at this --mpp, or a coarser --mpp")
    return high


def plan_patients(n_patients: int, base: SynthSpec | None = None, seed: int = 0
                  ) -> tuple[list[NodePlan], dict[str, str]]:
    """Draw every patient's stage, node classes, lesion sizes and layouts (nothing is
    written). Returns the node plans and ``{patient: stage}``."""
    if not 1 <= n_patients <= MAX_PATIENTS:
        raise SynthError(f"a patient cohort has 1 to {MAX_PATIENTS} patients, not "
                         f"{n_patients}")
    base = replace(base or PATIENT_SPEC, exclusion_rate=0.0)
    base.validate()
    macro_max = _macro_max_mm(base)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_patients)
    stages = {f"patient_{i:03d}": STAGES[int(order[i]) % len(STAGES)]
              for i in range(n_patients)}
    seen: dict[str, int] = {}
    plans = []
    for patient, stage in stages.items():
        split = SPLIT_PATTERN[seen.get(stage, 0) % len(SPLIT_PATTERN)]
        seen[stage] = seen.get(stage, 0) + 1
        for node, cls in enumerate(node_classes_for_stage(stage, rng)):
            diameters = lesion_diameters_mm(cls, rng, base.tumours, macro_max)
            node_seed = int(rng.integers(2**31))
            layout = node_layout(base, diameters, np.random.default_rng(node_seed))
            spec = replace(base, tumours=len(layout.tumours), seed=node_seed)
            plans.append(NodePlan(f"{patient}_node_{node}", patient, split, cls, spec,
                                  layout))
    return plans, stages


def make_patients(out_dir: str | Path, n_patients: int, *, base: SynthSpec | None = None,
                  seed: int = 0, on_slide: Callable[[SynthSlide], None] | None = None,
                  texture_sets: int = TEXTURE_POOL) -> Path:
    """Write ``n_patients`` x 5 node slides, ``manifest.csv`` and the reference stage CSVs
    into ``out_dir`` (see the module docstring).

    Args:
        out_dir: output folder.
        n_patients: number of patients (5 or more cover every stage).
        base: slide parameters (size, mpp, tile, quality; ``tumours`` caps the lesions per
            positive node); default :data:`PATIENT_SPEC`.
        seed: random seed: same seed, same cohort.
        on_slide: called after each slide is written.
        texture_sets: distinct texture sets shared by the slides (each costs about a
            second to draw at 2 µm/px).

    Returns:
        The manifest path.

    Raises:
        SynthError: bad parameters, a slide too small for a macro-metastasis, not enough
            disk (all checked before anything is written).
    """
    plans, stages = plan_patients(n_patients, base, seed)
    if texture_sets < 1:
        raise SynthError(f"texture_sets must be at least 1, not {texture_sets}")
    out = Path(out_dir)
    check_disk_space(out, sum(estimated_disk_bytes(p.spec) for p in plans))
    out.mkdir(parents=True, exist_ok=True)
    rows, textures = [], {}
    for i, plan in enumerate(plans):
        key = i % texture_sets  # texture set k of the cohort: seeded by (seed, k)
        if key not in textures:
            texture_seed = int(np.random.default_rng([seed, key]).integers(2**31))
            textures[key] = node_textures(plan.spec.mpp, texture_seed)
        made = write_node_slide(out / f"{plan.slide_id}.tif", plan.spec, plan.layout,
                                textures=textures[key])
        if on_slide is not None:
            on_slide(made)
        rows.append({
            "slide_id": plan.slide_id, "path": made.path.name,
            "annotation": made.annotation_path.name if made.annotation_path else "",
            "label": "normal" if plan.slide_class == "negative" else "tumour",
            "split": plan.split, "patient": plan.patient, "slide_class": plan.slide_class,
            "width": plan.spec.width, "height": plan.spec.height, "mpp": plan.spec.mpp,
            "seed": plan.spec.seed, "lesions": len(plan.layout.tumours),
            "largest_mm": round(plan.largest_mm, 4),
        })
    classes = {p.slide_id: p.slide_class for p in plans}
    write_stage_csv(out / "stage.csv", stages, classes)
    for split in sorted({p.split for p in plans}):
        members = {p.patient for p in plans if p.split == split}
        write_stage_csv(out / f"stage_{split}.csv",
                        {k: v for k, v in stages.items() if k in members},
                        {p.slide_id: p.slide_class for p in plans if p.patient in members})
    return write_manifest(out / "manifest.csv", rows)
