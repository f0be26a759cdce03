"""Export mechanics, device choice, and one clear error line for every bad model file."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import torch

from seg_perception.device import DeviceError, select_device
from seg_perception.models.export import export_builtin
from seg_perception.models.loading import ModelLoadError, load_model, resolve_model_path
from seg_perception.models.metadata import EXTRA_FILE_NAME, MetadataError, ModelMetadata


@pytest.fixture(scope="module")
def lraspp_file(tmp_path_factory):
    """torchvision LR-ASPP exported without weights (none can be downloaded here)."""
    path = tmp_path_factory.mktemp("models") / "lraspp.pt"
    report = export_builtin("lraspp_mobilenet_v3_large", path, pretrained=False,
                            input_size=(320, 256))
    assert report.max_abs_diff <= 1e-3
    return path


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "fcn_resnet50"])
def test_torchvision_export_reproduces_eager(tmp_path, name):
    report = export_builtin(name, tmp_path / "m.pt", pretrained=False, input_size=(256, 192))
    assert report.max_abs_diff <= 1e-3
    assert report.check_image.endswith(".jpg")  # a real dash-cam still, not noise
    loaded = load_model(str(report.path), device="cpu")
    assert loaded.metadata.class_names[0] == "__background__"
    assert loaded.metadata.extra["parity_max_abs_diff"] == report.max_abs_diff


def test_user_checkpoint_export(tmp_path):
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    torch.save(net.state_dict(), tmp_path / "mine.pth")
    report = export_builtin("lraspp_mobilenet_v3_large", tmp_path / "mine.pt",
                            weights_path=tmp_path / "mine.pth",
                            class_names=["road", "car", "other"], input_size=(256, 192))
    loaded = load_model(str(report.path), device="cpu")
    assert loaded.metadata.class_names == ("road", "car", "other")
    with torch.inference_mode():
        state = torch.load(tmp_path / "mine.pth", weights_only=True)
        assert torch.equal(state["classifier.low_classifier.bias"],
                           net.classifier.low_classifier.bias)


def test_half_export_runs_on_cpu_in_fp32(tmp_path):
    report = export_builtin("espnet-camvid", tmp_path / "half.pt", half=True)
    assert report.metadata.extra["weights_dtype"] == "float16"
    loaded = load_model(str(report.path), device="cpu")
    assert loaded.dtype == torch.float32


def test_builtin_names_resolve_to_cached_exports():
    path = resolve_model_path("espnet-camvid")
    assert path.exists() and path.suffix == ".pt"


def _one_line_error(path, match: str):
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(str(path), device="cpu")
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    message = _one_line_error(tmp_path / "nope.pt", "not found")
    assert "espnet-cityscapes" in message  # tells the user what else they could give


def test_not_torchscript(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model" * 10)
    _one_line_error(junk, "not a TorchScript model")


def test_state_dict_instead_of_torchscript(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, path)
    message = _one_line_error(path, "not a TorchScript model")
    assert "seg-perception export" in message


def test_torchscript_without_metadata(tmp_path):
    path = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 4, 1)), str(path))
    _one_line_error(path, "no seg_perception metadata")


def _rewrite_metadata(source, target, edit):
    """Copy an exported model, changing its embedded metadata record."""
    extra = {EXTRA_FILE_NAME: ""}
    module = torch.jit.load(str(source), _extra_files=extra)
    record = edit(extra[EXTRA_FILE_NAME])
    torch.jit.save(module, str(target), _extra_files={EXTRA_FILE_NAME: record})


def test_metadata_that_is_not_json(lraspp_file, tmp_path):
    _rewrite_metadata(lraspp_file, tmp_path / "m.pt", lambda text: "{broken")
    _one_line_error(tmp_path / "m.pt", "not valid JSON")


def test_metadata_with_missing_field(lraspp_file, tmp_path):
    def drop_mean(text):
        data = json.loads(text)
        del data["mean"]
        return json.dumps(data)

    _rewrite_metadata(lraspp_file, tmp_path / "m.pt", drop_mean)
    _one_line_error(tmp_path / "m.pt", "lacks field.*mean")


def test_class_count_differs_from_output_channels(lraspp_file, tmp_path):
    def three_classes(text):
        data = json.loads(text)
        data["class_names"], data["palette"] = ["a", "b", "c"], [[0, 0, 0]] * 3
        return json.dumps(data)

    _rewrite_metadata(lraspp_file, tmp_path / "m.pt", three_classes)
    _one_line_error(tmp_path / "m.pt", "outputs 21 channels but the metadata names 3 classes")


def test_sidecar_metadata_is_accepted(lraspp_file, tmp_path):
    with zipfile.ZipFile(lraspp_file) as zf:
        record = next(zf.read(n) for n in zf.namelist() if n.endswith(EXTRA_FILE_NAME))
    module = torch.jit.load(str(lraspp_file))
    torch.jit.save(module, str(tmp_path / "plain.pt"))
    (tmp_path / "plain.pt.json").write_bytes(record)
    assert load_model(str(tmp_path / "plain.pt"), device="cpu").metadata.num_classes == 21


def test_metadata_validation_names_the_problem():
    good = dict(name="m", class_names=["a", "b"], palette=[[0, 0, 0], [1, 2, 3]],
                channel_order="rgb", mean=[0, 0, 0], std=[1, 1, 1])
    assert ModelMetadata.from_dict(good).num_classes == 2
    for change, match in [
        ({"palette": [[0, 0, 0]]}, "palette has 1 colours for 2 classes"),
        ({"channel_order": "yuv"}, "channel_order"),
        ({"std": [1, 0, 1]}, "std"),
        ({"input_size": [0, 10]}, "input_size"),
        ({"bogus": 1}, "unknown field"),
    ]:
        with pytest.raises(MetadataError, match=match):
            ModelMetadata.from_dict({**good, **change})


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("nope")
    run = subprocess.run(
        [sys.executable, "-m", "seg_perception.cli", "export", "espnet-camvid",
         "-o", str(tmp_path / "x.pt"), "--check-image", str(junk)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    # Refused before any network is built (test_bad_input.py has the whole table).
    assert errors == [f"seg-perception export: error: --check-image {junk} is not an image file"]


def test_device_selection():
    assert select_device("cpu")[0].type == "cpu"
    device, reason = select_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu") and reason
    if not torch.cuda.is_available():
        device, reason = select_device("cuda:0")
        assert device.type == "cpu" and reason.startswith("FALLBACK")
        with pytest.raises(DeviceError, match="fallback is off"):
            select_device("cuda", fallback=False)
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        select_device("gpu")


def test_precision_choices(camvid_model):
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="fp16 needs a CUDA device"):
            load_model("espnet-camvid", device="cpu", precision="fp16")
    bf16 = load_model("espnet-camvid", device="cpu", precision="bf16")
    assert bf16.autocast_dtype == torch.bfloat16
    assert "bfloat16" in bf16.describe()


def test_input_size_override(camvid_model):
    small = load_model("espnet-camvid", device="cpu", input_size=(240, 184))
    assert small.metadata.input_size == (240, 184)
    with pytest.raises(ModelLoadError, match="multiple of 8"):
        load_model("espnet-camvid", device="cpu", input_size=(241, 180))
