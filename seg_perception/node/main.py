"""Running the node as a process: signals, start-up errors as one line, clean shutdown."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from seg_perception import topics
from seg_perception.fastdds import PROFILE_ENV, PROFILE_NAME, use_fastdds_profile
from seg_perception.node.node import SegmentationNode

PROGRAM = f"{topics.NODE_NAME}_node"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


_OWN_PROFILE_MARK = "SEG_PERCEPTION_OWN_FASTDDS_PROFILE"  # the profile this node chose itself


def _use_large_data_profile() -> str:
    """The shipped Fast DDS profile for this process, unless the user chose one; one line.

    The node publishes camera-sized images: without a large shared-memory segment in its own
    process, best-effort subscribers in other processes lose most of them. Fast DDS reads the
    variable once, when the first participant is created, so this runs before rclpy.init.
    """
    if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return ""
    chosen = os.environ.get(PROFILE_ENV)
    if os.environ.get(_OWN_PROFILE_MARK) == chosen:
        chosen = None  # set by this process before a restart: still the node's own choice
    profile = use_fastdds_profile()
    if chosen:
        return f"Fast DDS profile: {chosen} ({PROFILE_ENV}, as set)"
    if profile is not None:
        os.environ[_OWN_PROFILE_MARK] = profile
    if profile is None:
        return (f"Fast DDS profile {PROFILE_NAME} not found: best-effort subscribers of large "
                "images in other processes may lose them")
    return (f"Fast DDS profile: {profile} (large images over shared memory; set "
            f"{PROFILE_ENV} to use your own)")


def run(args: list[str] | None, managed: bool) -> int:
    """Spin the node until SIGINT/SIGTERM; exit 2 with one line if it cannot start.

    Signals are handled in Python (not by rclpy's handlers): a Ctrl-C that arrives while the
    model is still loading would otherwise be lost or leave a half-shut-down context behind.
    Either signal raises KeyboardInterrupt in the main thread, wherever it is.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    profile_note = _use_large_data_profile()
    node: SegmentationNode | None = None
    try:
        try:
            rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        except RuntimeError as exc:  # RCLError: malformed --ros-args
            print(f"{PROGRAM}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        node = SegmentationNode(managed=managed)
        if not managed:
            for transition in (node.trigger_configure, node.trigger_activate):
                if transition() != TransitionCallbackReturn.SUCCESS:
                    print(f"{PROGRAM}: error: {node.problem or 'start-up failed'}",
                          file=sys.stderr)
                    return 2
        if profile_note:  # after a failed start only the error line is printed
            node.get_logger().info(profile_note)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        restart = None
        if node is not None:
            if node.restart_requested:
                restart = node.parameter_arguments()
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    if restart is not None:
        _restart_unconfigured(args, restart)
    return 0


def _restart_unconfigured(args: list[str] | None, parameters: list[str]) -> None:
    """Replace this process with a fresh managed node (after a lifecycle cleanup): the same
    ROS arguments (name, namespace, remappings, files), then the parameters as they are now."""
    argv = list(sys.argv[1:] if args is None else args)
    if "--ros-args" not in argv:
        argv.append("--ros-args")
    command = [sys.executable, "-m", "seg_perception.node", "--managed", *argv, *parameters]
    sys.stdout.flush()
    sys.stderr.flush()
    # Fast DDS keeps shared-memory port lock files open: a new process must not inherit them
    # (every later participant on the host would report the ports as taken).
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.execv(sys.executable, command)
