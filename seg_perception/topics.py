"""Every topic name and QoS profile of the node, in one place.

Names are relative, so namespaces and remapping work; a camera's topics are these names under
its own prefix (:func:`camera_topic`). The node, the tools and the tests take them from here.
rclpy is imported only inside the profile functions, so a tool that only needs a name does not
load ROS.
"""

from __future__ import annotations

from typing import Any

NODE_NAME = "segmentation"

IMAGE = "image"  # sensor_msgs/Image in (input_transport raw)
COMPRESSED_IMAGE = "image/compressed"  # sensor_msgs/CompressedImage in (compressed)
LABEL_MAP = "segmentation/label_map"  # mono8 class ids
COLOR_MASK = "segmentation/color_mask"  # rgb8
CONFIDENCE = "segmentation/confidence"  # mono8, max class probability * 255
OVERLAY = "segmentation/overlay"  # rgb8
LABEL_INFO = "segmentation/label_info"  # vision_msgs/LabelInfo, transient local
VEHICLE_AHEAD = "vehicle_ahead"  # std_msgs/Bool
COVERAGE = "vehicle_ahead/coverage"  # std_msgs/Float32
LEAD = "vehicle_ahead/lead"  # geometry_msgs/PointStamped, camera optical frame
LEAD_MARKER = "vehicle_ahead/marker"  # visualization_msgs/Marker for RViz
CAMERA_INFO = "camera_info"  # sensor_msgs/CameraInfo in
DIAGNOSTICS = "/diagnostics"  # diagnostic_msgs/DiagnosticArray (absolute by convention)

IMAGE_OUTPUTS = (LABEL_MAP, COLOR_MASK, OVERLAY, CONFIDENCE)


def camera_topic(camera: str, name: str) -> str:
    """``name`` for camera ``camera`` (its prefix; "" is the single default camera)."""
    return f"{camera}/{name}" if camera else name


def reliability_policy(name: str) -> Any:
    """``"reliable"`` / ``"best_effort"`` -> the rclpy policy."""
    from rclpy.qos import ReliabilityPolicy

    return ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT


def reliability_name(policy: Any) -> str:
    from rclpy.qos import ReliabilityPolicy

    return "reliable" if policy == ReliabilityPolicy.RELIABLE else "best_effort"


def stream_profile(reliability: str, depth: int) -> Any:
    """Keep-last, volatile: camera input and per-frame outputs (a volatile subscription
    matches both volatile and transient-local publishers)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=reliability_policy(reliability),
                      durability=DurabilityPolicy.VOLATILE)


def camera_info_profile() -> Any:
    """Best effort, keep last 1: matches camera drivers whether they publish camera_info
    reliable or best effort (sensor-data QoS)."""
    return stream_profile("best_effort", 1)


def latched_profile() -> Any:
    """Reliable + transient local, depth 1: late subscribers get the last message (LabelInfo)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def publisher_reliabilities(node: Any, topic: str) -> list[tuple[bytes, str]]:
    """(gid, reliability) of every publisher on ``topic`` (a fully resolved name), sorted."""
    return sorted((bytes(info.endpoint_gid), reliability_name(info.qos_profile.reliability))
                  for info in node.get_publishers_info_by_topic(topic))


def offered_reliability(node: Any, topic: str) -> str | None:
    """What a subscriber should ask for to match every publisher of ``topic``: reliable if
    all of them are, best effort if any is not; None while there is no publisher."""
    found = [reliability for _, reliability in publisher_reliabilities(node, topic)]
    if not found:
        return None
    return "reliable" if all(r == "reliable" for r in found) else "best_effort"
