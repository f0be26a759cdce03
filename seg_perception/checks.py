"""Checks of a user's input made before any work starts, and writes that leave no partial file.

Every tool checks its arguments and output paths here, before it loads a model or reads data
for minutes: a bad path then costs a second, not the whole run. The rules:

* an output file may not be a folder, nor one of the command's input files (an input is never
  overwritten); its folder must be (or be creatable as) a writable folder;
* an existing output file is replaced, and the tool says so in one line (no ``--force``);
* every file is written to a temporary file beside it and renamed at the end: a failure or a
  concurrent writer never leaves a half-written file, and no temporary file survives.

No heavy imports here (no torch, OpenCV or rclpy at import time): the tools' argument parsers
use this module.
"""

from __future__ import annotations

import argparse
import logging
import operator
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from seg_perception.errors import UsageError

log = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 8192  # a larger image or network input side is a typo, not a request
InputPaths = Mapping[str, "Path | str | Iterable[Path] | None"]


class OutputPathError(UsageError):
    """An output path cannot be written (a folder, an input, under a file, not writable)."""


def strict_integer(value: Any, what: str = "") -> int:
    """``value`` as an int: ints and integer-like numbers (numpy), never a bool or a float;
    ValueError "[<what>] must be an integer, got ..." otherwise."""
    subject = f"{what} " if what else ""
    if isinstance(value, bool):
        raise ValueError(f"{subject}must be an integer, got a bool ({value})")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{subject}must be an integer, got {value!r}") from None


# --- paths ------------------------------------------------------------------------------------


def check_input_file(path: Path | str, option: str) -> Path:
    """An input file that must exist and be a file (not a folder)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder, not a file")
    if not path.is_file():
        raise UsageError(f"{option} {path}: no such file")
    return path


def check_output_file(path: Path | str, option: str, inputs: InputPaths | None = None) -> Path:
    """An output file path, checked before the work: not a folder, not one of ``inputs`` (what
    each is called -> its path or paths), in a folder that is or can be made writable."""
    path = Path(path).expanduser()
    _refuse_inputs(path, option, inputs, "file")
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder: give a file name")
    _check_writable_folder(path.parent, option, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{option} {path} is not writable")
    return path


def check_output_dir(path: Path | str, option: str, inputs: InputPaths | None = None) -> Path:
    """An output folder, checked before the work: a folder (or creatable as one), writable,
    and none of the input folders ``inputs`` (what each is called -> its path or paths)."""
    path = Path(path).expanduser()
    _refuse_inputs(path, option, inputs, "folder")
    _check_writable_folder(path, option, path)
    return path


def _refuse_inputs(path: Path, option: str, inputs: InputPaths | None, kind: str) -> None:
    for name, given in (inputs or {}).items():
        single = isinstance(given, str | os.PathLike)
        paths = [given] if single else list(given or ())
        if any(_same_path(path, Path(p)) for p in paths):
            what = f"the {name} {kind}" if single else f"one of the {name}"
            raise OutputPathError(f"{option} {path} is {what}: an input is never overwritten, "
                                  "choose another path")


def _same_path(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _check_writable_folder(folder: Path, option: str, path: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{option} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {path}: {existing} is not writable")


# --- atomic writes ----------------------------------------------------------------------------


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()  # read once, at import: os.umask is process-wide


@contextmanager
def atomic_path(path: Path | str, announce: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (it keeps the
    suffix, for writers that choose the format by it); renamed onto ``path`` when the block
    ends, deleted if it fails. ``announce``: log one line when an existing file was replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        existed = path.exists()
        os.chmod(temporary, stat.S_IMODE(path.stat().st_mode) if existed else _FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if existed and announce:
        log.info("replaced the existing %s", path)


@contextmanager
def atomic_write(path: Path | str, mode: str = "w", announce: bool = True) -> Iterator[IO]:
    """:func:`atomic_path`, opened: ``with atomic_write(path) as stream: stream.write(...)``."""
    with atomic_path(path, announce) as temporary, open(temporary, mode) as stream:
        yield stream


# --- argument types ---------------------------------------------------------------------------


def number_type(kind: type[int] | type[float], minimum: float | None = None,
                maximum: float | None = None, positive: bool = False
                ) -> Callable[[str], int | float]:
    """An argparse ``type`` for a number in a range: a bad value is argparse's one-line error."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'a whole number' if kind is int else 'a number'}, not {text!r}"
            ) from None
        if positive and not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        if minimum is not None and not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, not {text}")
        if maximum is not None and not value <= maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, not {text}")
        return value

    return parse


def parse_size(text: str) -> tuple[int, int]:
    """'1024x512' -> (1024, 512); sides from 1 to :data:`MAX_IMAGE_SIDE`."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x512, not {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, not {text!r}")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(
            f"size {text!r} is too large: at most {MAX_IMAGE_SIDE} pixels a side")
    return width, height


def check_ros_name(name: str, option: str, kind: str = "topic") -> str:
    """A ROS topic or node name, validated by rclpy's own rules before anything starts."""
    from rclpy.exceptions import NameValidationException
    from rclpy.validate_node_name import validate_node_name
    from rclpy.validate_topic_name import validate_topic_name

    try:
        (validate_node_name if kind == "node" else validate_topic_name)(name)
    except NameValidationException as exc:
        reason = str(exc).splitlines()[0].split(": ", 1)[-1].rstrip(":")
        raise UsageError(f"{option} {name!r} is not a valid ROS {kind} name: {reason}") from None
    return name
