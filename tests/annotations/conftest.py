"""Shared fixtures for the annotation tests.

Real test data is looked up (read-only, never copied) in, by priority:
``$EXASLIDE_SHARED_DATA/annotations``, ``<repo>/../shared/data/annotations`` and
``<repo>/shared/data/annotations``. Tests that need it skip when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _candidates() -> list[Path]:
    found = []
    env = os.environ.get("EXASLIDE_SHARED_DATA")
    if env:
        found.append(Path(env) / "annotations")
    found.append(REPO_ROOT.parent / "shared" / "data" / "annotations")
    found.append(REPO_ROOT / "shared" / "data" / "annotations")
    return found


@pytest.fixture(scope="session")
def annotation_data() -> Path:
    """The real annotation test-data folder; skips the test when it is absent."""
    for candidate in _candidates():
        if candidate.is_dir():
            return candidate
    searched = ", ".join(str(c) for c in _candidates())
    pytest.skip(
        f"real annotation test data not found (searched {searched}); "
        "set EXASLIDE_SHARED_DATA to the folder holding annotations/"
    )


@pytest.fixture(scope="session")
def real_file(annotation_data: Path) -> Callable[[str], Path]:
    """Return a function giving the path of one real file; skips when that file is absent."""

    def get(relative: str) -> Path:
        path = annotation_data / relative
        if not path.is_file():
            pytest.skip(f"real annotation test file {path} is absent")
        return path

    return get


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """Return a function writing ``text`` to ``tmp_path / name`` and returning the path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def _asap_doc(annotations: list[str], groups: str = "") -> str:
    """Wrap Annotation elements in an ASAP_Annotations document."""
    return (
        '<?xml version="1.0"?>\n<ASAP_Annotations>\n<Annotations>\n'
        + "\n".join(annotations)
        + f"\n</Annotations>\n<AnnotationGroups>{groups}</AnnotationGroups>\n"
        "</ASAP_Annotations>\n"
    )


def _asap_annotation(
    name: str, points: list[tuple[object, object]], *, group: str = "_0", type_: str = "Polygon"
) -> str:
    """One ASAP Annotation element with the given vertices (in Order)."""
    coords = "".join(
        f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(points)
    )
    return (
        f'<Annotation Name="{name}" Type="{type_}" PartOfGroup="{group}" Color="#F4FA58">'
        f"<Coordinates>{coords}</Coordinates></Annotation>"
    )


AsapSpec = tuple  # (name, points[, group[, type]])


@pytest.fixture
def asap_file(tmp_path: Path) -> Callable[..., Path]:
    """Return ``make(specs, name="a.xml", groups="")`` writing a synthetic ASAP XML file.

    Each spec is ``(name, points)``, ``(name, points, group)`` or
    ``(name, points, group, type)``; the default group is ``_0``, the type ``Polygon``.
    """

    def make(specs: list[AsapSpec], name: str = "a.xml", groups: str = "") -> Path:
        elems = []
        for spec in specs:
            ann_name, points, *rest = spec
            group = rest[0] if rest else "_0"
            type_ = rest[1] if len(rest) > 1 else "Polygon"
            elems.append(_asap_annotation(ann_name, points, group=group, type_=type_))
        path = tmp_path / name
        path.write_text(_asap_doc(elems, groups), encoding="utf-8")
        return path

    return make
