"""``seg-perception eval`` and its core on a small real CamVid subset.

Every metric is checked against a straightforward computation written here, independent of
seg_perception.evaluation and of the corridor code in seg_perception.core: per-class boolean
masks for IoU, a row-by-row even-odd ray cast in exact rationals for the corridor, and plain
counting for the vehicle-ahead decision.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from seg_perception.cli import build_parser
from seg_perception.core.frame import FrameResult, OutputRequest, StreamState, process_frame
from seg_perception.core.image_codec import DecodedImage
from seg_perception.core.labels import CAMVID, CITYSCAPES
from seg_perception.core.pipeline import SegmentationPipeline
from seg_perception.core.vehicle_ahead import (
    VehicleAheadConfig,
    VehicleAheadDetector,
    resolve_vehicle_class_ids,
)
from seg_perception.errors import UsageError
from seg_perception.evaluation import (
    CONFIDENCE_THRESHOLDS,
    ECE_BINS,
    LABEL_SETS,
    Calibration,
    ClassMapping,
    ConfusionMatrix,
    DecisionCounts,
    Evaluator,
    FrameRecord,
    MappingError,
    count_decisions,
    find_samples,
    mappings_dir,
    pr_curve,
    read_image,
    run_evaluation,
)

CAMVID_CLASSES = CAMVID.class_names
CITYSCAPES_CLASSES = CITYSCAPES.class_names

# A clear vehicle ahead (TP), a dark car the Cityscapes model calls "background" (FN for it),
# a shop front it calls truck/bus (FP for it), and three val frames (no vehicle ahead).
SUBSET = {
    "train": ["0001TP_006690.png", "0001TP_008190.png", "0006R0_f03090.png"],
    "val": ["0016E5_07959.png", "0016E5_08025.png", "0016E5_08125.png"],
}
CORRIDOR = ((0.25, 1.0), (0.75, 1.0), (0.55, 0.55), (0.45, 0.55))  # the issue's, written out
VOID = 11
# Cityscapes -> CamVid written out independently of config/mappings (CamVid's own grouping).
CITYSCAPES_TO_CAMVID = {
    "sky": "Sky", "building": "Building", "wall": "Building", "pole": "Pole", "road": "Road",
    "sidewalk": "Pavement", "vegetation": "Tree", "terrain": "Tree",
    "traffic light": "SignSymbol", "traffic sign": "SignSymbol", "fence": "Fence",
    "car": "Car", "truck": "Car", "bus": "Car", "train": "Car", "person": "Pedestrian",
    "rider": "Bicyclist", "motorcycle": "Bicyclist", "bicycle": "Bicyclist",
}  # fmt: skip
JSON_KEYS = {"images", "pixel_accuracy", "mean_iou", "per_class_iou", "vehicle_ahead",
             "frames", "confusion_matrix", "pr_curve", "mapping", "model", "dataset",
             "corridor", "calibration"}
VEHICLE_KEYS = {"precision", "recall", "f1", "tp", "fp", "fn", "tn", "threshold"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine a second busy process makes 2 OpenMP
    threads spin (measured: ESPNet-CamVid 2.5 s instead of 80 ms a frame). Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def subset(shared, tmp_path_factory) -> tuple[Path, Path]:
    """The frames copied into a temporary images/ + labels/ pair (CamVid layout)."""
    root = tmp_path_factory.mktemp("camvid_subset")
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    camvid = shared / "data" / "camvid"
    for split, names in SUBSET.items():
        for name in names:
            shutil.copy(camvid / split / name, images / name)
            shutil.copy(camvid / f"{split}annot" / name, labels / name)
    return images, labels


# ------------------------------------------------------------------------------------------
# The independent reference computation.
# ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def reference_corridor_mask(height: int, width: int) -> np.ndarray:
    """Pixel centres inside the corridor, by a row-wise even-odd ray cast in exact rationals."""
    verts = [(Fraction(x), Fraction(y)) for x, y in CORRIDOR]
    mask = np.zeros((height, width), dtype=bool)
    columns = np.arange(width)
    for row in range(height):
        py = Fraction(2 * row + 1, 2 * height)
        for (xi, yi), (xj, yj) in zip(verts, verts[-1:] + verts[:-1], strict=True):
            if (yi > py) != (yj > py):
                cross = (xj - xi) * (py - yi) / (yj - yi) + xi
                # centre (2c + 1) / 2W < cross  <=>  c < (2W cross - 1) / 2
                mask[row] ^= columns < math.ceil((2 * width * cross - 1) / 2)
    return mask


def reference_metrics(preds: dict[str, np.ndarray], truths: dict[str, np.ndarray],
                      lut: dict[int, int], vehicle_ids: tuple[int, ...],
                      threshold: float) -> dict:
    """Pixel accuracy, IoU per class, coverages and the decision counts, counted plainly."""
    k = 11
    correct = total = 0
    inter = np.zeros(k)
    union = np.zeros(k)
    frames = {}
    for name, pred in preds.items():
        truth = truths[name]
        mapped = np.full(pred.shape, -1)
        for source, target in lut.items():
            mapped[pred == source] = target
        valid = truth != VOID
        correct += int((mapped[valid] == truth[valid]).sum())
        total += int(valid.sum())
        for c in range(k):
            t = (truth == c) & valid
            p = (mapped == c) & valid
            inter[c] += (t & p).sum()
            union[c] += (t | p).sum()
        mask = reference_corridor_mask(*truth.shape)
        cov_true = int(((truth == 8) & mask).sum()) / int(mask.sum())
        cov_pred = int((np.isin(pred, vehicle_ids) & mask).sum()) / int(mask.sum())
        frames[name] = (cov_true, cov_pred, cov_true >= 0.05, cov_pred >= threshold)
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    outcomes = [(t, p) for _, _, t, p in frames.values()]
    tp = sum(t and p for t, p in outcomes)
    fp = sum(p and not t for t, p in outcomes)
    fn = sum(t and not p for t, p in outcomes)
    tn = sum(not t and not p for t, p in outcomes)
    return {"pixel_accuracy": correct / total, "iou": iou, "mean_iou": float(np.nanmean(iou)),
            "frames": frames, "counts": (tp, fp, fn, tn)}


def read_truths(labels: Path) -> dict[str, np.ndarray]:
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(labels.iterdir())}


def check_against_reference(json_or_result: dict, ref: dict) -> None:
    data = json_or_result
    assert data["pixel_accuracy"] == pytest.approx(ref["pixel_accuracy"], abs=1e-12)
    assert data["mean_iou"] == pytest.approx(ref["mean_iou"], abs=1e-12)
    for index, name in enumerate(CAMVID_CLASSES[:11]):
        expected = ref["iou"][index]
        got = data["per_class_iou"][name]
        if np.isnan(expected):
            assert got is None
        else:
            assert got == pytest.approx(expected, abs=1e-12)
    for frame in data["frames"]:
        cov_true, cov_pred, truth, predicted = ref["frames"][frame["name"]]
        assert frame["coverage_true"] == pytest.approx(cov_true, abs=1e-12)
        assert frame["coverage_pred"] == pytest.approx(cov_pred, abs=1e-12)
        assert (frame["truth"], frame["predicted"]) == (truth, predicted)
    tp, fp, fn, tn = ref["counts"]
    va = data["vehicle_ahead"]
    assert (va["tp"], va["fp"], va["fn"], va["tn"]) == (tp, fp, fn, tn)
    assert va["precision"] == (tp / (tp + fp) if tp + fp else None)
    assert va["recall"] == (tp / (tp + fn) if tp + fn else None)
    assert va["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


# ------------------------------------------------------------------------------------------
# The core, with the CamVid model (fast, identity mapping).
# ------------------------------------------------------------------------------------------


def test_core_matches_independent_computation(camvid_model, subset) -> None:
    images, labels = subset
    names = camvid_model.metadata.class_names
    mapping = ClassMapping.resolve(names, LABEL_SETS["camvid"])
    assert Path(mapping.path).name == "camvid_to_camvid.yaml"
    ids = resolve_vehicle_class_ids(names)
    evaluator = Evaluator(mapping, VehicleAheadConfig(vehicle_ids=ids), ["Car"])
    samples = find_samples(images, labels)
    preds = {}
    for record, label_map in run_evaluation(SegmentationPipeline(camvid_model), samples,
                                            evaluator, keep=lambda r: True):
        assert label_map.dtype == np.uint8 and label_map.shape == (360, 480)
        preds[record.name] = label_map
    result = evaluator.result("espnet-camvid").to_json()
    assert result["images"] == len(samples) == 6
    identity = {i: i for i in range(11)}  # class 11 (void) predicted: wrong everywhere
    ref = reference_metrics(preds, read_truths(labels), identity, (8,), 0.05)
    check_against_reference(result, ref)
    assert ref["counts"][0] >= 1  # a true positive is exercised
    # The confusion matrix agrees with the reference too (rows: truth, columns: prediction).
    matrix = np.array(result["confusion_matrix"]["matrix"])
    assert matrix.shape == (11, 12)
    assert np.trace(matrix) / matrix.sum() == pytest.approx(ref["pixel_accuracy"])


def test_run_evaluation_is_the_frame_path(camvid_model, subset) -> None:
    """Each record holds what the node's frame path decides for that image, nothing else."""
    images, labels = subset
    names = camvid_model.metadata.class_names
    config = VehicleAheadConfig(vehicle_ids=resolve_vehicle_class_ids(names))
    evaluator = Evaluator(ClassMapping.resolve(names, LABEL_SETS["camvid"]), config)
    samples = find_samples(images, labels)
    pipeline = SegmentationPipeline(camvid_model)
    records = [record for record, _ in run_evaluation(pipeline, samples, evaluator)]
    assert [r.name for r in records] == [s.name for s in samples]
    for sample, record in zip(samples, records, strict=True):
        image = DecodedImage(read_image(sample.image), "bgr")
        direct = process_frame(pipeline, image, StreamState(config), OutputRequest())
        assert record.coverage_pred == direct.vehicle.coverage
        assert record.predicted == direct.vehicle.raw
    assert any(r.predicted for r in records) and not all(r.predicted for r in records)


