"""What the planner is told, drawn on the overlay: the corridor, the decision, the lead.

A person watching ``segmentation/overlay`` in RViz sees the corridor outline (green while
clear, red with a vehicle ahead), the decision with its coverage, and the lead vehicle's
ground-contact point with its range when the camera is calibrated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from seg_perception.core.corridor import Corridor
from seg_perception.core.vehicle_ahead import VehicleAheadResult

if TYPE_CHECKING:
    from seg_perception.core.frame import LeadVehicle

CLEAR_RGB = (0, 230, 0)
VEHICLE_RGB = (255, 32, 32)
LEAD_RGB = (255, 255, 0)


def draw_decision(overlay: np.ndarray, corridor: Corridor | None,
                  vehicle: VehicleAheadResult | None, lead: LeadVehicle | None) -> None:
    """Draw on ``overlay`` (HxWx3 uint8 RGB) in place; lines scale with the image size."""
    if corridor is None or vehicle is None:
        return
    height, width = overlay.shape[:2]
    thickness = max(1, round(min(height, width) / 240))
    colour = VEHICLE_RGB if vehicle.vehicle_ahead else CLEAR_RGB
    outline = np.array([[round(x * (width - 1)), round(y * (height - 1))]
                        for x, y in corridor.vertices], np.int32)
    cv2.polylines(overlay, [outline], isClosed=True, color=colour, thickness=thickness,
                  lineType=cv2.LINE_AA)
    text = ("VEHICLE AHEAD" if vehicle.vehicle_ahead else "clear") + \
        f"  {100 * vehicle.coverage:.0f}%"
    if lead is not None:
        text += f"  lead {lead.range_m:.1f} m"
    scale = thickness * 0.5
    top = outline[:, 1].min()
    origin = (int(outline[:, 0].min()), int(max(top - 4 * thickness, 12 * thickness)))
    cv2.putText(overlay, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                max(1, thickness // 2 + 1), cv2.LINE_AA)
    if lead is not None:
        centre = (round(lead.pixel[0]), round(lead.pixel[1]) - 1)
        cv2.circle(overlay, centre, 3 * thickness, LEAD_RGB, -1, cv2.LINE_AA)
