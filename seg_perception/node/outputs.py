"""A camera's outputs: the publishers, which images anyone wants, and publishing a frame.

Every output carries the input frame's header. The decision goes first (planners wait on it),
then the label map, then the confidence and the images for people, each image only while
someone subscribes.
"""

from __future__ import annotations

from typing import Any

from geometry_msgs.msg import Point, PointStamped, Pose
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, ColorRGBA, Float32, Header
from visualization_msgs.msg import Marker

from seg_perception import topics
from seg_perception.core.frame import FrameResult, LeadVehicle
from seg_perception.core.image_codec import ImageMessageWriter
from seg_perception.core.pipeline import OutputRequest
from seg_perception.node.params import NodeSettings

try:  # optional: LabelInfo needs vision_msgs
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:  # pragma: no cover - depends on the ROS install
    LabelInfo = VisionClass = None

__all__ = ["CameraOutputs"]

_MARKER_NAMESPACE = "lead_vehicle"


class CameraOutputs:
    """The publishers of one camera (topic names under its prefix)."""

    def __init__(self, node: Any, camera: str, reliability: str, depth: int) -> None:
        profile = topics.stream_profile(reliability, depth)
        self.node = node

        def publisher(msg_type: type, name: str, qos: Any = profile) -> Any:
            return node.create_publisher(msg_type, topics.camera_topic(camera, name), qos)

        self.vehicle_ahead = publisher(Bool, topics.VEHICLE_AHEAD)
        self.coverage = publisher(Float32, topics.COVERAGE)
        self.lead = publisher(PointStamped, topics.LEAD)
        self.marker = publisher(Marker, topics.LEAD_MARKER)
        self.label_map = publisher(Image, topics.LABEL_MAP)
        self.confidence = publisher(Image, topics.CONFIDENCE)
        self.color_mask = publisher(Image, topics.COLOR_MASK)
        self.overlay = publisher(Image, topics.OVERLAY)
        self.label_info = (publisher(LabelInfo, topics.LABEL_INFO, topics.latched_profile())
                           if LabelInfo is not None else None)
        self._publishers = [self.vehicle_ahead, self.coverage, self.lead, self.marker,
                            self.label_map, self.confidence, self.color_mask, self.overlay,
                            self.label_info]
        # One reused message per image output (published before it is reused).
        self._writers = {pub: ImageMessageWriter(Image) for pub in
                         (self.label_map, self.confidence, self.color_mask, self.overlay)}
        self._marker_shown = False
        self._label_info: tuple[tuple[str, ...], str] | None = None

    def request(self, settings: NodeSettings) -> OutputRequest:
        """The optional outputs that someone subscribes to, with the camera's settings."""
        return OutputRequest(
            color_mask=self.color_mask.get_subscription_count() > 0,
            overlay_alpha=(settings.overlay_alpha if self.overlay.get_subscription_count() > 0
                           else None),
            confidence=self.confidence.get_subscription_count() > 0,
            min_confidence=settings.min_confidence)

    def publish(self, header: Header, result: FrameResult) -> None:
        """A frame's outputs, each with the input's header."""
        if result.vehicle is not None:
            self.vehicle_ahead.publish(Bool(data=bool(result.vehicle.vehicle_ahead)))
            self.coverage.publish(Float32(data=float(result.vehicle.coverage)))
        self._publish_lead(header, result.lead)
        if self.label_map.get_subscription_count():
            self._image(self.label_map, header, result.label_map, "mono8")
        if result.confidence is not None:
            self._image(self.confidence, header, result.confidence, "mono8")
        if result.color_mask is not None:
            self._image(self.color_mask, header, result.color_mask, "rgb8")
        if result.overlay is not None:
            self._image(self.overlay, header, result.overlay, "rgb8")

    def _image(self, publisher: Any, header: Header, pixels: Any, encoding: str) -> None:
        publisher.publish(self._writers[publisher](pixels, encoding, header))

    def _publish_lead(self, header: Header, lead: LeadVehicle | None) -> None:
        """The lead point (only when there is one) and its RViz marker (removed when not)."""
        if lead is not None:
            x, y, z = lead.point
            self.lead.publish(PointStamped(header=header, point=Point(x=x, y=y, z=z)))
            marker = Marker(header=header, ns=_MARKER_NAMESPACE, id=0, type=Marker.SPHERE,
                            action=Marker.ADD, pose=_pose_at(x, y, z),
                            color=ColorRGBA(r=1.0, g=1.0, b=0.0, a=0.9))
            marker.scale.x = marker.scale.y = marker.scale.z = 0.6
            self.marker.publish(marker)
            self._marker_shown = True
        elif self._marker_shown:
            self.marker.publish(Marker(header=header, ns=_MARKER_NAMESPACE, id=0,
                                       action=Marker.DELETE))
            self._marker_shown = False

    def publish_label_info(self, class_names: tuple[str, ...], frame_id: str = "") -> None:
        """The model's classes, latched (vision_msgs/LabelInfo, when installed); again when
        the classes or the camera's frame_id change."""
        if self.label_info is None or self._label_info == (class_names, frame_id):
            return
        self._label_info = (class_names, frame_id)
        header = Header(stamp=self.node.get_clock().now().to_msg(), frame_id=frame_id)
        classes = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(class_names)]
        self.label_info.publish(LabelInfo(header=header, class_map=classes, threshold=0.0))

    def destroy(self) -> None:
        for publisher in self._publishers:
            if publisher is not None:
                self.node.destroy_publisher(publisher)
        self._publishers = []


def _pose_at(x: float, y: float, z: float) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = x, y, z
    pose.orientation.w = 1.0
    return pose