# ------------------------------------------------------------------------------------------
# The CLI, with the default (Cityscapes) model and the shipped mapping.
# ------------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    args = build_parser(("eval",)).parse_args(["eval", *argv])
    return args.run(args)


def test_cli_json_report_and_metrics(cityscapes_model, subset, tmp_path, capsys) -> None:
    images, labels = subset
    out = tmp_path / "report"
    assert run_cli("--images", str(images), "--labels", str(labels), "--device", "cpu",
                   "-o", str(out), "--sweep") == 0
    printed = capsys.readouterr()
    assert "operating point" in printed.out and "mean IoU" in printed.out
    assert "6/6" in printed.err  # the progress bar ran
    data = json.loads((out / "eval.json").read_text())
    assert JSON_KEYS <= set(data)
    assert VEHICLE_KEYS <= set(data["vehicle_ahead"])
    assert data["model"] == "espnet-cityscapes" and data["dataset"] == "camvid"
    assert data["corridor"] == [list(v) for v in CORRIDOR]
    assert Path(data["mapping"]["file"]).name == "cityscapes_to_camvid.yaml"
    assert data["mapping"]["unmapped"] == ["background"]
    assert set(data["frames"][0]) == {"name", "coverage_true", "coverage_pred", "truth",
                                      "predicted"}

    # Independent numbers from the same model's label maps (the node's path: BGR frames).
    pipeline = SegmentationPipeline(cityscapes_model)
    preds = {p.name: pipeline.segment_to_host(cv2.imread(str(p)), "bgr").label_map.copy()
             for p in sorted(images.iterdir())}
    camvid_ids = {n: i for i, n in enumerate(CAMVID_CLASSES)}
    lut = {CITYSCAPES_CLASSES.index(s): camvid_ids[t] for s, t in CITYSCAPES_TO_CAMVID.items()}
    ref = reference_metrics(preds, read_truths(labels), lut, (13, 14, 15, 16), 0.05)
    check_against_reference(data, ref)
    tp, fp, fn, tn = ref["counts"]
    assert tp >= 1 and tp + fn >= 2 and tn >= 3

    # The PR curve: each point recounts the decision at its threshold.
    by_name = ref["frames"]
    for point in data["pr_curve"][::20]:
        t = point["threshold"]
        expected = sum(v[2] and v[1] >= t for v in by_name.values())
        assert point["tp"] == expected
        assert point["fp"] == sum((not v[2]) and v[1] >= t for v in by_name.values())

    for name in ("confusion_matrix.png", "per_class_iou.png", "vehicle_ahead_pr.png",
                 "vehicle_ahead_coverage.png", "worst_frames.png", "reliability.png"):
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] > 50 and image.std() > 5, name
    report = (out / "report.md").read_text()
    assert "pixel accuracy" in report and "vehicle_ahead_pr.png" in report
    assert f"| {tp} | {fp} | {fn} | {tn} |" in report


