"""Bad input at every tool and the node: one clear line, exit 2, nothing lost, nothing left.

One table of cases. Each names a command (``seg-perception`` argv, or the node's ``--ros-args``),
the exit code, a fragment of its message, and what it may write: a failing command must leave
its working folder exactly as it was (inputs untouched, no partial files). Every case runs in a
folder of its own (a copy of one prepared template) and in a process of its own.

Tool cases are forked from a server process that imported torch and the tools once: a fresh
interpreter per case would spend ~2 s importing torch, 100+ times. Cases that must fail fast
run with ``torch.jit.load``/``script``/``trace`` replaced by a trap, so a case that loads or
builds a model before refusing its input fails. The node cases start the real executable.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_perception.shared_data import shared_dir

PARALLEL = 2
FAST_TIMEOUT_S = 60.0  # a case that fails before any model: seconds at most, even on a busy host
SLOW_TIMEOUT_S = 180.0
TRAP = "FAIL-FAST TRAP"
PRELOAD = [
    "torch", "cv2", "seg_perception.cli", "seg_perception.tools.common",
    *(f"seg_perception.tools.{name}" for name in ("export", "eval", "train", "bench", "demo")),
]


@dataclass(frozen=True)
class Case:
    """One bad command. ``argv`` and ``env`` values may use {ws}, the case's folder.
    ``writes``: paths (relative to {ws}) the command may create, change or delete; everything
    else in {ws} must be left as it was. ``absent``: must not exist afterwards. ``slow``: it
    may load a model (else loading one fails the case). ``node``: ``argv`` is the node's
    ``--ros-args``."""

    id: str
    argv: tuple[str, ...]
    code: int = 2
    message: str = ""
    writes: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    slow: bool = False
    node: bool = False


def tool(case_id: str, command: str, message: str, **kwargs) -> Case:
    return Case(case_id, tuple(_split(command)), message=message, **kwargs)


def node(case_id: str, ros_args: str, message: str, **kwargs) -> Case:
    return Case(case_id, tuple(_split(ros_args)), message=message, node=True, **kwargs)


def _split(command: str) -> list[str]:
    import shlex

    return shlex.split(command)


EXPORT = "export espnet-camvid"
EXPORT_RANDOM = "export espnet-camvid --no-pretrained"
WEIGHTS = "--weights {ws}/weights.pth"
EVAL = "eval --images {ws}/images --labels {ws}/labels --model {ws}/exported.pt"
EVAL_ON = "eval --images {ws}/images --model {ws}/exported.pt --labels"
TRAIN = ("train --images {ws}/images --labels {ws}/labels --classes camvid --epochs 1 "
         "--batch-size 2")
TRAIN_OUT = TRAIN + " --out {ws}/new.pt"
PLAY = "play {ws}/images"
BENCH = "bench --model {ws}/exported.pt --skip naive,transport,node,accuracy --frames 1"
DEMO = "demo --model {ws}/exported.pt"
NOT_A_FOLDER = "not a folder"
BAD_CACHE = {"SEG_PERCEPTION_CACHE": "{ws}/afile/cache"}
MODEL_MISSING = "-p model:={ws}/missing.pt"

CASES: list[Case] = [
    # --- export: outputs ------------------------------------------------------------------
    tool("export-o-is-weights", f"{EXPORT} {WEIGHTS} -o {{ws}}/weights.pth", "--weights"),
    tool("export-o-is-weights-alias", f"{EXPORT} {WEIGHTS} -o {{ws}}/./images/../weights.pth",
         "--weights"),
    tool("export-o-is-check-image", f"{EXPORT_RANDOM} --check-image {{ws}}/images/a.png "
         "-o {ws}/images/a.png", "--check-image"),
    tool("export-o-is-dir", f"{EXPORT_RANDOM} -o {{ws}}/existing_dir.pt", "folder",
         absent=("existing_dir.pt.part",)),
    tool("export-o-empty", f"{EXPORT_RANDOM} -o ''", "folder"),
    tool("export-o-under-file", f"{EXPORT_RANDOM} -o {{ws}}/afile/x.pt", NOT_A_FOLDER),
    tool("export-o-missing", EXPORT_RANDOM, "required"),
    tool("export-o-replaces", f"{EXPORT_RANDOM} -o {{ws}}/old.pt", "replac", code=0,
         writes=("old.pt",), slow=True),
    # --- export: --weights ----------------------------------------------------------------
    tool("export-weights-text", f"{EXPORT} --weights {{ws}}/text.pth -o {{ws}}/o.pt",
         "checkpoint"),
    tool("export-weights-random", f"{EXPORT} --weights {{ws}}/random.pth -o {{ws}}/o.pt",
         "checkpoint"),
    tool("export-weights-torchscript", f"{EXPORT} --weights {{ws}}/exported.pt -o {{ws}}/o.pt",
         "exported model, not a checkpoint"),
    tool("export-weights-dir", f"{EXPORT} --weights {{ws}}/existing_dir.pt -o {{ws}}/o.pt",
         "folder"),
    tool("export-weights-missing", f"{EXPORT} --weights {{ws}}/missing.pth -o {{ws}}/o.pt",
         "missing.pth"),
    tool("export-weights-empty-file", f"{EXPORT} --weights {{ws}}/empty.pth -o {{ws}}/o.pt",
         "checkpoint"),
    tool("export-weights-not-state-dict", f"{EXPORT} --weights {{ws}}/list.pth -o {{ws}}/o.pt",
         "state_dict"),
    tool("export-weights-wrong-arch",
         f"export espnet-cityscapes {WEIGHTS} -o {{ws}}/o.pt", "does not fit"),
    tool("export-weights-wrong-classes", f"{EXPORT} {WEIGHTS} --num-classes 5 -o {{ws}}/o.pt",
         "does not fit"),
    tool("export-weights-and-no-pretrained", f"{EXPORT_RANDOM} {WEIGHTS} -o {{ws}}/o.pt",
         "--no-pretrained"),
    # --- export: classes and sizes --------------------------------------------------------
    tool("export-classes-without-weights",
         f"{EXPORT} --num-classes 5 --class-names a,b,c,d,e -o {{ws}}/o.pt", "--weights"),
    tool("export-num-classes-without-weights", f"{EXPORT} --num-classes 5 -o {{ws}}/o.pt",
         "--weights"),
    tool("export-names-without-weights", f"{EXPORT} --class-names a,b -o {{ws}}/o.pt",
         "--weights"),
    tool("export-num-classes-0", f"{EXPORT} {WEIGHTS} --num-classes 0 -o {{ws}}/o.pt",
         "--num-classes"),
    tool("export-num-classes-negative", f"{EXPORT} {WEIGHTS} --num-classes -3 -o {{ws}}/o.pt",
         "--num-classes"),
    tool("export-num-classes-huge", f"{EXPORT} {WEIGHTS} --num-classes 300 -o {{ws}}/o.pt",
         "--num-classes"),
    tool("export-names-duplicate", f"{EXPORT} {WEIGHTS} --class-names a,a,b -o {{ws}}/o.pt",
         "'a'"),
    tool("export-names-empty-name", f"{EXPORT} {WEIGHTS} --class-names a,,b -o {{ws}}/o.pt",
         "empty"),
    tool("export-names-count-mismatch",
         f"{EXPORT} {WEIGHTS} --class-names a,b --num-classes 3 -o {{ws}}/o.pt", "2 names"),
    tool("export-size-not-multiple", f"{EXPORT_RANDOM} --input-size 7x3 -o {{ws}}/o.pt",
         "multiple of 8"),
    tool("export-size-zero", f"{EXPORT_RANDOM} --input-size 0x16 -o {{ws}}/o.pt", "positive"),
    tool("export-size-words", f"{EXPORT_RANDOM} --input-size big -o {{ws}}/o.pt", "1024x512"),
    tool("export-size-absurd", f"{EXPORT_RANDOM} --input-size 100000x100000 -o {{ws}}/o.pt",
         "too large"),
    tool("export-check-image-missing",
         f"{EXPORT_RANDOM} --check-image {{ws}}/missing.png -o {{ws}}/o.pt", "missing.png"),
    tool("export-check-image-not-image",
         f"{EXPORT_RANDOM} --check-image {{ws}}/text.pth -o {{ws}}/o.pt", "text.pth"),
    tool("export-unknown-arch", "export nosuch -o {ws}/o.pt", "invalid choice"),
    tool("export-cache-under-file", "eval --images {ws}/images --labels {ws}/labels "
         "--model espnet-camvid -o {ws}/out", "SEG_PERCEPTION_CACHE", env=BAD_CACHE),
    # --- eval: outputs --------------------------------------------------------------------
    tool("eval-o-is-file", f"{EVAL} -o {{ws}}/afile", NOT_A_FOLDER),
    tool("eval-o-under-file", f"{EVAL} -o {{ws}}/afile/sub", NOT_A_FOLDER),
    tool("eval-o-is-input", f"{EVAL} -o {{ws}}/labels", "--labels"),
    tool("eval-no-report-old-report", f"{EVAL} --no-report --no-progress -o {{ws}}/report",
         "removed", code=0, writes=("report",), slow=True,
         absent=("report/report.md", "report/confusion_matrix.png")),
    # --- eval: numbers and sizes ----------------------------------------------------------
    tool("eval-limit-negative", f"{EVAL} --limit -1", "--limit"),
    tool("eval-worst-negative", f"{EVAL} --worst -1", "--worst"),
    tool("eval-threads-negative", f"{EVAL} --threads -1", "--threads"),
    tool("eval-size-absurd", f"{EVAL} --input-size 100000x100000", "too large"),
    tool("eval-size-malformed", f"{EVAL} --input-size 100x", "1024x512"),
    tool("eval-min-coverage", f"{EVAL} --min-coverage 2", "min-coverage"),
    tool("eval-min-blob-fraction", f"{EVAL} --min-blob-fraction -1", "min-blob-fraction"),
    tool("eval-corridor-words", f"{EVAL} --corridor a,b,c", "--corridor"),
    tool("eval-corridor-two-points", f"{EVAL} --corridor 0,0,1,1", "corridor"),
    tool("eval-precision-fp16-cpu", f"{EVAL} --device cpu --precision fp16", "fp16"),
    tool("eval-device-bogus", f"{EVAL} --device bogus", "bogus"),
    tool("eval-dataset-unknown", f"{EVAL} --dataset nosuch", "invalid choice"),
    tool("eval-mapping-missing", f"{EVAL} --mapping {{ws}}/missing.yaml", "missing.yaml"),
    tool("eval-mapping-dir", f"{EVAL} --mapping {{ws}}/existing_dir.pt", "existing_dir.pt"),
    # --- eval: data -----------------------------------------------------------------------
    tool("eval-labels-out-of-range", f"{EVAL_ON} {{ws}}/labels_out_of_range",
         "no labelled pixel"),
    tool("eval-labels-all-void", f"{EVAL_ON} {{ws}}/labels_void", "no labelled pixel"),
    tool("eval-labels-16bit", f"{EVAL_ON} {{ws}}/labels_16bit", "labels_16bit/a.png"),
    tool("eval-labels-colour", f"{EVAL_ON} {{ws}}/images", "single-channel"),
    tool("eval-labels-undecodable", f"{EVAL_ON} {{ws}}/labels_broken", "labels_broken/a.png"),
    tool("eval-labels-float", f"{EVAL_ON} {{ws}}/labels_float", "labels_float/a.tiff"),
    tool("eval-labels-missing-one", f"{EVAL_ON} {{ws}}/labels_partial", "no label image"),
    tool("eval-labels-is-file", f"{EVAL_ON} {{ws}}/afile", "--labels"),
    tool("eval-images-missing", "eval --images {ws}/missing --labels {ws}/labels", "--images"),
    tool("eval-images-empty", "eval --images {ws}/empty_dir --labels {ws}/labels", "no images"),
    tool("eval-images-labels-unpaired",
         f"{EVAL} --images {{ws}}/images", "in pairs"),
    tool("eval-labels-wrong-size", f"{EVAL_ON} {{ws}}/labels_small --no-progress -o {{ws}}/out",
         "size", slow=True),
    tool("eval-labels-warn-and-16bit-ok", f"{EVAL_ON} {{ws}}/labels_warn --no-report "
         "--no-progress -o {ws}/out", "labels_warn/b.png", code=0, writes=("out",), slow=True),
    tool("eval-model-missing", f"{EVAL} --model {{ws}}/missing.pt", "missing.pt"),
    tool("eval-model-text", f"{EVAL} --model {{ws}}/text.pth", "not a TorchScript", slow=True),
    tool("eval-model-checkpoint", f"{EVAL} --model {{ws}}/weights.pth", "checkpoint",
         slow=True),
    tool("eval-model-dir", f"{EVAL} --model {{ws}}/existing_dir.pt", "not a file"),
    tool("eval-no-arguments", "eval", "required"),
    # --- play -----------------------------------------------------------------------------
    tool("play-topic-invalid", f"{PLAY} --topic 'bad topic!'", "topic"),
    tool("play-topic-empty", f"{PLAY} --topic ''", "topic"),
    tool("play-lockstep-invalid", f"{PLAY} --lockstep 'bad topic!'", "--lockstep"),
    tool("play-node-name-invalid", f"{PLAY} --node-name bad-name", "--node-name"),
    tool("play-source-missing", "play {ws}/missing.mp4", "missing.mp4"),
    tool("play-source-not-media", "play {ws}/text.pth", "text.pth"),
    tool("play-source-empty-dir", "play {ws}/empty_dir", "empty_dir"),
    tool("play-rate-zero", f"{PLAY} --rate 0", "positive"),
    tool("play-rate-negative", f"{PLAY} --rate -5", "positive"),
    tool("play-count-negative", f"{PLAY} --count -1", "--count"),
    tool("play-depth-zero", f"{PLAY} --depth 0", "--depth"),
    tool("play-resize-zero", f"{PLAY} --resize 0x0", "positive"),
    tool("play-resize-absurd", f"{PLAY} --resize 100000x100000", "too large"),
    tool("play-wait-timeout-zero", f"{PLAY} --wait-timeout 0", "positive"),
    tool("play-lockstep-timeout-negative", f"{PLAY} --lockstep-timeout -1", "positive"),
    tool("play-start-delay-negative", f"{PLAY} --start-delay -1", "--start-delay"),
    tool("play-wait-subscribers-negative", f"{PLAY} --wait-subscribers -1",
         "--wait-subscribers"),
    tool("play-encoding-unknown", f"{PLAY} --encoding yuv", "invalid choice"),
    tool("play-no-source", "play", "required"),
    # --- bench ----------------------------------------------------------------------------
    tool("bench-json-is-dir", f"{BENCH} --json {{ws}}/existing_dir.pt", "folder"),
    tool("bench-json-under-file", f"{BENCH} --json {{ws}}/afile/x.json", NOT_A_FOLDER),
    tool("bench-json-empty", f"{BENCH} --json ''", "folder"),
    tool("bench-json-is-model", f"{BENCH} --json {{ws}}/exported.pt", "--model"),
    tool("bench-threads-negative", f"{BENCH} --threads -1", "--threads"),
    tool("bench-frames-zero", "bench --frames 0", "--frames"),
    tool("bench-warmup-negative", "bench --warmup -1", "--warmup"),
    tool("bench-sizes-zero", "bench --sizes 0x0", "positive"),
    tool("bench-sizes-absurd", "bench --sizes 100000x100000", "too large"),
    tool("bench-skip-unknown", "bench --skip bogus", "cannot skip"),
    tool("bench-soak-zero", f"{BENCH} --soak 0", "--soak"),
    tool("bench-accuracy-images-negative", f"{BENCH} --accuracy-images -1",
         "--accuracy-images"),
    tool("bench-alpha", f"{BENCH} --alpha 2", "--alpha"),
    tool("bench-domain-id", f"{BENCH} --domain-id 500", "--domain-id"),
    tool("bench-node-seconds", f"{BENCH} --node-seconds 0", "--node-seconds"),
    tool("bench-model-missing", "bench --model {ws}/missing.pt --frames 1", "missing.pt"),
    tool("bench-cache-under-file", "bench --model espnet-camvid --frames 1 "
         "--skip naive,transport,node,accuracy", "SEG_PERCEPTION_CACHE", env=BAD_CACHE),
    # --- demo -----------------------------------------------------------------------------
    tool("demo-out-under-file", f"{DEMO} --out {{ws}}/afile/x", NOT_A_FOLDER),
    tool("demo-out-is-file", f"{DEMO} --out {{ws}}/afile", NOT_A_FOLDER),
    tool("demo-out-is-input", f"{DEMO} --only stills --stills {{ws}}/images --out {{ws}}/images",
         "--stills"),
    tool("demo-rate-zero", f"{DEMO} --rate 0", "--rate"),
    tool("demo-max-frames-negative", f"{DEMO} --max-frames -1", "--max-frames"),
    tool("demo-video-missing", f"{DEMO} --only video --video {{ws}}/missing.mp4", "missing.mp4"),
    tool("demo-stills-missing", f"{DEMO} --only stills --stills {{ws}}/missing", "missing"),
    tool("demo-stills-is-file", f"{DEMO} --only stills --stills {{ws}}/images/a.png", "folder"),
    tool("demo-params-file-missing", "demo --params-file {ws}/missing.yaml --out {ws}/out",
         "missing.yaml"),
    tool("demo-model-missing", "demo --model {ws}/missing.pt --out {ws}/out", "missing.pt"),
    tool("demo-startup-timeout-zero", f"{DEMO} --startup-timeout 0", "--startup-timeout"),
    tool("demo-only-unknown", f"{DEMO} --only both", "invalid choice"),
    # --- train ----------------------------------------------------------------------------
    tool("train-out-is-dir", f"{TRAIN} --out {{ws}}/existing_dir.pt", "folder"),
    tool("train-out-under-file", f"{TRAIN} --out {{ws}}/afile/x.pt", NOT_A_FOLDER),
    tool("train-out-is-input", f"{TRAIN} --out {{ws}}/images/a.png", "input"),
    tool("train-out-is-model", f"{TRAIN} --model {{ws}}/exported.pt --out {{ws}}/exported.pt",
         "input"),
    tool("train-run-dir-is-file", f"{TRAIN_OUT} --run-dir {{ws}}/afile", NOT_A_FOLDER),
    tool("train-epochs-zero", f"{TRAIN_OUT} --epochs 0", "--epochs"),
    tool("train-batch-size-zero", f"{TRAIN_OUT} --batch-size 0", "--batch-size"),
    tool("train-threads-negative", f"{TRAIN_OUT} --threads -1", "--threads"),
    tool("train-workers-negative", f"{TRAIN_OUT} --workers -1", "--workers"),
    tool("train-limit-negative", f"{TRAIN_OUT} --limit -1", "--limit"),
    tool("train-patience-negative", f"{TRAIN_OUT} --patience -1", "--patience"),
    tool("train-lr-zero", f"{TRAIN_OUT} --lr 0", "--lr"),
    tool("train-time-budget-negative", f"{TRAIN_OUT} --time-budget -5", "--time-budget"),
    tool("train-classes-unknown",
         "train --images {ws}/images --labels {ws}/labels --classes nosuch --out {ws}/new.pt",
         "nosuch"),
    tool("train-val-unpaired", f"{TRAIN_OUT} --val-images {{ws}}/images", "--val-labels"),
    tool("train-resume-nothing", f"{TRAIN_OUT} --resume", "--resume"),
    tool("train-labels-out-of-range",
         "train --images {ws}/images --labels {ws}/labels_out_of_range --classes camvid "
         "--out {ws}/new.pt", "not a class"),
    tool("train-labels-16bit", "train --images {ws}/images --labels {ws}/labels_16bit "
         "--classes camvid --out {ws}/new.pt", "labels_16bit/a.png"),
    tool("train-size-absurd", f"{TRAIN_OUT} --input-size 100000x100000", "too large"),
    tool("train-model-missing", f"{TRAIN_OUT} --model {{ws}}/missing.pt", "missing.pt"),
    tool("train-mapping-missing", f"{TRAIN_OUT} --mapping {{ws}}/missing.yaml", "missing.yaml"),
    # --- the command line -----------------------------------------------------------------
    tool("cli-no-tool", "", "required"),
    tool("cli-unknown-tool", "nosuch", "invalid choice"),
    tool("cli-unknown-option", "export espnet-camvid -o {ws}/o.pt --bogus", "--bogus"),
    # --- the node -------------------------------------------------------------------------
    node("node-model-missing", MODEL_MISSING, "missing.pt"),
    node("node-unknown-parameter", f"{MODEL_MISSING} -p bogus_parameter:=1", "bogus_parameter"),
    node("node-model-and-model-path", "-p model:=espnet-camvid "
         "-p model_path:={ws}/missing.pt", "both 'model' and 'model_path'"),
    node("node-model-text", "-p model:={ws}/text.pth", "not a TorchScript", slow=True),
    node("node-model-checkpoint", "-p model:={ws}/weights.pth", "checkpoint", slow=True),
    node("node-model-dir", "-p model:={ws}/existing_dir.pt", "not a file"),
    node("node-cache-under-file", "-p model:=espnet-camvid", "SEG_PERCEPTION_CACHE",
         env=BAD_CACHE),
    node("node-min-confidence", f"{MODEL_MISSING} -p min_confidence:=2.0", "min_confidence"),
    node("node-input-qos", f"{MODEL_MISSING} -p input_qos:=bogus", "input_qos"),
    node("node-threads-negative", f"{MODEL_MISSING} -p num_threads:=-1", "num_threads"),
    node("node-bad-ros-args", "-p", "-p"),
]


# --- the prepared folder ------------------------------------------------------------------------


def _write_labels(folder: Path, labels: dict[str, np.ndarray]) -> None:
    folder.mkdir()
    for name, array in labels.items():
        assert cv2.imwrite(str(folder / name), array), name


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The files every case starts from: real weights, a real export, small CamVid crops."""
    from seg_perception.models.loading import resolve_model_path

    ws = tmp_path_factory.mktemp("bad_input_template")
    camvid = shared_dir() / "data" / "camvid"
    shutil.copy(shared_dir() / "torch_home/hub/checkpoints/espnet_p_2_q_8_camvid.pth",
                ws / "weights.pth")
    shutil.copy(resolve_model_path("espnet-camvid"), ws / "exported.pt")
    shutil.copy(ws / "exported.pt", ws / "old.pt")
    (ws / "text.pth").write_text("not a checkpoint\n")
    (ws / "random.pth").write_bytes(random.Random(0).randbytes(4096))
    (ws / "empty.pth").write_bytes(b"")
    import torch

    torch.save([1, 2, 3], ws / "list.pth")
    (ws / "afile").write_text("a regular file\n")
    (ws / "existing_dir.pt").mkdir()
    (ws / "empty_dir").mkdir()
    (ws / "images").mkdir()
    names = sorted(p.name for p in (camvid / "val").iterdir())[:2]
    truth = {}
    for target, name in zip("ab", names, strict=True):
        image = cv2.imread(str(camvid / "val" / name))[:96, :128]
        cv2.imwrite(str(ws / "images" / f"{target}.png"), image)
        truth[f"{target}.png"] = cv2.imread(str(camvid / "valannot" / name),
                                            cv2.IMREAD_UNCHANGED)[:96, :128]
    _write_labels(ws / "labels", truth)
    shape = truth["a.png"].shape
    _write_labels(ws / "labels_out_of_range", {n: np.full(shape, 200, np.uint8) for n in truth})
    _write_labels(ws / "labels_void", {n: np.full(shape, 11, np.uint8) for n in truth})
    _write_labels(ws / "labels_16bit", {n: t.astype(np.uint16) * 257 for n, t in truth.items()})
    _write_labels(ws / "labels_small", {n: t[:48, :64] for n, t in truth.items()})
    mixed = truth["b.png"].copy()
    mixed[:8] = 77
    _write_labels(ws / "labels_warn", {"a.png": truth["a.png"].astype(np.uint16),
                                       "b.png": mixed})
    _write_labels(ws / "labels_float", {"a.tiff": truth["a.png"].astype(np.float32),
                                        "b.tiff": truth["b.png"].astype(np.float32)})
    _write_labels(ws / "labels_partial", {"a.png": truth["a.png"]})
    (ws / "labels_broken").mkdir()
    (ws / "labels_broken" / "a.png").write_bytes(b"\x89PNG broken")
    shutil.copy(ws / "labels" / "b.png", ws / "labels_broken" / "b.png")
    report = ws / "report"
    report.mkdir()
    for name in ("report.md", "confusion_matrix.png", "eval.json", "notes.txt"):
        (report / name).write_text("from an earlier run\n")
    return ws


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder``: kind, size, mtime and content hash."""
    state = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink() or not path.is_file():
            state[key] = ("dir" if path.is_dir() else "other",)
        else:
            stat = path.stat()
            state[key] = ("file", stat.st_size, stat.st_mtime_ns,
                          hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def _prepare(template: Path, root: Path, case: Case) -> tuple[Path, dict[str, str]]:
    ws = root / f"case{CASES.index(case):03d}"  # not the id: a message must not match its path
    shutil.copytree(template, ws)
    values = {"ws": str(ws)}
    env = {"ROS_DOMAIN_ID": str(random.randint(1, 101)),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "PYTHONWARNINGS": "ignore",
           **{k: v.format(**values) for k, v in case.env.items()}}
    return ws, {"argv": [a.format(**values) for a in case.argv], "env": env}


# --- running a case ---------------------------------------------------------------------------


class _Trap(BaseException):
    """A fail-fast case reached model loading (BaseException: no broad handler hides it)."""


def _trap(*args, **kwargs):
    raise _Trap(f"{TRAP}: the command loaded or built a model before refusing its input")


def _child(argv: list[str], env: dict[str, str], cwd: str, logs: str, trap: bool) -> None:
    """In the forked process: the case's environment, logs and (maybe) the trap, then the CLI."""
    import torch

    os.chdir(cwd)
    os.environ.update(env)
    for number, name in ((1, "stdout"), (2, "stderr")):
        fd = os.open(f"{logs}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, number)
        os.close(fd)
    if trap:
        torch.jit.load = torch.jit.script = torch.jit.trace = _trap
    from seg_perception.cli import main

    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    code = code if isinstance(code, int) else 0 if code is None else 1
    # The forkserver can lose a child's exit status on a busy machine and report 255
    # (python/cpython#140867): the child also writes its own, for _run.
    Path(f"{logs}.rc").write_text(str(code))
    sys.exit(code)


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str


def _run(case: Case, prepared: dict, ws: Path, logs: Path) -> Outcome:
    """The case in a process of its own; its exit code (None: timed out) and output."""
    timeout = SLOW_TIMEOUT_S if case.slow else FAST_TIMEOUT_S
    if case.node:
        code = _run_node(prepared, ws, logs, timeout)
    else:
        process = multiprocessing.get_context("forkserver").Process(
            target=_child, args=(prepared["argv"], prepared["env"], str(ws), str(logs),
                                 not case.slow))
        process.start()
        process.join(timeout)
        code = process.exitcode
        if code is None:
            process.kill()
            process.join()
        recorded = Path(f"{logs}.rc")
        if code == 255 and recorded.is_file():  # see _child
            code = int(recorded.read_text())
    return Outcome(code, *(Path(f"{logs}.{n}").read_text(errors="replace")
                           for n in ("stdout", "stderr")))


def _run_node(prepared: dict, ws: Path, logs: Path, timeout: float) -> int | None:
    command = [sys.executable, "-m", "seg_perception.node", "--ros-args", *prepared["argv"]]
    with open(f"{logs}.stdout", "w") as stdout, open(f"{logs}.stderr", "w") as stderr:
        try:
            return subprocess.run(command, env={**os.environ, **prepared["env"]}, cwd=ws,
                                  stdout=stdout, stderr=stderr, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return None


def _problems(case: Case, outcome: Outcome, before: dict, after: dict, ws: Path) -> list[str]:
    """What the case did wrong, one line each (empty: it behaved)."""
    problems = []
    output = outcome.stdout + outcome.stderr
    if outcome.code is None:
        problems.append("timed out")
    elif outcome.code != case.code:
        problems.append(f"exit code {outcome.code}, expected {case.code}")
    if TRAP in output:
        problems.append("loaded or built a model before refusing its input")
    elif "Traceback" in output:
        problems.append("printed a traceback")
    if case.message.lower() not in output.lower():
        problems.append(f"no {case.message!r} in its output")
    errors = [line for line in outcome.stderr.splitlines() if "error:" in line.lower()]
    if case.code == 2 and len(errors) != 1:
        problems.append(f"{len(errors)} 'error:' lines, expected one")
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key) and not any(
                key == w or key.startswith(w + "/") for w in case.writes):
            what = "created" if key not in before else "deleted" if key not in after else "changed"
            problems.append(f"{what} {key}")
    problems += [f"left {p}" for p in case.absent if (ws / p).exists()]
    return problems


@pytest.fixture(scope="module")
def outcomes(request, template, tmp_path_factory) -> dict[str, tuple[list[str], str]]:
    """The selected cases (all: ~40 s on 2 cores), PARALLEL at a time: id -> (problems, its
    output)."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if "case" in getattr(getattr(item, "callspec", None), "params", {})}
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    root = tmp_path_factory.mktemp("bad_input_cases")
    logs = tmp_path_factory.mktemp("bad_input_logs")

    def one(case: Case) -> tuple[str, tuple[list[str], str]]:
        ws, prepared = _prepare(template, root, case)
        before = _snapshot(ws)
        outcome = _run(case, prepared, ws, logs / case.id)
        problems = _problems(case, outcome, before, _snapshot(ws), ws)
        shutil.rmtree(ws)  # ~5 MB per case
        return case.id, (problems, f"$ {' '.join(prepared['argv'])}\n{outcome.stdout}"
                                   f"{outcome.stderr}")

    # Slow cases first, so that they overlap the many fast ones.
    ordered = sorted((c for c in CASES if c.id in selected), key=lambda c: not (c.slow or c.node))
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = dict(pool.map(one, ordered))
    report = os.environ.get("SEG_PERCEPTION_BAD_INPUT_REPORT")
    if report:  # a summary of the whole table (e.g. to compare two versions of the code)
        lines = [f"{cid}: {'; '.join(p) if p else 'ok'}" for cid, (p, _) in results.items()]
        Path(report).write_text("\n".join(sorted(lines)) + "\n")
    return results


def test_the_table_covers_every_tool_and_the_node():
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)
    tools = {c.argv[0] for c in CASES if not c.node and c.argv}
    assert tools >= {"export", "eval", "play", "bench", "demo", "train"}
    assert any(c.node for c in CASES)
    assert sum(c.slow for c in CASES) <= 12, "keep the cases that load a model few"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, outcomes) -> None:
    problems, output = outcomes[case.id]
    assert not problems, "; ".join(problems) + "\n" + output[-3000:]


# --- the shared helpers on their own ----------------------------------------------------------


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from seg_perception.checks import atomic_write

    target = tmp_path / "eval.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as stream:
        stream.write("half of the new")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_writers_of_one_file_at_once_each_leave_a_whole_file(tmp_path):
    """Two processes exporting the same built-in into the cache: temporary names are unique,
    so the file is one writer's whole output, never a mix or a half."""
    import threading

    from seg_perception.checks import atomic_write

    target = tmp_path / "model.pt"
    both_writing = threading.Barrier(2)

    def write(text: str) -> None:
        with atomic_write(target) as stream:
            stream.write(text * 100_000)
            both_writing.wait(timeout=10)

    writers = [threading.Thread(target=write, args=(c,)) for c in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert target.read_text() in ("a" * 100_000, "b" * 100_000)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_output_checks_name_the_option_and_the_problem(tmp_path):
    from seg_perception.checks import OutputPathError, check_output_dir, check_output_file

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    with pytest.raises(OutputPathError, match="-o .* is the --weights file"):
        check_output_file(tmp_path / "sub" / ".." / "w.pth", "-o", {"--weights": weights})
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path, "-o")
    with pytest.raises(OutputPathError, match="w.pth is not a folder"):
        check_output_dir(weights / "report", "-o")
    assert check_output_file(tmp_path / "new" / "m.pt", "-o") == tmp_path / "new" / "m.pt"
    assert not (tmp_path / "new").exists()  # checking creates nothing
