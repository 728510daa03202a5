"""Random smooth shapes: tissue pieces, tumours inside them, exclusions inside tumours."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon


def blob(cx: float, cy: float, radius: float, rng: np.random.Generator,
         roughness: float = 0.25, vertices: int = 96) -> Polygon:
    """A star-shaped smooth closed curve: a circle whose radius varies with a few harmonics."""
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 7):
        r += roughness / k * rng.normal() * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.35, None)
    return Polygon(np.column_stack([cx + r * np.cos(theta), cy + r * np.sin(theta)]))


@dataclass
class Layout:
    """Ground-truth geometry of a synthetic slide, in level-0 pixels."""

    tissue: shapely.Geometry  #: union of the tissue pieces
    tumours: list[Polygon]  #: tumour annotations (CAMELYON16 group ``_0``)
    exclusions: list[Polygon]  #: non-tumour islands inside tumours (group ``_2``)

    @property
    def tumour_region(self) -> shapely.Geometry:
        """What the label mask calls tumour: tumours minus exclusions."""
        return shapely.difference(shapely.union_all(self.tumours),
                                  shapely.union_all(self.exclusions))


def make_layout(width: int, height: int, tumours: int, rng: np.random.Generator,
                exclusion_rate: float = 0.5) -> Layout:
    """Place 1-3 tissue pieces, ``tumours`` tumours inside the tissue, and (with
    probability ``exclusion_rate`` per tumour) one exclusion island inside a tumour."""
    pieces = []
    n_pieces = int(rng.integers(1, 4))
    for i in range(n_pieces):
        cx = width * (i + 0.5) / n_pieces + rng.uniform(-0.05, 0.05) * width
        cy = height * rng.uniform(0.4, 0.6)
        radius = min(width / n_pieces, height) * rng.uniform(0.3, 0.42)
        pieces.append(blob(cx, cy, radius, rng))
    frame = shapely.box(0, 0, width, height).buffer(-0.02 * min(width, height))
    tissue = shapely.intersection(shapely.union_all(pieces), frame)
    tumour_list, exclusions = [], []
    core = tissue.buffer(-0.03 * min(width, height))
    if core.is_empty:
        core = tissue
    for _ in range(tumours):
        wanted = min(width, height) * rng.uniform(0.03, 0.09)
        centre, room = _roomy_point(core, wanted, rng)
        radius = min(room * 0.8, wanted)
        tumour = _largest(shapely.intersection(
            blob(centre.x, centre.y, radius, rng, roughness=0.35), tissue))
        tumour_list.append(tumour)
        if rng.uniform() < exclusion_rate:
            exclusions.append(blob(centre.x, centre.y, radius * 0.3, rng, roughness=0.2,
                                   vertices=48))
    return Layout(tissue, tumour_list, exclusions)


def _roomy_point(region: shapely.Geometry, radius: float,
                 rng: np.random.Generator) -> tuple[shapely.Point, float]:
    """A random point of ``region`` at least ``radius`` from its boundary if one is found
    in 200 tries (else the roomiest one tried), and its distance to the boundary."""
    x0, y0, x1, y1 = region.bounds
    best, best_room = region.representative_point(), 0.0
    for _ in range(200):
        point = shapely.Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
        if not region.contains(point):
            continue
        room = region.boundary.distance(point)
        if room >= radius:
            return point, room
        if room > best_room:
            best, best_room = point, room
    return best, max(best_room, region.boundary.distance(best))


def _largest(geometry: shapely.Geometry) -> Polygon:
    """The largest polygon of a (multi)polygon."""
    parts = [g for g in shapely.get_parts(geometry) if g.geom_type == "Polygon"]
    return max(parts, key=lambda g: g.area)
