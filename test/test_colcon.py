"""Packaging: colcon build in a clean workspace, the launch files, the shipped config files."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_colcon_build_installs_the_executable_launch_and_config_files(tmp_path, ros_env):
    colcon = Path(sys.executable).with_name("colcon")
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment")
    command = [
        str(colcon), "--log-base", str(tmp_path / "log"), "build",
        "--base-paths", str(REPO), "--packages-select", "seg_perception",
        "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
    ]
    env = {**ros_env, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    prefix = tmp_path / "install" / "seg_perception"
    executable = prefix / "lib" / "seg_perception" / "segmentation_node"
    assert executable.is_file() and os.access(executable, os.X_OK)
    share = prefix / "share" / "seg_perception"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "segmentation.launch.py").is_file()
    assert (share / "config" / "segmentation_cameras.rviz").is_file()
    assert (prefix / "lib" / "seg_perception" / "segmentation_lifecycle_node").is_file()
    for name in ("segmentation.yaml", "fastdds_shm.xml", "segmentation.rviz"):
        assert (share / "config" / name).is_file(), name
    index = prefix / "share" / "ament_index" / "resource_index" / "packages" / "seg_perception"
    assert index.is_file()
    site = next((prefix / "lib").glob("python3*/site-packages"))
    assert (site / "seg_perception" / "node" / "node.py").is_file()

    # The installed executable runs the installed node: a bad parameter exits with one line.
    env["PYTHONPATH"] = str(site)
    run = subprocess.run([str(executable), "--ros-args", "-p", "overlay_alpha:=5.0"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.strip() == "segmentation_node: error: parameter 'overlay_alpha': " \
        "5.0 is outside [0, 1]"


# --- the launch file, run against stand-ins for launch / launch_ros ------------------------
# (launch and launch_ros are not on PyPI: the real ones run in test_launch.py where installed)


class _Recorded:
    """Stand-in for a launch action: remembers its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context: dict[str, str]) -> str:
        return context[self.name]


