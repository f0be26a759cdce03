"""Shared fixtures: real data from ../shared, cached real models, an isolated ROS 2 domain."""

from __future__ import annotations

from seg_perception.process_setup import prepare_process

prepare_process()  # as the node and the tools do, before numpy, OpenCV and torch start threads

import os
import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_perception.shared_data import SharedDataError, shared_dir, use_shared_torch_home

REPO = Path(__file__).resolve().parents[1]

# Built-in models are exported once into a cache; tests share the project's cache.
os.environ.setdefault("SEG_PERCEPTION_CACHE", str(REPO / ".cache"))
use_shared_torch_home()


@pytest.fixture(scope="session")
def shared() -> Path:
    try:
        return shared_dir()
    except SharedDataError as exc:
        pytest.fail(f"the shared data folder is required for the tests: {exc}")


@pytest.fixture(scope="session")
def dashcam_still(shared) -> callable:
    """Load a dash-cam still (test1..test6) as an HxWx3 uint8 RGB array."""

    def load(name: str = "test1") -> np.ndarray:
        bgr = cv2.imread(str(shared / "data" / "dashcam" / "stills" / f"{name}.jpg"))
        assert bgr is not None, name
        return np.ascontiguousarray(bgr[..., ::-1])

    return load


@pytest.fixture(scope="session")
def cityscapes_model():
    """The package's default model (ESPNet-Cityscapes, real weights) on the CPU."""
    from seg_perception.models import load_model

    return load_model("espnet-cityscapes", device="cpu")


@pytest.fixture(scope="session")
def camvid_model():
    """ESPNet-CamVid with its real weights on the CPU (480x360: fast)."""
    from seg_perception.models import load_model

    return load_model("espnet-camvid", device="cpu")


@pytest.fixture
def ros_env(monkeypatch) -> dict[str, str]:
    """Environment for a test that starts ROS: loopback discovery and its own random domain.

    Applied to this process (for in-process rclpy) and returned for subprocesses.
    """
    domain = str(random.randint(1, 101))  # 0..101 are safe for Fast DDS port ranges
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", domain)
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return dict(os.environ)


@pytest.fixture(scope="module")
def domain() -> dict:
    """A test module's own ROS domain on loopback (as ros_env, module-wide): its "id" and the
    "env" for the processes it starts (which load the shipped Fast DDS profile)."""
    from seg_perception.tools.rosgraph import ros_env

    domain_id = random.randint(1, 101)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        patch.setenv("ROS_DOMAIN_ID", str(domain_id))
        patch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
        yield {"id": domain_id, "env": ros_env(domain_id)}


@pytest.fixture(scope="module")
def workdir(request, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def probe(domain):
    """The test process's ROS node in the module's domain, recording /diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray
    from ros_helpers import probe_node

    from seg_perception import topics

    ros = probe_node(domain["id"])
    ros.record(topics.DIAGNOSTICS, DiagnosticArray, reliability="best_effort", depth=100)
    yield ros
    ros.close()
