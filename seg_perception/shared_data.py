"""Locating the read-only data set folder (``shared/``) that lives beside a checkout.

The data is never copied into the package; tools and tests find it at run time:
``SEG_PERCEPTION_SHARED`` if set, else a ``shared`` folder beside (or inside) the repository or
the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from seg_perception.errors import SegPerceptionError


class SharedDataError(SegPerceptionError, FileNotFoundError):
    """The shared data folder (or a file expected in it) is not there."""


def shared_dir() -> Path:
    env = os.environ.get("SEG_PERCEPTION_SHARED")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise SharedDataError(f"SEG_PERCEPTION_SHARED={env} is not a folder")
        return path
    repo = Path(__file__).resolve().parents[1]
    for base in (repo, Path.cwd()):
        for candidate in (base.parent / "shared", base / "shared"):
            if (candidate / "data").is_dir():
                return candidate
    raise SharedDataError(
        "cannot find the shared data folder: set SEG_PERCEPTION_SHARED to its path"
    )


def shared_path(*parts: str) -> Path:
    """A path inside the shared folder that must exist."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        raise SharedDataError(f"{path} is missing from the shared data folder")
    return path


def use_shared_torch_home() -> None:
    """Point the torch hub cache at the shared pretrained weights unless TORCH_HOME is set."""
    if "TORCH_HOME" not in os.environ:
        try:
            os.environ["TORCH_HOME"] = str(shared_path("torch_home"))
        except SharedDataError:
            pass


def dashcam_stills() -> list[Path]:
    return sorted(shared_path("data", "dashcam", "stills").glob("*.jpg"))


def dashcam_video() -> Path:
    return shared_path("data", "dashcam", "highway_720p.mp4")