@pytest.fixture
def launch_module(monkeypatch, tmp_path):
    """segmentation.launch.py imported with launch, launch_ros and ament_index stand-ins."""
    share = tmp_path / "share" / "seg_perception"
    recorded = {name: type(name, (_Recorded,), {}) for name in (
        "DeclareLaunchArgument", "EmitEvent", "OpaqueFunction", "RegisterEventHandler",
        "LifecycleNode", "Node", "OnStateTransition", "ChangeState")}
    stubs = {
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda name: str(share)},
        "launch": {},
        "launch.actions": {k: recorded[k] for k in (
            "DeclareLaunchArgument", "EmitEvent", "OpaqueFunction", "RegisterEventHandler")},
        "launch.events": {"matches_action": lambda action: ("matches", action)},
        "launch.launch_context": {"LaunchContext": dict},
        "launch.launch_description": {"LaunchDescription": _Recorded},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"LifecycleNode": recorded["LifecycleNode"],
                               "Node": recorded["Node"]},
        "launch_ros.event_handlers": {"OnStateTransition": recorded["OnStateTransition"]},
        "launch_ros.events": {},
        "launch_ros.events.lifecycle": {"ChangeState": recorded["ChangeState"]},
    }
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    path = REPO / "launch" / "segmentation.launch.py"
    spec = importlib.util.spec_from_file_location("segmentation_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, share


def _launch(module, **arguments):
    """(declared defaults, the actions the launch file makes for ``arguments``)."""
    description = module.generate_launch_description()
    [actions] = description.args
    declared = {a.args[0]: a.kwargs["default_value"] for a in actions
                if type(a).__name__ == "DeclareLaunchArgument"}
    [opaque] = [a for a in actions if "function" in a.kwargs]
    return declared, opaque.kwargs["function"]({**declared, **arguments})


def test_launch_file_declares_the_documented_arguments(launch_module):
    module, share = launch_module
    declared, [node] = _launch(module)
    assert set(declared) == {"image", "cameras", "model", "device", "num_threads",
                             "params_file", "namespace", "managed", "autostart", "rviz",
                             "fastdds_profile"}
    assert declared["params_file"] == str(share / "config" / "segmentation.yaml")
    assert type(node).__name__ == "Node"
    node = node.kwargs
    assert node["package"] == "seg_perception" and node["executable"] == "segmentation_node"
    assert node["name"] == "segmentation"
    # camera_info beside the image, as image_transport places it
    assert node["remappings"] == [("image", "/camera/image_raw"),
                                  ("image/compressed", "/camera/image_raw/compressed"),
                                  ("camera_info", "/camera/camera_info")]
    assert node["parameters"] == [str(share / "config" / "segmentation.yaml")]  # no overrides
    # auto: the node's own choice (the user's FASTDDS_DEFAULT_PROFILES_FILE, else ours)
    assert declared["fastdds_profile"] == "auto"
    assert node["additional_env"] is None


def test_launch_arguments_reach_the_node_as_parameter_values(launch_module):
    module, _ = launch_module
    _, [node] = _launch(module, image="/front/image_raw", model="espnet-camvid",
                        device="cuda:1", namespace="front", params_file="/tmp/mine.yaml",
                        fastdds_profile="", num_threads="1", cameras="[front, rear]")
    node = node.kwargs
    assert node["remappings"] == [("image", "/front/image_raw"),
                                  ("image/compressed", "/front/image_raw/compressed"),
                                  ("camera_info", "/front/camera_info")]
    assert node["namespace"] == "front"
    # Typed as a parameter file types them: an int and a list, not strings.
    assert node["parameters"] == ["/tmp/mine.yaml", {"model": "espnet-camvid",
                                                     "device": "cuda:1", "num_threads": 1,
                                                     "cameras": ["front", "rear"]}]
    assert node["additional_env"] is None
    _, [node] = _launch(module, cameras="front", fastdds_profile="/tmp/my_profile.xml")
    assert node.kwargs["parameters"][1] == {"cameras": ["front"]}  # one name: a list of one
    assert node.kwargs["additional_env"] == {"FASTDDS_DEFAULT_PROFILES_FILE": "/tmp/my_profile.xml"}


def test_managed_launch_configures_and_activates_unless_told_not_to(launch_module):
    from lifecycle_msgs.msg import Transition

    module, _ = launch_module
    _, actions = _launch(module, managed="true")
    node, handler, configure = actions
    assert type(node).__name__ == "LifecycleNode"
    assert node.kwargs["executable"] == "segmentation_lifecycle_node"
    assert configure.kwargs["event"].kwargs["transition_id"] == Transition.TRANSITION_CONFIGURE
    on_inactive = handler.args[0]
    # only the start-up configure: a later deactivate also ends in inactive and must stay there
    assert on_inactive.kwargs["start_state"] == "configuring"
    assert on_inactive.kwargs["goal_state"] == "inactive"
    assert on_inactive.kwargs["handle_once"] is True
    [activate] = on_inactive.kwargs["entities"]
    assert activate.kwargs["event"].kwargs["transition_id"] == Transition.TRANSITION_ACTIVATE
    _, [unmanaged_start] = _launch(module, managed="true", autostart="false")
    assert type(unmanaged_start).__name__ == "LifecycleNode"  # waits for a lifecycle manager


def test_rviz_gets_a_layout_for_the_cameras(launch_module):
    module, _ = launch_module
    _, [_, rviz] = _launch(module, rviz="true", cameras="[front, rear]", namespace="car",
                           params_file=str(REPO / "config" / "segmentation.yaml"))
    assert rviz.kwargs["executable"] == "rviz2"
    layout = yaml.safe_load(Path(rviz.kwargs["arguments"][1]).read_text())
    shown = {d["Topic"]["Value"] for d in layout["Visualization Manager"]["Displays"]}
    assert shown == {"/car/front/segmentation/overlay", "/car/front/vehicle_ahead/marker",
                     "/car/rear/segmentation/overlay", "/car/rear/vehicle_ahead/marker"}


# --- shipped configuration -------------------------------------------------------------------


def test_fastdds_profile_has_a_large_shm_segment_and_keeps_udp():
    ns = {"dds": "http://www.eprosima.com"}
    root = ET.parse(REPO / "config" / "fastdds_shm.xml").getroot()
    transports = {t.findtext("dds:transport_id", namespaces=ns): t
                  for t in root.iterfind(".//dds:transport_descriptor", ns)}
    kinds = {tid: t.findtext("dds:type", namespaces=ns) for tid, t in transports.items()}
    assert sorted(kinds.values()) == ["SHM", "UDPv4"]
    [shm] = [t for t in transports.values() if t.findtext("dds:type", namespaces=ns) == "SHM"]
    assert int(shm.findtext("dds:segment_size", namespaces=ns)) >= 32 * 2**20
    assert int(shm.findtext("dds:maxMessageSize", namespaces=ns)) >= 16 * 2**20
    participant = root.find(".//dds:participant", ns)
    assert participant.get("is_default_profile") == "true"
    rtps = participant.find("dds:rtps", ns)
    assert rtps.findtext("dds:useBuiltinTransports", namespaces=ns) == "false"
    used = [t.text for t in rtps.iterfind("dds:userTransports/dds:transport_id", ns)]
    assert sorted(used) == sorted(transports)


def test_shipped_rviz_layouts_are_current():
    from seg_perception.rviz_config import rviz_layout

    single = yaml.safe_load((REPO / "config" / "segmentation.rviz").read_text())
    assert single == rviz_layout([""])
    images = {d["Topic"]["Value"] for d in single["Visualization Manager"]["Displays"]
              if d["Class"].endswith("/Image")}
    assert images == {"/segmentation/overlay", "/segmentation/color_mask"}
    cameras = yaml.safe_load((REPO / "config" / "segmentation_cameras.rviz").read_text())
    assert cameras == rviz_layout(["front", "left", "right"])
