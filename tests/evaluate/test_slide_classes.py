"""CAMELYON17 slide classes from heatmaps: features, the rule, the trained classifier, its
file, and the batch functions (train on a manifest, predict and stage patients)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from exaslide.errors import EvaluationError
from exaslide.evaluate.camelyon17 import read_stage_csv, stage_report
from exaslide.evaluate.slide_classes import (
    FEATURE_NAMES,
    META_FILE,
    MODEL_FILE,
    SlideClassifier,
    heatmap_features,
    heatmap_regions,
    rule_slide_class,
    slide_class_report,
    train_slide_classifier,
)
from exaslide.evaluate.staging import (
    StageOptions,
    WrongClassError,
    collect_features,
    predict_stages,
    train_from_heatmaps,
)
from exaslide.heatmaps import Heatmap, read_heatmap, write_heatmap
from exaslide.manifest import write_manifest

MPP = 2.0
CELL = 16  # level-0 pixels per cell: 32 um
CELL_UM = CELL * MPP
SIZE = 170  # cells a side: 5.4 mm
RANGES = {"negative": None, "itc": (0.07, 0.18), "micro": (0.3, 1.7), "macro": (2.3, 3.2)}


def meta(**extra) -> dict:
    return {"level0_size": [SIZE * CELL, SIZE * CELL], "origin": [0, 0], "cell": CELL,
            "mpp": [MPP, MPP], "patch_footprint": 2 * CELL, "class": "tumour", **extra}


def blob_map(blobs: list[tuple[float, float, float]], blur: float = 0.0, noise: float = 0.0,
             rng: np.random.Generator | None = None, speckles: int = 0) -> np.ndarray:
    """A probability map: tissue disc (NaN outside), 0.02 background, discs of
    ``(diameter_mm, row, col)`` at 0.97, optionally blurred (a CNN's patch footprint),
    noisy and with false-positive single cells."""
    from scipy import ndimage

    rows, cols = np.mgrid[:SIZE, :SIZE] + 0.5
    tumour = np.zeros((SIZE, SIZE))
    for diameter, r, c in blobs:
        radius = diameter * 1000 / CELL_UM / 2
        tumour[(rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2] = 1.0
    if blur:
        tumour = ndimage.gaussian_filter(tumour, blur)
    probs = 0.02 + 0.95 * tumour
    if rng is not None:
        probs = probs + rng.normal(0, noise, probs.shape)
        for r, c in rng.integers(10, SIZE - 10, (speckles, 2)):
            probs[r, c] = rng.uniform(0.5, 0.8)
    tissue = (rows - SIZE / 2) ** 2 + (cols - SIZE / 2) ** 2 <= (0.47 * SIZE) ** 2
    return np.where(tissue, np.clip(probs, 0, 1), np.nan).astype(np.float32)


def heatmap(probs: np.ndarray, **extra) -> Heatmap:
    return Heatmap(probs, meta(**extra))


def noisy_slide(cls: str, rng: np.random.Generator) -> np.ndarray:
    """A heatmap as a CNN would give: blurred lesions of the class's sizes, noise, a few
    false-positive cells."""
    blobs = []
    if RANGES[cls] is not None:
        largest = rng.uniform(*RANGES[cls])
        blobs.append((largest, SIZE / 2 + rng.uniform(-8, 8), SIZE / 2 + rng.uniform(-8, 8)))
        if rng.uniform() < 0.5:
            blobs.append((largest * rng.uniform(0.2, 0.5), SIZE * 0.2, SIZE * 0.5))
    return blob_map(blobs, blur=1.5, noise=0.02, rng=rng, speckles=int(rng.integers(0, 4)))


def test_features_of_a_clean_disc():
    diameter = 1.0  # mm
    features = heatmap_features(heatmap(blob_map([(diameter, 85, 85)])))
    assert list(features) == list(FEATURE_NAMES)
    for t in ("t50", "t90"):
        assert features[f"{t}_regions"] == 1
        assert features[f"{t}_max_diameter_um"] == pytest.approx(1000, abs=CELL_UM)
        assert features[f"{t}_largest_major_axis_um"] == pytest.approx(1000, abs=CELL_UM)
        assert features[f"{t}_largest_area_um2"] == pytest.approx(np.pi * 500 ** 2, rel=0.03)
    assert features["max_prob"] == pytest.approx(0.97)
    assert features["tissue_area_um2"] == pytest.approx(np.pi * (0.47 * SIZE * CELL_UM) ** 2,
                                                        rel=0.02)
    assert 0 < features["t50_tumour_fraction"] < 0.05
    empty = heatmap_features(heatmap(np.full((8, 8), np.nan, np.float32)))
    assert set(empty.values()) == {0.0}


def test_regions_are_measured_in_microns_whatever_the_cell():
    probs = blob_map([(2.5, 85, 85), (0.5, 25, 85)])
    coarse = heatmap_regions(heatmap(probs))
    assert coarse.count == 2 and coarse.max_diameter_um == pytest.approx(2500, abs=CELL_UM)
    # the same map with cells twice as large: every length doubles
    double = heatmap_regions(heatmap(probs, cell=2 * CELL))
    assert double.max_diameter_um == pytest.approx(2 * coarse.max_diameter_um)
    assert heatmap_regions(heatmap(probs), mpp=4.0).max_diameter_um == \
        pytest.approx(double.max_diameter_um)


@pytest.mark.parametrize(("blobs", "expected"), [
    ([], "negative"),
    ([(0.1, 85, 85)], "itc"),
    ([(0.15, 85, 85), (0.12, 30, 85)], "itc"),
    ([(0.5, 85, 85)], "micro"),
    ([(1.5, 85, 85), (0.1, 20, 85)], "micro"),
    ([(2.5, 85, 85)], "macro"),
    ([(0.3, 20, 85), (3.0, 95, 85)], "macro"),
])
def test_rule_is_exact_on_clean_blobs(blobs, expected):
    assert rule_slide_class(heatmap(blob_map(blobs))) == expected


def test_rule_measures_the_longest_diameter_of_elongated_regions():
    probs = np.full((SIZE, SIZE), 0.01, np.float32)
    probs[80:83, 20:90] = 0.9  # 70 cells = 2.24 mm long, 3 cells wide
    assert rule_slide_class(heatmap(probs)) == "macro"
    probs[80:83, 20:70] = 0.9
    probs[80:83, 70:90] = 0.01  # 50 cells = 1.6 mm
    assert rule_slide_class(heatmap(probs)) == "micro"


def dataset(n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    classes = [c for c in RANGES for _ in range(n_per_class)]
    rows = [heatmap_features(heatmap(noisy_slide(c, rng))) for c in classes]
    return rows, classes


@pytest.mark.parametrize("estimator", ["random-forest", "gradient-boosting"])
def test_classifier_predicts_held_out_heatmaps(estimator):
    train_rows, train_classes = dataset(10, seed=1)
    test_rows, test_classes = dataset(5, seed=2)
    model = train_slide_classifier(train_rows, train_classes, estimator=estimator, seed=0,
                                   cross_validate=estimator == "random-forest")
    predicted = model.predict(test_rows)
    report = slide_class_report(dict(enumerate(test_classes)), dict(enumerate(predicted)))
    assert report["accuracy"] >= 0.85, report
    assert model.predict_proba(test_rows).shape == (20, 4)
    if estimator == "random-forest":
        assert model.meta["cross_validation"]["accuracy"] >= 0.8
        assert model.meta["class_counts"] == {c: 10 for c in RANGES}


def test_trained_model_is_deterministic_and_round_trips(tmp_path):
    rows, classes = dataset(4, seed=3)
    a = train_slide_classifier(rows, classes, seed=5, cross_validate=False)
    b = train_slide_classifier(rows, classes, seed=5, cross_validate=False)
    assert np.array_equal(a.predict_proba(rows), b.predict_proba(rows))
    a.save(tmp_path / "m")
    assert (tmp_path / "m" / f"{MODEL_FILE}.sha256").exists()
    loaded = SlideClassifier.load(tmp_path / "m")
    assert np.array_equal(loaded.predict_proba(rows), a.predict_proba(rows))
    assert loaded.classes == ("itc", "macro", "micro", "negative")


def test_loading_refuses_other_feature_sets_and_corrupt_files(tmp_path):
    rows, classes = dataset(3, seed=4)
    folder = tmp_path / "m"
    train_slide_classifier(rows, classes, cross_validate=False).save(folder)
    meta_path = folder / META_FILE
    good = meta_path.read_text()
    meta = json.loads(good)
    meta["feature_set"] = "camelyon17-heatmap-v0"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(EvaluationError, match=r"feature set 'camelyon17-heatmap-v0'.*retrain"):
        SlideClassifier.load(folder)
    meta_path.write_text(json.dumps({**json.loads(good), "format": "something"}))
    with pytest.raises(EvaluationError, match="not an exaslide slide classifier"):
        SlideClassifier.load(folder)
    meta_path.write_text(good)
    model = folder / MODEL_FILE
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(EvaluationError, match="corrupt file"):
        SlideClassifier.load(folder)
    with pytest.raises(EvaluationError, match="not a slide classifier"):
        SlideClassifier.load(tmp_path)


def test_bad_training_input():
    rows, _ = dataset(1, seed=6)
    with pytest.raises(EvaluationError, match="unknown slide class 'big'"):
        train_slide_classifier(rows, ["negative", "itc", "micro", "big"])
    with pytest.raises(EvaluationError, match="at least two classes"):
        train_slide_classifier(rows, ["macro"] * 4)
    with pytest.raises(EvaluationError, match="4 feature rows but 3 labels"):
        train_slide_classifier(rows, ["macro"] * 3)
    with pytest.raises(EvaluationError, match="unknown estimator 'svm'"):
        train_slide_classifier(rows, list(RANGES), estimator="svm")


def test_bad_heatmaps():
    with pytest.raises(EvaluationError, match="no mpp"):
        heatmap_features(heatmap(blob_map([]), mpp=None))
    assert heatmap_features(heatmap(blob_map([]), mpp=None), mpp=MPP)["max_prob"] > 0
    with pytest.raises(EvaluationError, match="not probabilities"):
        heatmap_features(heatmap(blob_map([]) * 10 - 5))


# --------------------------------------------------------------------------- batch


def write_cohort(folder, classes: dict[str, str], seed: int = 0, missing=(), **meta_extra):
    """Heatmaps of slides ``patient_XXX_node_Y`` and a manifest with slide_class."""
    rng = np.random.default_rng(seed)
    rows = []
    for slide_id, cls in classes.items():
        if slide_id not in missing:
            write_heatmap(folder / "heatmaps", slide_id, noisy_slide(cls, rng),
                          meta(**meta_extra))
        rows.append({"slide_id": slide_id, "path": f"{slide_id}.tif", "annotation": "",
                     "label": "normal" if cls == "negative" else "tumour",
                     "split": "train", "patient": slide_id.rpartition("_node_")[0],
                     "slide_class": cls})
    return write_manifest(folder / "manifest.csv", rows)


def patient_classes(n_patients: int, seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    return {f"patient_{p:03d}_node_{n}": str(rng.choice(list(RANGES), p=[.5, .15, .15, .2]))
            for p in range(n_patients) for n in range(5)}


def test_train_and_predict_stages_from_a_folder(tmp_path):
    classes = patient_classes(8, seed=0)
    manifest = write_cohort(tmp_path, classes, seed=1)
    heatmaps = tmp_path / "heatmaps"
    trained = train_from_heatmaps(heatmaps, manifest, tmp_path / "model")
    assert trained.slides == 40 and not trained.failed
    test_classes = patient_classes(4, seed=7)
    write_cohort(tmp_path / "test", test_classes, seed=2)
    submission = tmp_path / "submission.csv"
    result = predict_stages(tmp_path / "test" / "heatmaps", submission, model=tmp_path / "model",
                            predictions_csv=tmp_path / "slides.csv")
    assert result.method == "model" and not result.failed
    assert slide_class_report(test_classes, result.slide_classes)["accuracy"] >= 0.85
    table = read_stage_csv(submission)
    assert table.patients == result.stages and len(table.slides) == 20
    from exaslide.evaluate.camelyon17 import stages_from_slide_classes

    reference = stages_from_slide_classes(test_classes)
    assert stage_report(reference, submission)["kappa"] >= 0.7
    rows = list(csv.DictReader((tmp_path / "slides.csv").open()))
    assert len(rows) == 20 and {"p_negative", "p_macro"} <= set(rows[0])


def test_rule_without_training_data(tmp_path):
    classes = {"patient_000_node_0": "macro", "patient_000_node_1": "negative",
               "patient_001_node_0": "itc", "patient_001_node_1": "negative"}
    for slide_id, cls in classes.items():
        blobs = [] if RANGES[cls] is None else [(np.mean(RANGES[cls]), 85, 85)]
        write_heatmap(tmp_path, slide_id, blob_map(blobs), meta())
    result = predict_stages(tmp_path, tmp_path / "sub.csv")
    assert result.method == "rule" and result.slide_classes == classes
    assert result.stages == {"patient_000": "pN1", "patient_001": "pN0(i+)"}
    assert result.diameters_mm["patient_000_node_0"] == pytest.approx(2.75, abs=0.04)
    strict = predict_stages(tmp_path, None, options=StageOptions(threshold=0.99))
    assert set(strict.slide_classes.values()) == {"negative"}
    with pytest.raises(EvaluationError, match="threshold must be in"):
        predict_stages(tmp_path, None, options=StageOptions(threshold=0.0))


def test_missing_heatmap_is_reported_and_the_batch_goes_on(tmp_path):
    classes = patient_classes(6, seed=3)
    manifest = write_cohort(tmp_path, classes, missing={"patient_002_node_3"})
    trained = train_from_heatmaps(tmp_path / "heatmaps", manifest, tmp_path / "model")
    assert list(trained.failed) == ["patient_002_node_3"] and trained.slides == 29
    assert "no such heatmap file" in trained.failed["patient_002_node_3"]
    result = predict_stages(tmp_path / "heatmaps", tmp_path / "sub.csv",
                            model=tmp_path / "model", manifest=manifest)
    assert list(result.failed) == ["patient_002_node_3"]
    assert result.incomplete == {"patient_002": ["patient_002_node_3"]}
    assert len(result.stages) == 6  # the patient is staged from its other 4 nodes
    assert read_stage_csv(tmp_path / "sub.csv").slides_of("patient_002") \
        .get("patient_002_node_3", "") == ""


def test_bad_batch_input(tmp_path):
    classes = patient_classes(2, seed=4)
    manifest = write_cohort(tmp_path, classes)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    plain = write_manifest(tmp_path / "plain.csv",
                           [{k: v for k, v in r.items() if k != "slide_class"} for r in rows])
    with pytest.raises(EvaluationError, match="no slide_class column"):
        train_from_heatmaps(tmp_path / "heatmaps", plain, tmp_path / "m")
    rows[1]["slide_class"] = "Huge"
    odd = write_manifest(tmp_path / "odd.csv", rows)
    with pytest.raises(EvaluationError, match="slide patient_000_node_1: unknown slide class"):
        train_from_heatmaps(tmp_path / "heatmaps", odd, tmp_path / "m")
    other = tmp_path / "other"
    write_cohort(other, classes, **{"class": "normal"})
    with pytest.raises(WrongClassError, match="class 'normal', not 'tumour'"):
        collect_features(other / "heatmaps", list(classes))
    with pytest.raises(WrongClassError):
        predict_stages(other / "heatmaps", None)
    assert len(predict_stages(other / "heatmaps", None,
                              options=StageOptions(positive_class="normal")).stages) == 2
    with pytest.raises(EvaluationError, match="no such heatmap folder"):
        predict_stages(tmp_path / "nowhere", None)
    write_heatmap(tmp_path / "odd", "lonely", blob_map([]), meta())
    named = predict_stages(tmp_path / "odd", None)
    assert "cannot tell its patient" in named.failed["lonely"]
    assert read_heatmap(tmp_path / "odd", "lonely").slide_id == "lonely"


def test_cross_validation_never_splits_a_patient(monkeypatch):
    """A patient's nodes stay on one side of every fold (else the score leaks)."""
    from sklearn.model_selection import StratifiedGroupKFold

    rows, classes = dataset(8, seed=3)
    groups = [f"p{i // 4}" for i in range(len(rows))]  # 4 nodes per patient
    seen = []
    real = StratifiedGroupKFold.split

    def spy(self, x, y, g):
        for train, test in real(self, x, y, g):
            seen.append((set(np.asarray(g)[train]), set(np.asarray(g)[test])))
            yield train, test

    monkeypatch.setattr(StratifiedGroupKFold, "split", spy)
    model = train_slide_classifier(rows, classes, seed=0, groups=groups)
    assert model.meta["cross_validation"]["folds"] >= 2 and seen
    assert all(not (train & test) for train, test in seen)


def test_a_model_pickle_others_could_have_written_is_refused(tmp_path, monkeypatch):
    rows, classes = dataset(3, seed=5)
    train_slide_classifier(rows, classes, seed=0, cross_validate=False).save(tmp_path / "m")
    pickle = next((tmp_path / "m").glob("*.joblib"))
    pickle.chmod(0o666)  # anyone could have replaced it
    with pytest.raises(EvaluationError, match="pickle, which runs code when loaded"):
        SlideClassifier.load(tmp_path / "m")
    monkeypatch.setenv("EXASLIDE_TRUST_MODELS", "1")
    assert SlideClassifier.load(tmp_path / "m").predict(rows[:2]) is not None
