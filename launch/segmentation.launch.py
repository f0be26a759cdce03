"""Launch the seg_perception segmentation node, plain or managed (lifecycle).

    ros2 launch seg_perception segmentation.launch.py image:=/camera/image_raw
    ros2 launch seg_perception segmentation.launch.py image:=/cam/image model:=espnet-camvid \
        device:=cuda namespace:=front params_file:=/path/to/my.yaml num_threads:=1
    ros2 launch seg_perception segmentation.launch.py cameras:="[front, left, rear]"
    ros2 launch seg_perception segmentation.launch.py managed:=true autostart:=false

Arguments: image (the camera topic, remapped onto the node's `image`; the node's
`camera_info` is remapped to its sibling as image_transport does, /camera/image_raw ->
/camera/camera_info, and with input_transport=compressed the node reads `<image>/compressed`;
with several cameras each camera c reads `c/image` and `c/camera_info`, remap those in your own
launch file), cameras (a list, or one name), model, device and num_threads (each overrides the
parameter file when not empty), params_file (default: the package's config/segmentation.yaml),
namespace, managed (true: segmentation_lifecycle_node, a managed node), autostart (with
managed: configure and activate it once at start; later transitions are the user's; false:
leave it unconfigured for a lifecycle manager such as Nav2's), rviz (true: also start RViz 2
with a layout for the node's cameras: one overlay and lead-vehicle marker each; without rviz2
installed: a warning, the node alone), fastdds_profile (the Fast DDS XML profile for the node's
process; auto, the default: the node's own choice, FASTDDS_DEFAULT_PROFILES_FILE when set, else
the shipped config/fastdds_shm.xml).
"""

import os
import posixpath
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
TYPED = ("num_threads", "cameras")  # read as YAML; model and device stay strings
AUTO_PROFILE = ("", "auto")  # fastdds_profile: the node's own choice (":=" cannot pass "")


def _is_true(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def _segmentation_node(context: LaunchContext) -> list:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    parameters: list = [arg("params_file")]
    # num_threads and cameras as the YAML of a parameter file reads them: "1" is an int,
    # "[a, b]" a list; a single camera name is a list of one.
    overrides = {name: yaml.safe_load(arg(name)) if name in TYPED else arg(name)
                 for name in OVERRIDES if arg(name)}
    if isinstance(overrides.get("cameras"), str):
        overrides["cameras"] = [overrides["cameras"]]
    if overrides:
        parameters.append(overrides)
    profile = arg("fastdds_profile")
    managed = _is_true(arg("managed"))
    image = arg("image")
    options = dict(
        package=PACKAGE,
        name="segmentation",
        namespace=arg("namespace"),
        parameters=parameters,
        # camera_info beside the image, as camera drivers and image_transport place it.
        remappings=[("image", image), ("image/compressed", image + "/compressed"),
                    ("camera_info", posixpath.join(posixpath.dirname(image), "camera_info"))],
        additional_env=None if profile.lower() in AUTO_PROFILE
        else {"FASTDDS_DEFAULT_PROFILES_FILE": profile},
        output="screen",
        emulate_tty=True,
    )
    extras = _rviz(arg("namespace"), overrides, arg("params_file")) if _is_true(arg("rviz")) \
        else []
    if not managed:
        return [Node(executable="segmentation_node", **options), *extras]
    node = LifecycleNode(executable="segmentation_lifecycle_node", **options)
    actions: list = [node, *extras]
    if _is_true(arg("autostart")):
        def transition(transition_id: int) -> EmitEvent:
            return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                               transition_id=transition_id))

        # Only the start-up configure leads to activate: a user's (or a manager's) later
        # deactivate also ends in inactive and must stay there.
        actions += [
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
                entities=[transition(Transition.TRANSITION_ACTIVATE)], handle_once=True)),
            transition(Transition.TRANSITION_CONFIGURE),
        ]
    return actions


def _rviz(namespace: str, overrides: dict, params_file: str) -> list:
    """RViz 2 with a layout written for the node's cameras (the argument, else the file's).

    Without rviz2 installed: a warning and no RViz (rviz2's own "package not found" error
    would end the launch and leave the already started node running on its own)."""
    from seg_perception.rviz_config import write_rviz_layout

    try:
        get_package_share_directory("rviz2")
    except LookupError:  # ament_index_python's PackageNotFoundError
        from launch.logging import get_logger

        get_logger("launch").warning("rviz:=true but the package rviz2 is not installed "
                                     "(apt install ros-$ROS_DISTRO-rviz2): no RViz")
        return []
    cameras = overrides.get("cameras")
    if cameras is None:
        with open(params_file) as stream:
            for section in (yaml.safe_load(stream) or {}).values():
                cameras = (section or {}).get("ros__parameters", {}).get("cameras", cameras)
    layout = Path(tempfile.mkdtemp(prefix="seg_perception_rviz_")) / "segmentation.rviz"
    write_rviz_layout(layout, cameras or [""], namespace)
    return [Node(package="rviz2", executable="rviz2", arguments=["-d", str(layout)],
                 output="screen")]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="camera topic (sensor_msgs/Image) to segment"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="camera names, e.g. [front, left] or front "
                                          "(empty: from params_file)"),
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
                              description="with managed: configure and activate once at "
                                          "start"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="true: also RViz 2 with a layout for the cameras"),
        DeclareLaunchArgument("fastdds_profile", default_value="auto",
                              description="Fast DDS XML profile for the node (auto: "
                                          "FASTDDS_DEFAULT_PROFILES_FILE when set, else "
                                          "the shipped config/fastdds_shm.xml)"),
        OpaqueFunction(function=_segmentation_node),
    ])
