"""``seg-perception train`` on real CamVid images from the real pretrained ESPNet (no mocks).

Runs are tiny (a few images, one or two epochs, a 240x176 crop) so the file takes a few
minutes on 2 cores; the lead's acceptance run measures the real recipe.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from seg_perception.cli import main
from seg_perception.core.labels import CAMVID, CITYSCAPES
from seg_perception.core.pipeline import SegmentationPipeline
from seg_perception.core.vehicle_ahead import resolve_vehicle_class_ids
from seg_perception.models.loading import load_model
from seg_perception.models.registry import BUILTIN_MODELS
from seg_perception.training.checkpoint import BEST, LAST, load_checkpoint, state_digest
from seg_perception.training.data import (
    Augmentation,
    SegmentationDataset,
    TrainingDataError,
    load_label_set,
    scan_samples,
)
from seg_perception.training.distributed import setup
from seg_perception.training.loop import TrainConfig, Trainer, class_weights
from seg_perception.training.model_surgery import (
    EspNetArchitecture,
    fit_head,
    load_source_model,
)

LIMIT = 4
QUICK = ["--limit", str(LIMIT), "--batch-size", "2", "--crop", "240x176", "--no-progress"]


@pytest.fixture(scope="module")
def camvid(shared) -> Path:
    return shared / "data" / "camvid"


def folders(camvid: Path) -> list[str]:
    return ["--images", str(camvid / "train"), "--labels", str(camvid / "trainannot"),
            "--val-images", str(camvid / "val"), "--val-labels", str(camvid / "valannot")]


def train(*argv: str) -> int:
    return main(["train", *argv])


@pytest.fixture(scope="module")
def trained(camvid, tmp_path_factory) -> Path:
    """One epoch from espnet-cityscapes onto CamVid's 12 classes (a new head)."""
    out = tmp_path_factory.mktemp("train") / "camvid-ft.pt"
    assert train(*folders(camvid), "--classes", "camvid", "--out", str(out), "--epochs", "1",
                 *QUICK) == 0
    return out


def summary_of(out: Path) -> dict:
    return json.loads((out.parent / f"{out.stem}_training" / "summary.json").read_text())


def test_writes_a_model_every_tool_loads(trained, camvid):
    loaded = load_model(str(trained), device="cpu")
    meta = loaded.metadata
    assert meta.class_names == CAMVID.class_names
    assert meta.palette == CAMVID.palette
    assert meta.channel_order == "bgr" and meta.input_size == (480, 360)
    assert resolve_vehicle_class_ids(meta.class_names) == (CAMVID.class_names.index("Car"),)
    assert meta.extra["architecture"] == {"family": "espnet", "decoder_width": 20,
                                          "num_classes": 12, "p": 2, "q": 8,
                                          "fuse_input_projection": False}
    # mean over all pixels and the per-image std averaged, of the images trained on (BGR)
    images = [cv2.imread(str(p)) for p in sorted((camvid / "train").glob("*.png"))[:LIMIT]]
    pixels = np.concatenate([i.reshape(-1, 3) for i in images]).astype(np.float64)
    np.testing.assert_allclose(meta.mean, pixels.mean(0), atol=0.01)
    np.testing.assert_allclose(meta.std, np.mean([i.reshape(-1, 3).std(0) for i in images], 0),
                               atol=0.01)
    frame = cv2.imread(str(sorted((camvid / "val").glob("*.png"))[0]))
    label_map = SegmentationPipeline(loaded).segment_to_host(frame, "bgr").label_map
    label_map = np.asarray(label_map)
    assert label_map.shape == (360, 480) and label_map.max() < 12
    run_dir = trained.parent / "camvid-ft_training"
    assert sorted(p.name for p in trained.parent.rglob(".*")) == []  # no temporary files
    assert {LAST, BEST, "log.csv", "curves.png", "summary.json"} <= {
        p.name for p in run_dir.iterdir()}
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"] and "iou_Car" in rows[0]


