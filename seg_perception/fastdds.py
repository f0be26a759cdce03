"""The shipped Fast DDS profile for large images, and putting it into a process's environment.

Best-effort images of 640x480 and larger from another process are lost with Fast DDS's default
transports; ``config/fastdds_shm.xml`` (a big shared-memory segment) fixes that, and it is the
*publisher's* process that must load it. ROS-free, so a tool can set the variable before rclpy
creates its first participant (Fast DDS reads it once, then).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
PROFILE_NAME = "fastdds_shm.xml"
PACKAGE = "seg_perception"


def find_fastdds_profile() -> Path | None:
    """The package's Fast DDS profile: source tree first, then the installed share folder."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / PROFILE_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "config" / PROFILE_NAME)
    except Exception:  # noqa: BLE001 - not installed with ament, or no ament_index at all
        pass
    # pip/colcon put setup.py's data_files under the environment's prefix.
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / "config" / PROFILE_NAME)
    return next((path for path in candidates if path.is_file()), None)


def use_fastdds_profile(env: MutableMapping[str, str] | None = None) -> str | None:
    """Point ``env`` (default: this process) at the profile unless one is set; returns it."""
    env = os.environ if env is None else env
    if env.get(PROFILE_ENV):
        return env[PROFILE_ENV]
    profile = find_fastdds_profile()
    if profile is not None:
        env[PROFILE_ENV] = str(profile)
        return str(profile)
    return None