def test_cli_help_documents_the_ground_truth_rule(capsys) -> None:
    with pytest.raises(SystemExit):
        run_cli("--help")
    text = capsys.readouterr().out
    assert "ground truth" in text and "5%" in text and "Car" in text
    assert "(0.25, 1), (0.75, 1), (0.55, 0.55), (0.45, 0.55)" in text
    assert "examples:" in text and "--input-size" in text


def test_cli_rejects_unpaired_folders(subset, tmp_path) -> None:
    images, labels = subset
    with pytest.raises(UsageError, match="pairs"):
        run_cli("--images", str(images), "--images", str(images), "--labels", str(labels),
                "-o", str(tmp_path))


# ------------------------------------------------------------------------------------------
# Units: mappings, the confusion matrix, decision counts.
# ------------------------------------------------------------------------------------------


def test_shipped_mapping_matches_camvid_grouping() -> None:
    mapping = ClassMapping.resolve(CITYSCAPES_CLASSES, LABEL_SETS["camvid"])
    assert Path(mapping.path).parent == mappings_dir()
    for source, target in CITYSCAPES_TO_CAMVID.items():
        assert mapping.lut[CITYSCAPES_CLASSES.index(source)] == CAMVID_CLASSES.index(target)
    assert mapping.lut[CITYSCAPES_CLASSES.index("background")] == 11  # unmapped
    assert mapping.lut[200] == 11
    labels = np.array([[0, 13, 19], [14, 10, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(mapping.apply(labels), [[3, 8, 11], [8, 0, 11]])


def test_mapping_file_errors(tmp_path) -> None:
    camvid = LABEL_SETS["camvid"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes:\n  Car: [car, spaceship]\n")
    with pytest.raises(MappingError, match="spaceship"):
        ClassMapping.from_file(bad, CITYSCAPES_CLASSES, camvid)
    bad.write_text("classes:\n  Car: [car]\n  Road: [car]\n")
    with pytest.raises(MappingError, match="both"):
        ClassMapping.from_file(bad, CITYSCAPES_CLASSES, camvid)
    bad.write_text("classes:\n  Lorry: [car]\n")
    with pytest.raises(MappingError, match="Lorry"):
        ClassMapping.from_file(bad, CITYSCAPES_CLASSES, camvid)
    bad.write_text("Car: [car]\n")
    with pytest.raises(MappingError, match="classes"):
        ClassMapping.from_file(bad, CITYSCAPES_CLASSES, camvid)
    with pytest.raises(MappingError, match="cannot read"):
        ClassMapping.from_file(tmp_path / "missing.yaml", CITYSCAPES_CLASSES, camvid)
    with pytest.raises(MappingError, match="--mapping"):
        ClassMapping.resolve(("road", "car"), camvid)  # a custom model: no shipped mapping
    ok = tmp_path / "ok.yaml"
    ok.write_text("target: camvid\nclasses:\n  car: CAR\n")  # case-insensitive, one name
    assert ClassMapping.from_file(ok, CITYSCAPES_CLASSES, camvid).lut[13] == 8


def test_identity_by_name_for_a_model_with_the_data_set_classes() -> None:
    names = ("other", *reversed(CAMVID_CLASSES[:11]))
    mapping = ClassMapping.resolve(names, LABEL_SETS["camvid"])
    assert mapping.path is None
    for index, name in enumerate(names[1:], start=1):
        assert mapping.lut[index] == CAMVID_CLASSES.index(name)
    assert mapping.lut[0] == 11


def test_confusion_matrix_ignores_void_and_counts_unmapped_as_wrong() -> None:
    confusion = ConfusionMatrix(3)
    truth = np.array([0, 0, 1, 2, 3, 255], dtype=np.uint8)  # 3 and 255 are void
    predicted = np.array([0, 3, 1, 1, 0, 2], dtype=np.uint8)  # 3 = unmapped
    confusion.add(truth, predicted)
    np.testing.assert_array_equal(confusion.matrix, [[1, 0, 0, 1], [0, 1, 0, 0],
                                                     [0, 1, 0, 0]])
    assert confusion.pixel_accuracy == 2 / 4
    np.testing.assert_allclose(confusion.iou, [1 / 2, 1 / 2, 0.0])
    empty = ConfusionMatrix(2)
    empty.add(np.array([0]), np.array([0]))
    assert np.isnan(empty.iou[1]) and empty.mean_iou == 1.0
    with pytest.raises(ValueError, match="size"):
        empty.add(np.zeros((2, 2)), np.zeros((2, 3)))


def test_decision_counts_and_pr_curve() -> None:
    counts = count_decisions([True, True, False, False, True], [True, False, True, False, True])
    assert counts == DecisionCounts(tp=2, fp=1, fn=1, tn=1)
    assert (counts.precision, counts.recall, counts.f1) == (2 / 3, 2 / 3, 2 / 3)
    none = count_decisions([False, False], [False, False])
    assert none.precision is None and none.recall is None and none.f1 is None
    records = [FrameRecord(str(i), 0.0, c, t, False)
               for i, (c, t) in enumerate([(0.01, False), (0.04, True), (0.06, True),
                                           (0.2, False)])]
    points = {p.threshold: p.counts for p in pr_curve(records, [0.0, 0.05, 0.1, 0.3])}
    assert points[0.0] == DecisionCounts(2, 2, 0, 0)
    assert points[0.05] == DecisionCounts(1, 1, 1, 1)
    assert points[0.1] == DecisionCounts(0, 1, 2, 1)
    assert points[0.3] == DecisionCounts(0, 0, 2, 2)


def test_cli_rejects_a_bad_corridor_before_loading_the_model(subset, tmp_path) -> None:
    images, labels = subset
    with pytest.raises(UsageError, match="comma-separated"):
        run_cli("--images", str(images), "--labels", str(labels), "--corridor", "a,b,c",
                "-o", str(tmp_path))
    with pytest.raises(ValueError, match="at least 3"):
        run_cli("--images", str(images), "--labels", str(labels), "--corridor", "0,0,1,1",
                "-o", str(tmp_path))


def test_cli_rejects_bad_options_and_output_before_loading_the_model(subset, tmp_path) -> None:
    """A model that does not exist shows that nothing was loaded when these are refused."""
    images, labels = subset
    data = ("--images", str(images), "--labels", str(labels), "--model", "no-such-model")
    a_file = tmp_path / "report.txt"
    a_file.write_text("not a folder")
    for output in (a_file, a_file / "sub"):
        with pytest.raises(UsageError, match="not a folder"):
            run_cli(*data, "-o", str(output))
    with pytest.raises(UsageError, match="--min-coverage"):
        run_cli(*data, "--min-coverage", "2", "-o", str(tmp_path / "out"))
    with pytest.raises(UsageError, match="--worst"):
        run_cli(*data, "--worst", "-1", "-o", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_evaluator_ground_truth_follows_the_configured_corridor() -> None:
    """Users who configure another corridor get ground truth for theirs; void is ignored."""
    truth = np.full((40, 40), 3, dtype=np.uint8)  # Road
    truth[:8, :8] = 8  # a Car in the top-left corner, outside the default corridor
    truth[30:, :] = VOID
    prediction = np.zeros((40, 40), dtype=np.uint8)  # Cityscapes "road" everywhere
    prediction[:8, :8] = 13  # car
    mapping = ClassMapping.resolve(CITYSCAPES_CLASSES, LABEL_SETS["camvid"])
    corner = ((0.0, 0.0), (0.25, 0.0), (0.25, 0.25), (0.0, 0.25))
    for corridor, expected in ((CORRIDOR, False), (corner, True)):
        config = VehicleAheadConfig(corridor, (13,))
        evaluator = Evaluator(mapping, config)
        decision = VehicleAheadDetector(config).update(prediction)
        frame = FrameResult(label_map=prediction, confidence=None, color_mask=None,
                            overlay=None, vehicle=decision)
        record = evaluator.add("synthetic", frame, truth)
        assert record.truth is expected and record.predicted is expected
        assert record.coverage_true == record.coverage_pred
        assert evaluator.confusion.pixel_accuracy == 1.0  # void rows ignored
        assert evaluator.confusion.pixels == 30 * 40
        # No confidence map: no calibration, rather than one over fewer pixels.
        assert evaluator.calibration is None
        assert evaluator.result("synthetic").to_json()["calibration"] is None


# ------------------------------------------------------------------------------------------
# Confidence calibration.
# ------------------------------------------------------------------------------------------


def reference_calibration(levels: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
                          ) -> tuple[float, dict[float, tuple[float, float]]]:
    """ECE over (lower, upper] bins and (fraction, accuracy) kept per threshold, in floats on
    the valid pixels' confidence = level / 255."""
    confidence = levels.astype(np.float64) / 255
    edges = np.arange(bins + 1) / bins  # k / bins, rounded as level / 255 is on an edge
    index = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = index == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    kept = {}
    for threshold in CONFIDENCE_THRESHOLDS:
        sel = confidence >= threshold
        kept[threshold] = (sel.mean(), correct[sel].mean() if sel.any() else math.nan)
    return ece, kept


def calibration_of(groups: list[tuple[int, int, int]]) -> Calibration:
    """A frame of ``pixels`` pixels per (level, pixels, correct) group, 3 classes, plus void
    pixels (ignored) and unmapped predictions (wrong)."""
    truth, predicted, levels = [], [], []
    for level, pixels, correct in groups:
        truth += [1] * pixels
        predicted += [1] * correct + [3] * (pixels - correct)  # 3 = unmapped: wrong
        levels += [level] * pixels
    truth += [3, 255]  # void: ignored whatever the prediction and confidence
    predicted += [3, 0]
    levels += [0, 255]
    calibration = Calibration(3)
    calibration.add(np.array(truth, np.uint8).reshape(1, -1),
                    np.array(predicted, np.uint8).reshape(1, -1),
                    np.array(levels, np.uint8).reshape(1, -1))
    return calibration


def test_calibration_of_hand_made_frames() -> None:
    # Calibrated: each confidence level is right as often as it says (51 = 0.2, 204 = 0.8).
    calibrated = calibration_of([(255, 4, 4), (51, 5, 1), (204, 5, 4)])
    assert calibrated.total == 14
    assert calibrated.ece() == pytest.approx(0.0, abs=1e-12)
    assert calibrated.accuracy == calibrated.mean_confidence == pytest.approx(9 / 14)
    # Over-confident: 0.8 right half the time, 1.0 right 60% of the time, half the pixels each.
    over = calibration_of([(204, 10, 5), (255, 10, 6)])
    assert over.ece() == pytest.approx(0.5 * 0.3 + 0.5 * 0.4, abs=1e-12)
    assert (over.mean_confidence, over.accuracy) == (pytest.approx(0.9), pytest.approx(0.55))
    table = {(round(b.lower * 15), round(b.upper * 15)): b for b in over.bins()}
    assert len(table) == 15 and sum(b.pixels for b in table.values()) == 20
    assert (table[11, 12].pixels, table[11, 12].confidence, table[11, 12].accuracy) == (
        10, pytest.approx(0.8), 0.5)  # 0.8 is the upper edge of (11/15, 12/15]
    assert table[14, 15].accuracy == 0.6 and table[0, 1].accuracy is None
    kept = {t: over.retention(t) for t in CONFIDENCE_THRESHOLDS}
    assert (kept[0.7].fraction, kept[0.7].accuracy) == (1.0, 0.55)
    assert (kept[0.9].pixels, kept[0.9].fraction, kept[0.9].accuracy) == (10, 0.5, 0.6)
    data = over.to_json()
    assert data["bins"] == ECE_BINS and len(data["reliability"]) == ECE_BINS
    assert [r["threshold"] for r in data["retention"]] == list(CONFIDENCE_THRESHOLDS)
    json.dumps(data)  # plain JSON: no NaN, no numpy scalars in the way
    empty = Calibration(3)
    assert empty.ece() is None and empty.retention(0.5).fraction is None
    with pytest.raises(ValueError, match="uint8"):
        empty.add(np.zeros(2, np.uint8), np.zeros(2, np.uint8), np.zeros(2, np.float32))


def test_calibration_matches_a_float_computation() -> None:
    """Random levels, bin edges included (multiples of 17 = k/15), over several frames."""
    rng = np.random.default_rng(7)
    calibration = Calibration(4)
    all_levels, all_correct = [], []
    for _ in range(3):
        levels = rng.integers(0, 256, size=(30, 40)).astype(np.uint8)
        levels[0, :16] = np.arange(16) * 17
        truth = rng.integers(0, 6, size=levels.shape).astype(np.uint8)  # 4, 5: void
        guess = rng.integers(0, 5, size=levels.shape).astype(np.uint8)  # 4: unmapped
        # Right about as often as the confidence says, wrong otherwise (or by chance).
        predicted = np.where(rng.random(levels.shape) < levels / 255, truth, guess)
        calibration.add(truth, predicted, levels)
        valid = truth < 4
        all_levels.append(levels[valid])
        all_correct.append((predicted == truth)[valid])
    ece, kept = reference_calibration(np.concatenate(all_levels), np.concatenate(all_correct))
    assert calibration.ece() == pytest.approx(ece, abs=1e-12)
    for threshold, (fraction, accuracy) in kept.items():
        got = calibration.retention(threshold)
        assert (got.fraction, got.accuracy) == (pytest.approx(fraction, abs=1e-12),
                                                pytest.approx(accuracy, abs=1e-12))


def test_cli_calibration_on_camvid_val(camvid_model, shared, tmp_path, capsys) -> None:
    """espnet-camvid on a few val images: the calibration JSON, summary and reliability
    diagram, checked against the frame path's own confidence maps."""
    camvid = shared / "data" / "camvid"
    out = tmp_path / "report"
    assert run_cli("--model", "espnet-camvid", "--device", "cpu", "--images",
                   str(camvid / "val"), "--labels", str(camvid / "valannot"), "--limit", "4",
                   "--no-progress", "-o", str(out)) == 0
    printed = capsys.readouterr().out
    assert "ECE" in printed and "min_confidence 0.5 / 0.7 / 0.9 keeps" in printed
    data = json.loads((out / "eval.json").read_text())
    calibration = data["calibration"]
    assert 0.0 <= calibration["ece"] <= 1.0
    assert calibration["pixels"] == np.array(data["confusion_matrix"]["matrix"]).sum()
    assert calibration["accuracy"] == pytest.approx(data["pixel_accuracy"], abs=1e-12)
    retention = calibration["retention"]
    fractions = [r["fraction"] for r in retention]
    accuracies = [r["accuracy"] for r in retention]
    assert fractions == sorted(fractions, reverse=True) and fractions[0] > fractions[-1]
    assert accuracies == sorted(accuracies) and accuracies[0] < accuracies[-1]

    # Independently: the frame path's confidence maps, binned in floats.
    pipeline = SegmentationPipeline(camvid_model)
    levels, correct = [], []
    for sample in find_samples(camvid / "val", camvid / "valannot")[:4]:
        image = DecodedImage(read_image(sample.image), "bgr")
        frame = process_frame(pipeline, image, StreamState(None), OutputRequest(confidence=True))
        truth = cv2.imread(str(sample.labels), cv2.IMREAD_UNCHANGED)
        valid = truth != VOID
        levels.append(frame.confidence[valid])
        correct.append((frame.label_map == truth)[valid])
    ece, kept = reference_calibration(np.concatenate(levels), np.concatenate(correct))
    assert calibration["ece"] == pytest.approx(ece, abs=1e-9)
    for row in retention:
        fraction, accuracy = kept[row["threshold"]]
        assert (row["fraction"], row["accuracy"]) == (pytest.approx(fraction, abs=1e-9),
                                                      pytest.approx(accuracy, abs=1e-9))

    path = out / "reliability.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 300 and image.std() > 5
    report = (out / "report.md").read_text()
    assert "## Confidence calibration" in report and "reliability.png" in report
    assert f"| 0.9 | {fractions[-1]:.1%} | {accuracies[-1]:.3f} |" in report
