"""The benchmark's input: real dash-cam frames at each size, as messages (ROS types when
they are importable, stand-ins with the same fields otherwise)."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from seg_perception.core.image_codec import encode_image
from seg_perception.shared_data import dashcam_video

Size = tuple[int, int]  # (W, H)
DISTINCT_FRAMES = 12  # frames the DDS publisher cycles through


def load_frames(sizes: Iterable[Size], count: int) -> dict[Size, list[np.ndarray]]:
    """``count`` RGB frames of the shared dash-cam video at each (W, H), identical for all.

    The video has 38 frames; more are taken by starting over. Down-scaling uses area
    averaging, up-scaling bilinear, once, before any timing.
    """
    capture = cv2.VideoCapture(str(dashcam_video()))
    originals = []
    while len(originals) < count:
        ok, bgr = capture.read()
        if not ok:
            if not originals:
                raise ValueError(f"cannot read frames from {dashcam_video()}")
            break
        originals.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    frames = {}
    for width, height in sizes:
        resized = []
        for index in range(count):
            rgb = originals[index % len(originals)]
            if rgb.shape[:2] != (height, width):
                shrink = width * height < rgb.shape[0] * rgb.shape[1]
                rgb = cv2.resize(rgb, (width, height),
                                 interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            resized.append(rgb)
        frames[(width, height)] = resized
    return frames


def image_fields(pixels: np.ndarray, encoding: str) -> dict[str, Any]:
    """The fields of a sensor_msgs/Image holding its own copy of ``pixels``."""
    height, width, step, data = encode_image(pixels, encoding)
    return dict(height=height, width=width, encoding=encoding, is_bigendian=0, step=step,
                data=data)


def image_type() -> Any:
    """sensor_msgs/Image when ROS messages are importable, else None."""
    try:
        from sensor_msgs.msg import Image
    except ImportError:
        return None
    return Image


def make_image(pixels: np.ndarray, encoding: str, header: Any = None) -> Any:
    """A sensor_msgs/Image with its own copy of the pixels (the benchmark's input frames, and
    the naive pipeline's outputs, built the usual way)."""
    fields = image_fields(pixels, encoding)
    msg_type = image_type()
    if msg_type is None:
        return SimpleNamespace(header=header, **fields)
    return msg_type(**fields) if header is None else msg_type(header=header, **fields)


def header(index: int) -> Any:
    """A header stamped ``index`` seconds (frame_id camera)."""
    try:
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header
    except ImportError:
        return SimpleNamespace(stamp=SimpleNamespace(sec=index, nanosec=0), frame_id="camera")
    return Header(stamp=Time(sec=index, nanosec=0), frame_id="camera")


def size_text(size: Size) -> str:
    return f"{size[0]}x{size[1]}"
