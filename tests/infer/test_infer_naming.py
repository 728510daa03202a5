"""Slide ids and leftover temporaries: one implementation shared by infer and masks."""

from __future__ import annotations

from exaslide.atomic import temporary_sibling
from exaslide.naming import is_valid_slide_id, remove_stale_temporaries, slide_stem


def test_one_slide_stem_everywhere():
    from exaslide.cli.mask import slide_stem as mask_stem
    from exaslide.infer import slide_stem as infer_stem

    assert mask_stem is infer_stem is slide_stem
    assert slide_stem("/x/a.v1.svs") == "a.v1" and slide_stem("b.OME.TIFF") == "b"
    assert slide_stem("s3://bucket/dir/c.tif") == "c" and slide_stem("C:\\d\\e.svs") == "e"


def test_valid_slide_ids():
    assert is_valid_slide_id("tumor_001") and is_valid_slide_id("a.b")
    assert not any(is_valid_slide_id(s) for s in ("", None, "a/b", "a\\b", ".hidden"))


def test_one_remove_stale_temporaries(tmp_path):
    from exaslide.infer import output_paths
    from exaslide.masks import outputs as mask_outputs

    assert mask_outputs.remove_stale_temporaries is remove_stale_temporaries
    targets = list(output_paths(tmp_path, "a").values())
    stale = [temporary_sibling(t) for t in targets]
    # another slide whose id starts with "a." keeps its temporaries and outputs
    other = [temporary_sibling(t) for t in output_paths(tmp_path, "a.heatmap.x").values()]
    kept = tmp_path / "a.heatmap.npy"
    kept.write_bytes(b"")
    remove_stale_temporaries(targets)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in other) and kept.exists()
