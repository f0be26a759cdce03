"""The launch file run by the real launch / launch_ros, checked over DDS as a ROS user would.

These run where launch and launch_ros are importable (a ROS 2 install's ``colcon test``, or a
local ROS 2 CLI harness) and the package is in the ament index (``source install/setup.bash``);
elsewhere they skip with the reason (the pip venv: launch is not on PyPI, and test_colcon.py
checks the launch file against stand-ins there). Each test runs the installed
``segmentation.launch.py`` as ``ros2 launch`` does (a LaunchService in the main thread including
it with the arguments) while a probe node in the module's own ROS domain (loopback discovery)
checks the graph, the parameters and the lifecycle state from a thread, then shuts the
LaunchService down and checks that the node ended cleanly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_NO_ROS = ("is not installed (it is not on PyPI): the launch tests need a ROS 2 install "
           "(source /opt/ros/<distro>/setup.bash)")
# A submodule, not "launch": from the repository root, launch/ imports as an empty namespace
# package of that name.
pytest.importorskip("launch.launch_service", reason=f"launch {_NO_ROS}")
pytest.importorskip("launch_ros.actions", reason=f"launch_ros {_NO_ROS}")

pytestmark = pytest.mark.slow

PACKAGE = "seg_perception"
START_TIMEOUT = 120.0  # Python, torch and the model on a busy two-core machine
STOP_TIMEOUT = 30.0  # launch: SIGINT, 5 s, SIGTERM, 5 s, SIGKILL
DISCOVERY_TIMEOUT = 15.0  # an endpoint the node has made, until the probe has seen it
POLL_S = 0.2


@pytest.fixture(scope="module")
def launch_file() -> Path:
    """The installed launch file, found in the ament index as ``ros2 launch`` finds it."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        share = Path(get_package_share_directory(PACKAGE))
    except PackageNotFoundError:
        pytest.skip(f"{PACKAGE} is not in the ament index (AMENT_PREFIX_PATH): colcon build it "
                    "and source install/setup.bash")
    return share / "launch" / "segmentation.launch.py"


class LaunchRun:
    """``ros2 launch seg_perception segmentation.launch.py <arguments>`` in this process.

    LaunchService only runs in the main thread, so the checks run in a thread meanwhile; when
    they end (or fail) the service is shut down as Ctrl-C would, and every process's exit code
    and output are kept.
    """

    def __init__(self, launch_file: Path, **arguments: str) -> None:
        self.launch_file = launch_file
        self.arguments = arguments
        self.running = threading.Event()  # the launch loop runs: shutdown() reaches it
        self.ended = threading.Event()
        self.exits: dict[str, int] = {}  # executable -> return code
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def output(self) -> str:
        """Everything the launched processes printed so far."""
        with self._lock:
            return "".join(self._lines)

    def _io(self, event: Any) -> None:
        with self._lock:
            self._lines.append(event.text.decode(errors="replace"))

    def _exited(self, event: Any, _context: Any) -> None:
        with self._lock:
            self.exits[event.action.name.rsplit("-", 1)[0]] = event.returncode

    def run(self, check: Callable[[], None]) -> int:
        """Launch, run ``check`` in a thread, shut down; the LaunchService's return code.
        What ``check`` raised is raised here once everything has stopped."""
        from launch.actions import IncludeLaunchDescription, OpaqueFunction, RegisterEventHandler
        from launch.event_handlers import OnProcessExit, OnProcessIO
        from launch.launch_description import LaunchDescription
        from launch.launch_description_sources import AnyLaunchDescriptionSource
        from launch.launch_service import LaunchService

        service = LaunchService(argv=[f"{k}:={v}" for k, v in self.arguments.items()],
                                noninteractive=True)
        service.include_launch_description(LaunchDescription([
            RegisterEventHandler(OnProcessIO(on_stdout=self._io, on_stderr=self._io)),
            RegisterEventHandler(OnProcessExit(on_exit=self._exited)),
            IncludeLaunchDescription(AnyLaunchDescriptionSource(str(self.launch_file)),
                                     launch_arguments=list(self.arguments.items())),
            OpaqueFunction(function=lambda _context: self.running.set()),
        ]))
        failures: list[BaseException] = []

        def checking() -> None:
            try:
                self.wait_for(self.running.is_set, STOP_TIMEOUT, "the launch to start")
                check()
            except BaseException as exc:  # noqa: BLE001 - raised in the main thread below
                failures.append(exc)
            finally:
                service.shutdown()

        thread = threading.Thread(target=checking, daemon=True)
        thread.start()
        try:
            code = service.run()
        finally:
            self.ended.set()
        thread.join(STOP_TIMEOUT)
        if failures:
            raise failures[0]
        return code

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """``condition()``'s first true value; fails naming ``what``, with the processes'
        output, after ``timeout`` s or as soon as the launch ended (a crashed node)."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if self.ended.is_set():
                raise AssertionError(f"the launch ended while waiting for {what} (exits "
                                     f"{self.exits})\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout:.0f} s\n{self.output()}")
            time.sleep(POLL_S)
        return value

    def assert_ended_cleanly(self, code: int, executable: str) -> None:
        """The shutdown stopped ``executable`` on its SIGINT: exit 0, no traceback."""
        output = self.output()
        assert code == 0, f"LaunchService returned {code}\n{output}"
        assert self.exits == {executable: 0}, output
        assert "Traceback" not in output, output


def graph(probe: Any, kind: str, node: str) -> set[str]:
    """The topics node ``node`` (fully qualified) publishes (kind "publisher") or subscribes
    to ("subscriber") as the probe sees them now; empty while it is not discovered."""
    namespace, _, name = node.rpartition("/")
    query = getattr(probe.node, f"get_{kind}_names_and_types_by_node")
    try:
        return {topic for topic, _ in query(name, namespace or "/")}
    except Exception:  # noqa: BLE001 - rclpy: NodeNameNonExistentError until discovered
        return set()


def lifecycle_state(probe: Any, node: str) -> str:
    """The managed node's state label (lifecycle_msgs GetState); "" without an answer yet."""
    from lifecycle_msgs.srv import GetState

    try:
        return probe.call(GetState, f"{node}/get_state", GetState.Request(), 2.0) \
            .current_state.label
    except TimeoutError:
        return ""


