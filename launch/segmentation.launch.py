"""Launch the seg_perception segmentation node.

    ros2 launch seg_perception segmentation.launch.py image:=/camera/image_raw
    ros2 launch seg_perception segmentation.launch.py image:=/cam/image model:=espnet-camvid \
        device:=cuda namespace:=front params_file:=/path/to/my.yaml

Arguments: image (the camera topic, remapped onto the node's `image`; with
input_transport=compressed the node reads `<image>/compressed`), model and device (override the
parameter file when not empty), params_file (default: the package's config/segmentation.yaml),
namespace, fastdds_profile (the Fast DDS XML profile for the node's process; empty: none).

The node runs with FASTDDS_DEFAULT_PROFILES_FILE pointing at the shipped config/fastdds_shm.xml:
a large shared-memory segment that lets camera-sized images (its outputs) reach best-effort
subscribers in other processes. Camera drivers and bag players should load the same profile.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "seg_perception"


def _segmentation_node(context: LaunchContext) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    parameters: list = [arg("params_file")]
    overrides = {name: arg(name) for name in ("model", "device") if arg(name)}
    if overrides:
        parameters.append(overrides)
    profile = arg("fastdds_profile")
    return [
        Node(
            package=PACKAGE,
            executable="segmentation_node",
            name="segmentation",
            namespace=arg("namespace"),
            parameters=parameters,
            remappings=[("image", arg("image"))],
            additional_env={"FASTDDS_DEFAULT_PROFILES_FILE": profile} if profile else None,
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="camera topic (sensor_msgs/Image) to segment"),
        DeclareLaunchArgument("model", default_value="",
                              description="built-in model name or exported .pt file "
                                          "(empty: from params_file)"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto, cpu, cuda or cuda:N (empty: from params_file)"),
        DeclareLaunchArgument("params_file",
                              default_value=os.path.join(share, "config", "segmentation.yaml"),
                              description="node parameters (YAML, /** ros__parameters)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its topics"),
        DeclareLaunchArgument("fastdds_profile",
                              default_value=os.path.join(share, "config", "fastdds_shm.xml"),
                              description="Fast DDS XML profile for the node (empty: none)"),
        OpaqueFunction(function=_segmentation_node),
    ])
