"""Bad input at every tool and the node: one clear line, exit 2, nothing lost, nothing left.

One table of cases, ``bad_input_cases.yaml``. Each names a command (``seg-perception`` argv, or
the node's ``--ros-args``), the exit code, a fragment of its message, and what it may write: a
failing command must leave its working folder exactly as it was (inputs untouched, no partial
files). Every case runs in a folder of its own (a copy of one prepared template) and in a
process of its own.

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
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

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


CASES_FILE = Path(__file__).with_name("bad_input_cases.yaml")


def load_cases(path: Path = CASES_FILE) -> list[Case]:
    """The table: one row per case, its shorthand ``{NAME}``s expanded (``{ws}`` is kept for
    :func:`_prepare`)."""
    table = yaml.safe_load(path.read_text())
    shorthand: dict[str, str] = table["shorthand"]

    def expand(text: str) -> str:
        while names := [name for name in shorthand if f"{{{name}}}" in text]:
            for name in names:
                text = text.replace(f"{{{name}}}", shorthand[name])
        return text

    cases = []
    for row in table["cases"]:
        row = dict(row)
        is_node = "ros_args" in row
        argv = tuple(shlex.split(expand(row.pop("ros_args" if is_node else "run"))))
        cases.append(Case(argv=argv, node=is_node, writes=tuple(row.pop("writes", ())),
                          absent=tuple(row.pop("absent", ())), **row))
    return cases


CASES = load_cases()


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