def test_eval_on_the_file_gives_the_trainers_val_figures(trained, camvid, tmp_path):
    summary = summary_of(trained)
    assert main(["eval", "--model", str(trained), "--images", str(camvid / "val"),
                 "--labels", str(camvid / "valannot"), "--limit", str(LIMIT), "-o",
                 str(tmp_path), "--no-report", "--no-progress"]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["images"] == LIMIT
    assert evaluated["mean_iou"] == pytest.approx(summary["eval"]["mean_iou"], abs=1e-9)
    # the trainer's own per-epoch validation (eager network) agrees with the exported file
    assert evaluated["mean_iou"] == pytest.approx(summary["val_miou"], abs=1e-3)
    assert evaluated["per_class_iou"]["Car"] == pytest.approx(
        summary["trainer_val_iou"]["Car"], abs=1e-3)


def test_an_exported_file_can_be_fine_tuned_again(trained):
    network, metadata = load_source_model(str(trained))
    best = load_checkpoint(trained.parent / "camvid-ft_training" / BEST)
    rebuilt = EspNetArchitecture.from_dict(best["architecture"]).build()
    rebuilt.load_state_dict(best["model"])
    assert state_digest(network) == state_digest(rebuilt)
    assert metadata.class_names == CAMVID.class_names


def test_resume_continues_from_the_saved_epoch(trained, camvid, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained.parent / "camvid-ft_training", run_dir)
    first = (run_dir / "log.csv").read_text().splitlines()
    assert train(*folders(camvid), "--classes", "camvid", "--out", str(tmp_path / "more.pt"),
                 "--run-dir", str(run_dir), "--epochs", "2", "--resume", *QUICK) == 0
    rows = (run_dir / "log.csv").read_text().splitlines()
    assert rows[:2] == first  # epoch 1 is the saved one, not trained again
    records = list(csv.DictReader(rows))
    assert [r["epoch"] for r in records] == ["1", "2"]
    assert int(records[1]["iterations"]) == 2 * int(records[0]["iterations"])
    assert load_checkpoint(run_dir / LAST)["state"]["epoch"] == 2
    assert load_model(str(tmp_path / "more.pt"), device="cpu").metadata.extra[
        "training"]["epochs_run"] == 2


def test_export_last_writes_the_final_epoch(trained, camvid, tmp_path):
    """``--export last`` writes the end of the schedule, whichever epoch scored best on val."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained.parent / "camvid-ft_training", run_dir)
    out = tmp_path / "last.pt"
    assert train(*folders(camvid), "--classes", "camvid", "--out", str(out), "--run-dir",
                 str(run_dir), "--epochs", "2", "--resume", "--export", "last", *QUICK) == 0
    network, metadata = load_source_model(str(out))
    assert state_digest(network) == state_digest_of(run_dir / LAST)
    training = metadata.extra["training"]
    assert (training["export"], training["exported_epoch"], training["epochs_run"]) == (
        "last", 2, 2)
    assert training["best_epoch"] == load_checkpoint(run_dir / BEST)["state"]["epoch"]


def state_digest_of(checkpoint: Path) -> str:
    payload = load_checkpoint(checkpoint)
    network = EspNetArchitecture.from_dict(payload["architecture"]).build()
    network.load_state_dict(payload["model"])
    return state_digest(network)


def test_new_head_starts_from_the_mapped_classes():
    network, source = load_source_model("espnet-cityscapes")
    old = network.classifier.weight.detach().clone()
    lines = fit_head(network, source.class_names, CAMVID)
    new = network.classifier.weight.detach()
    assert new.shape == (20, 12, 2, 2)
    for target, origin in (("Car", "car"), ("Tree", "vegetation"), ("Road", "road"),
                           ("Unlabelled", "background")):
        column = old[:, CITYSCAPES.class_names.index(origin)]
        assert torch.equal(new[:, CAMVID.class_names.index(target)], column)
        assert f"{target} <- {origin}" in lines


def test_loss_falls_on_real_camvid_images(camvid):
    label_set = CAMVID
    scan = scan_samples(camvid / "train", camvid / "trainannot", label_set, limit=4)
    network, source = load_source_model("espnet-cityscapes")
    fit_head(network, source.class_names, label_set)
    meta = replace(source, class_names=label_set.class_names, palette=label_set.palette,
                   input_size=(480, 360))
    dataset = SegmentationDataset(scan.samples, meta, label_set, Augmentation((240, 176)))
    config = TrainConfig(epochs=5, batch_size=4, patience=0)
    trainer = Trainer(network, dataset, None, 11, scan.class_pixels, config, setup("cpu"), [])
    state = trainer.fit(lambda state, best: None, show_progress=False)
    losses = [r.train_loss for r in state.history]
    assert len(losses) == 5 and losses[-1] < 0.6 * losses[0], losses  # measured 3.22 -> 1.34


def test_augmentation_is_seeded_by_epoch_and_index(camvid):
    scan = scan_samples(camvid / "train", camvid / "trainannot", CAMVID, limit=2)
    meta = BUILTIN_MODELS["espnet-camvid"].metadata
    dataset = SegmentationDataset(scan.samples, meta, CAMVID, Augmentation((240, 176)), seed=3)
    first, again = dataset[1], dataset[1]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[0].shape == (3, 176, 240) and first[1].shape == (176, 240)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1][0], first[0])
    assert set(first[1].unique().tolist()) <= set(range(11)) | {255}  # void 11 -> ignored


def test_class_weights_follow_enet():
    weights = class_weights(np.array([98, 2, 0]))
    np.testing.assert_allclose(weights[:2], 1 / np.log(1.02 + np.array([0.98, 0.02])), rtol=1e-6)
    assert weights[2] == 0


def test_class_list_file(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text("name: roads\nvoid: [255]\nclasses:\n  road: [128, 64, 128]\n"
                    "  car: [0, 0, 142]\n  traffic light: null\n")
    label_set = load_label_set(str(path))
    assert label_set.class_names == ("road", "car", "traffic light")
    assert label_set.palette[1] == (0, 0, 142) and label_set.void_ids == (255,)
    assert label_set.vehicle_ids == (1,)
    path.write_text("classes:\n  road: [128, 64, 128]\n  sky: [1, 2, 3]\n")
    with pytest.raises(TrainingDataError, match="no class is a vehicle"):
        load_label_set(str(path))


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, before any training, and nothing written.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_set(camvid, tmp_path) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for path in sorted((camvid / "train").glob("*.png"))[:3]:
        shutil.copy(path, images / path.name)
        shutil.copy(camvid / "trainannot" / path.name, labels / path.name)
    return images, labels


def _break_range(images: Path, labels: Path) -> str:
    path = sorted(labels.iterdir())[1]
    truth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    truth[10:20, 10:20] = 40
    cv2.imwrite(str(path), truth)
    return f"{path}: label value(s) 40 are not a class (0..11, void [11])"


def _break_pairs(images: Path, labels: Path) -> str:
    path = sorted(labels.iterdir())[2]
    path.unlink()
    return f"1 image(s) have no label image in {labels}, e.g. {path.name}"


def _break_size(images: Path, labels: Path) -> str:
    path = sorted(labels.iterdir())[0]
    cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:100])
    return f"{path}: labels are 480x100 but the image is 480x360"


@pytest.mark.parametrize("damage", [_break_range, _break_pairs, _break_size])
def test_bad_data_is_one_line_and_writes_nothing(small_set, tmp_path, capsys, damage):
    images, labels = small_set
    expected = damage(images, labels)
    out = tmp_path / "out" / "m.pt"
    assert train("--images", str(images), "--labels", str(labels), "--classes", "camvid",
                 "--out", str(out), "--no-progress") == 2
    assert capsys.readouterr().err.splitlines() == [f"seg-perception train: error: {expected}"]
    assert not (tmp_path / "out").exists()


def test_output_must_not_be_an_input(small_set, tmp_path, capsys):
    images, labels = small_set
    victim = sorted(labels.iterdir())[0]
    before = victim.read_bytes()
    assert train("--images", str(images), "--labels", str(labels), "--classes", "camvid",
                 "--out", str(victim), "--no-progress") == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"seg-perception train: error: --out {victim} is one of the input files: "
                   "an input is never overwritten, choose another path"]
    assert victim.read_bytes() == before
    assert sorted(p.name for p in labels.iterdir() if not p.name.endswith(".png")) == []


def test_a_second_run_in_the_same_folder_needs_resume(trained, camvid, capsys):
    assert train(*folders(camvid), "--classes", "camvid", "--out", str(trained), *QUICK) == 2
    assert "give --resume" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# torchrun: two CPU processes (gloo), one short epoch.
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_agree(camvid, tmp_path):
    out = tmp_path / "ddp.pt"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
               "seg_perception.cli", "train", *folders(camvid), "--classes", "camvid",
               "--out", str(out), "--epochs", "1", "--limit", "4", "--batch-size", "4",
               "--crop", "240x176", "--no-progress", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=280,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_of(out)
    digests = summary["rank_state_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert summary["processes"] == 2
    best = load_checkpoint(tmp_path / "ddp_training" / BEST)
    network = EspNetArchitecture.from_dict(best["architecture"]).build()
    network.load_state_dict(best["model"])
    assert state_digest(network) == digests[0]  # rank 0 saved what every rank holds
    loaded = load_model(str(out), device="cpu")
    assert loaded.metadata.extra["training"]["processes"] == 2
