"""Launch the seg_perception segmentation node, plain or managed (lifecycle).

    ros2 launch seg_perception segmentation.launch.py image:=/camera/image_raw
    ros2 launch seg_perception segmentation.launch.py image:=/cam/image model:=espnet-camvid \
        device:=cuda namespace:=front params_file:=/path/to/my.yaml num_threads:=1
    ros2 launch seg_perception segmentation.launch.py cameras:="[front, left, rear]"
    ros2 launch seg_perception segmentation.launch.py managed:=true autostart:=false

Arguments: image (the camera topic, remapped onto the node's `image`; with
input_transport=compressed the node reads `<image>/compressed`; with several cameras each
camera c reads `c/image`, remap those in your own launch file), cameras, model, device and
num_threads (each overrides the parameter file when not empty), params_file (default: the
package's config/segmentation.yaml), namespace, managed (true: segmentation_lifecycle_node, a
managed node), autostart (with managed: configure and activate it at once; false: leave it
unconfigured for a lifecycle manager such as Nav2's), rviz (true: also start RViz 2 with a
layout for the node's cameras: one overlay and lead-vehicle marker each), fastdds_profile (the
Fast DDS XML profile for the node's process; empty: the node picks the shipped one itself
unless FASTDDS_DEFAULT_PROFILES_FILE is set).
"""

import os
import tempfile
from pathlib import Path

import yaml
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = "seg_perception"
OVERRIDES = ("model", "device", "num_threads", "cameras")  # empty: the parameter file's


def _is_true(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def _segmentation_node(context: LaunchContext) -> list:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    parameters: list = [arg("params_file")]
    # Values as the YAML of a parameter file reads them: "1" is an int, "[a, b]" a list.
    overrides = {name: yaml.safe_load(arg(name)) for name in OVERRIDES if arg(name)}
    if overrides:
        parameters.append(overrides)
    profile = arg("fastdds_profile")
    managed = _is_true(arg("managed"))
    options = dict(
        package=PACKAGE,
        name="segmentation",
        namespace=arg("namespace"),
        parameters=parameters,
        remappings=[("image", arg("image"))],
        additional_env={"FASTDDS_DEFAULT_PROFILES_FILE": profile} if profile else None,
        output="screen",
        emulate_tty=True,
    )
    extras = [_rviz(arg("namespace"), overrides, arg("params_file"))] if _is_true(arg("rviz")) \
        else []
    if not managed:
        return [Node(executable="segmentation_node", **options), *extras]
    node = LifecycleNode(executable="segmentation_lifecycle_node", **options)
    actions: list = [node, *extras]
    if _is_true(arg("autostart")):
        def transition(transition_id: int) -> EmitEvent:
            return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                               transition_id=transition_id))

        actions += [
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, goal_state="inactive",
                entities=[transition(Transition.TRANSITION_ACTIVATE)])),
            transition(Transition.TRANSITION_CONFIGURE),
        ]
    return actions


def _rviz(namespace: str, overrides: dict, params_file: str) -> Node:
    """RViz 2 with a layout written for the node's cameras (the argument, else the file's)."""
    from seg_perception.rviz_config import write_rviz_layout

    cameras = overrides.get("cameras")
    if cameras is None:
        with open(params_file) as stream:
            for section in (yaml.safe_load(stream) or {}).values():
                cameras = (section or {}).get("ros__parameters", {}).get("cameras", cameras)
    layout = Path(tempfile.mkdtemp(prefix="seg_perception_rviz_")) / "segmentation.rviz"
    write_rviz_layout(layout, cameras or [""], namespace)
    return Node(package="rviz2", executable="rviz2", arguments=["-d", str(layout)],
                output="screen")


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="camera topic (sensor_msgs/Image) to segment"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="camera names, e.g. [front, left] (empty: from "
                                          "params_file)"),
        DeclareLaunchArgument("model", default_value="",
                              description="built-in model name or exported .pt file "
                                          "(empty: from params_file)"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto, cpu, cuda or cuda:N (empty: from params_file)"),
        DeclareLaunchArgument("num_threads", default_value="",
                              description="CPU threads for inference, 0: the libraries' "
                                          "defaults (empty: from params_file)"),
        DeclareLaunchArgument("params_file",
                              default_value=os.path.join(share, "config", "segmentation.yaml"),
                              description="node parameters (YAML, /** ros__parameters)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its topics"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="true: the managed (lifecycle) node"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="with managed: configure and activate at once"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="true: also RViz 2 with a layout for the cameras"),
        DeclareLaunchArgument("fastdds_profile",
                              default_value=os.path.join(share, "config", "fastdds_shm.xml"),
                              description="Fast DDS XML profile for the node (empty: the "
                                          "node's own choice)"),
        OpaqueFunction(function=_segmentation_node),
    ])