def change_state(probe: Any, node: str, transition: int) -> bool:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    request = ChangeState.Request(transition=Transition(id=transition))
    return probe.call(ChangeState, f"{node}/change_state", request, 60.0).success


def camera_outputs(namespace: str, camera: str) -> set[str]:
    from seg_perception import topics

    return {f"{namespace}/{camera}/{name}" for name in (*topics.IMAGE_OUTPUTS,
                                                         topics.VEHICLE_AHEAD)}


def test_plain_launch_applies_namespace_cameras_and_the_model_override(launch_file, probe):
    """The arguments a user passes must reach the plain node: its per-camera publishers under
    the namespace, and the override (not the parameter file's model) in get_parameters."""
    run = LaunchRun(launch_file, namespace="car", cameras="[front, left]",
                    model="espnet-camvid", num_threads="1")
    node = "/car/segmentation"
    expected = camera_outputs("/car", "front") | camera_outputs("/car", "left")

    def check() -> None:
        run.wait_for(lambda: expected <= graph(probe, "publisher", node), START_TIMEOUT,
                     f"publishers {sorted(expected)}")
        inputs = {"/car/front/image", "/car/left/image"}
        run.wait_for(lambda: inputs <= graph(probe, "subscriber", node), DISCOVERY_TIMEOUT,
                     f"subscriptions {sorted(inputs)}")
        model, cameras, threads = probe.get_parameters(node, ["model", "cameras",
                                                              "num_threads"])
        assert (model, list(cameras), threads) == ("espnet-camvid", ["front", "left"], 1)
        services = {name for name, _ in probe.node.get_service_names_and_types()}
        assert f"{node}/get_state" not in services  # plain: not a managed node

    run.assert_ended_cleanly(run.run(check), "segmentation_node")


def test_managed_launch_with_autostart_is_active_and_a_later_deactivate_sticks(
        launch_file, probe):
    """autostart configures and activates the managed node once; a user's deactivate must not
    be undone by the launch file. The camera_info follows the image remap (as image_transport
    places it), so calibration reaches a driver's /<camera>/camera_info."""
    from lifecycle_msgs.msg import Transition

    run = LaunchRun(launch_file, managed="true", namespace="managed", model="espnet-camvid",
                    image="/dashcam/image_raw")
    node = "/managed/segmentation"

    def check() -> None:
        run.wait_for(lambda: lifecycle_state(probe, node) == "active", START_TIMEOUT,
                     f"{node} active")
        inputs = {"/dashcam/image_raw", "/dashcam/camera_info"}
        run.wait_for(lambda: inputs <= graph(probe, "subscriber", node), DISCOVERY_TIMEOUT,
                     f"subscriptions {sorted(inputs)}")
        assert change_state(probe, node, Transition.TRANSITION_DEACTIVATE)
        time.sleep(2.0)  # the old launch file re-activated within milliseconds
        assert lifecycle_state(probe, node) == "inactive"

    run.assert_ended_cleanly(run.run(check), "segmentation_lifecycle_node")


def test_managed_launch_without_autostart_stays_unconfigured(launch_file, probe):
    """autostart:=false leaves the node to a lifecycle manager: unconfigured, no outputs."""
    run = LaunchRun(launch_file, managed="true", autostart="false", namespace="manual",
                    model="espnet-camvid")
    node = "/manual/segmentation"

    def check() -> None:
        run.wait_for(lambda: lifecycle_state(probe, node), START_TIMEOUT, f"{node}/get_state")
        time.sleep(3.0)  # nothing configures it meanwhile
        assert lifecycle_state(probe, node) == "unconfigured"
        published = graph(probe, "publisher", node)
        assert "/manual/segmentation/label_map" not in published, published

    run.assert_ended_cleanly(run.run(check), "segmentation_lifecycle_node")
