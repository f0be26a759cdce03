"""A camera's outputs: the publishers, which images anyone wants, and publishing a frame.

Every output carries the input frame's header. The decision goes first (planners wait on it),
then the label map, then the images for people, each image only while someone subscribes.
"""

from __future__ import annotations

from typing import Any

from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Float32, Header

from seg_perception import topics
from seg_perception.core.frame import FrameResult, OutputRequest
from seg_perception.core.image_codec import ImageMessageWriter

try:  # optional: LabelInfo needs vision_msgs
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:  # pragma: no cover - depends on the ROS install
    LabelInfo = VisionClass = None

__all__ = ["CameraOutputs"]


class CameraOutputs:
    """The publishers of one camera (topic names under its prefix)."""

    def __init__(self, node: Any, camera: str, reliability: str, depth: int) -> None:
        profile = topics.stream_profile(reliability, depth)
        self.node = node

        def publisher(msg_type: type, name: str, qos: Any = profile) -> Any:
            return node.create_publisher(msg_type, topics.camera_topic(camera, name), qos)

        self.vehicle_ahead = publisher(Bool, topics.VEHICLE_AHEAD)
        self.coverage = publisher(Float32, topics.COVERAGE)
        self.label_map = publisher(Image, topics.LABEL_MAP)
        self.color_mask = publisher(Image, topics.COLOR_MASK)
        self.overlay = publisher(Image, topics.OVERLAY)
        self.label_info = (publisher(LabelInfo, topics.LABEL_INFO, topics.latched_profile())
                           if LabelInfo is not None else None)
        self._publishers = [self.vehicle_ahead, self.coverage, self.label_map, self.color_mask,
                            self.overlay, self.label_info]
        # One reused message per image output (published before it is reused).
        self._writers = {pub: ImageMessageWriter(Image)
                         for pub in (self.label_map, self.color_mask, self.overlay)}

    def request(self, overlay_alpha: float) -> OutputRequest:
        """The optional images that someone subscribes to."""
        return OutputRequest(
            color_mask=self.color_mask.get_subscription_count() > 0,
            overlay_alpha=overlay_alpha if self.overlay.get_subscription_count() > 0 else None)

    def publish(self, header: Header, result: FrameResult) -> None:
        """A frame's outputs, each with the input's header."""
        self.vehicle_ahead.publish(Bool(data=bool(result.vehicle.vehicle_ahead)))
        self.coverage.publish(Float32(data=float(result.vehicle.coverage)))
        if self.label_map.get_subscription_count():
            self._image(self.label_map, header, result.label_map, "mono8")
        if result.color_mask is not None:
            self._image(self.color_mask, header, result.color_mask, "rgb8")
        if result.overlay is not None:
            self._image(self.overlay, header, result.overlay, "rgb8")

    def _image(self, publisher: Any, header: Header, pixels: Any, encoding: str) -> None:
        publisher.publish(self._writers[publisher](pixels, encoding, header))

    def publish_label_info(self, class_names: tuple[str, ...], frame_id: str = "") -> None:
        """The model's classes, latched (vision_msgs/LabelInfo, when installed)."""
        if self.label_info is None:
            return
        header = Header(stamp=self.node.get_clock().now().to_msg(), frame_id=frame_id)
        classes = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(class_names)]
        self.label_info.publish(LabelInfo(header=header, class_map=classes, threshold=0.0))

    def destroy(self) -> None:
        for publisher in self._publishers:
            if publisher is not None:
                self.node.destroy_publisher(publisher)
        self._publishers = []
