"""RViz 2 layouts for the node's cameras: one overlay per camera, and the lead-vehicle marker.

The shipped ``config/segmentation.rviz`` (one camera) and ``config/segmentation_cameras.rviz``
(front, left, right) are made by :func:`rviz_layout`, and the launch file writes one for the
camera list it starts (``rviz:=true``), so a layout always matches the topics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from seg_perception import topics

__all__ = ["rviz_layout", "write_rviz_layout"]


def _topic(namespace: str, camera: str, name: str) -> str:
    prefix = "/" + "/".join(part.strip("/") for part in (namespace, camera) if part.strip("/"))
    return f"{prefix.rstrip('/')}/{name}"


def _display(kind: str, name: str, topic: str, reliable: bool = True) -> dict[str, Any]:
    return {
        "Class": f"rviz_default_plugins/{kind}",
        "Enabled": True,
        "Name": name,
        "Topic": {"Depth": 1, "Durability Policy": "Volatile", "History Policy": "Keep Last",
                  "Reliability Policy": "Reliable" if reliable else "Best Effort",
                  "Value": topic},
        "Value": True,
    }


def rviz_layout(cameras: Sequence[str], namespace: str = "",
                fixed_frame: str = "camera") -> dict[str, Any]:
    """The layout for the node in ``namespace`` serving ``cameras`` ([""]: one camera at the
    node's own topics): each camera's overlay (the colour mask too for a single camera) and
    its lead-vehicle marker, shown in ``fixed_frame`` (the cameras' frame_id)."""
    displays = []
    for camera in cameras:
        title = camera or "camera"
        displays.append(_display("Image", f"Overlay {title}".strip(),
                                 _topic(namespace, camera, topics.OVERLAY)))
        if len(cameras) == 1:
            displays.append(_display("Image", "Colour mask",
                                     _topic(namespace, camera, topics.COLOR_MASK)))
        displays.append(_display("Marker", f"Lead vehicle {title}".strip(),
                                 _topic(namespace, camera, topics.LEAD_MARKER)))
    return {
        "Panels": [{"Class": "rviz_common/Displays", "Name": "Displays"}],
        "Visualization Manager": {
            "Class": "",
            "Displays": displays,
            "Enabled": True,
            "Global Options": {"Background Color": "48; 48; 48", "Fixed Frame": fixed_frame,
                               "Frame Rate": 30},
            "Name": "root",
            "Tools": [{"Class": "rviz_default_plugins/Interact",
                       "Hide Inactive Objects": True}],
            "Value": True,
            "Views": {"Current": {"Class": "rviz_default_plugins/Orbit",
                                  "Name": "Current View", "Target Frame": "<Fixed Frame>",
                                  "Value": "Orbit (rviz_default_plugins)"},
                      "Saved": None},
        },
        "Window Geometry": {"Height": 900, "Width": 1600, "X": 0, "Y": 0,
                            "Hide Left Dock": False, "Hide Right Dock": True},
    }


def write_rviz_layout(path: Path, cameras: Sequence[str], namespace: str = "",
                      header: str = "") -> Path:
    """Write :func:`rviz_layout` as an .rviz file (YAML), with ``header`` comment lines."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path.write_text(comment + yaml.safe_dump(rviz_layout(cameras, namespace), sort_keys=False))
    return path
