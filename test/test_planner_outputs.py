"""The outputs planners and Nav2 consume, checked over real DDS the way they consume them.

Nav2's semantic segmentation layer pairs the class mask with a pixel-aligned confidence image
by exact header stamp, and reads the class names; a planner reads the lead vehicle's point in
the camera frame, stamped with the frame it came from. The node runs espnet-camvid with a
min_confidence, a calibrated camera (camera_info from the test, a mounting height and pitch)
and a corridor around a real car, so every output has something to say.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from ros_helpers import launch_node, publish, raw_image
from test_node import _vehicle_box_corridor, of_batch, pixels

from seg_perception import topics
from seg_perception.core.labels import CAMVID
from seg_perception.core.pipeline import UNKNOWN_ID

pytestmark = pytest.mark.slow

MIN_CONFIDENCE = 0.6
WIDTH, HEIGHT, FOCAL = 1280, 720, 1000.0


@pytest.fixture(scope="module")
def planner(domain, workdir):
    node = launch_node(domain["env"], workdir, "planner", "-p", "model:=espnet-camvid",
                       "-p", f"min_confidence:={MIN_CONFIDENCE}", "-p", "camera_height:=1.4",
                       "-p", "camera_pitch:=0.03", "-p", "frames_on:=1")
    yield node
    assert node.process.stop() == 0


def camera_info():
    from sensor_msgs.msg import CameraInfo

    return CameraInfo(width=WIDTH, height=HEIGHT, distortion_model="plumb_bob",
                      d=[0.0] * 5, k=[FOCAL, 0.0, WIDTH / 2, 0.0, FOCAL, HEIGHT / 2, 0.0, 0.0, 1.0])


def test_label_map_and_confidence_pair_up_as_the_nav2_layer_reads_them(
        domain, workdir, probe, planner, dashcam_still):
    from sensor_msgs.msg import Image

    for name in (topics.LABEL_MAP, topics.CONFIDENCE):
        probe.record(planner.topic(name), Image)
    probe.wait_for(lambda: probe.node.get_publishers_info_by_topic(
        planner.topic(topics.CONFIDENCE)), 20.0, "the confidence publisher")
    time.sleep(1.0)
    frames = [raw_image(dashcam_still(name), "rgb8") for name in ("test1", "test4", "test6")]
    publish(domain["env"], workdir, planner, frames, name="nav")
    time.sleep(1.0)
    masks = {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec: m for m in
             of_batch(probe.messages(planner.topic(topics.LABEL_MAP)), "nav")}
    confidences = of_batch(probe.messages(planner.topic(topics.CONFIDENCE)), "nav")
    assert len(masks) == len(confidences) == 3
    for confidence in confidences:  # exact time sync: the same stamp, the same frame_id
        mask = masks[confidence.header.stamp.sec * 10**9 + confidence.header.stamp.nanosec]
        assert mask.header.frame_id == confidence.header.frame_id
        assert (confidence.encoding, confidence.height, confidence.width) == \
            ("mono8", mask.height, mask.width)
        labels, sure = pixels(mask), pixels(confidence)
        unknown = labels == UNKNOWN_ID
        assert 0.0 < unknown.mean() < 0.5  # min_confidence marks the unsure pixels
        assert sure[unknown].max() < round(MIN_CONFIDENCE * 255) + 1
        assert sure[~unknown].min() >= round(MIN_CONFIDENCE * 255) - 1
        assert labels[~unknown].max() < len(CAMVID.class_names)
    [class_names] = probe.get_parameters(planner.fqn, ["class_names"])
    assert tuple(class_names) == CAMVID.class_names  # what the ids in the mask mean


def test_the_lead_vehicle_is_stamped_and_ranged_in_the_camera_frame(
        domain, workdir, probe, planner, dashcam_still):
    from geometry_msgs.msg import PointStamped
    from sensor_msgs.msg import CameraInfo, Image
    from visualization_msgs.msg import Marker

    frame = raw_image(dashcam_still("test1"), "rgb8")
    probe.record(planner.topic(topics.LABEL_MAP), Image)
    publish(domain["env"], workdir, planner, [frame], name="look")
    [look] = of_batch(probe.messages(planner.topic(topics.LABEL_MAP)), "look")
    car = CAMVID.class_names.index("Car")
    corridor = _vehicle_box_corridor(pixels(look), [car])  # a corridor full of the car
    [result] = probe.set_parameters(planner.fqn, {"corridor": corridor})
    assert result.successful, result.reason

    info = probe.node.create_publisher(CameraInfo, planner.topic(topics.CAMERA_INFO),
                                       topics.stream_profile("reliable", 1))
    probe.wait_for(lambda: info.get_subscription_count() > 0, 20.0, "the camera_info reader")
    for _ in range(3):
        info.publish(camera_info())
        time.sleep(0.2)
    planner.process.wait_for_log("calibrated (1280x720, height 1.4 m", 20.0)
    for name, msg_type in ((topics.LEAD, PointStamped), (topics.LEAD_MARKER, Marker)):
        probe.record(planner.topic(name), msg_type)
    time.sleep(1.0)
    sent = publish(domain["env"], workdir, planner, [frame], name="lead", count=2).sent()
    time.sleep(1.0)
    leads = [m for m in probe.messages(planner.topic(topics.LEAD))
             if m.header.frame_id.startswith("lead")]
    assert len(leads) == 2, planner.log()
    for lead in leads:
        entry = sent[lead.header.frame_id]  # the header of the frame it was seen in
        assert (lead.header.stamp.sec, lead.header.stamp.nanosec) == (entry["sec"],
                                                                      entry["nanosec"])
        point = (lead.point.x, lead.point.y, lead.point.z)
        assert all(math.isfinite(v) for v in point)
        assert 2.0 < point[2] < 80.0 and abs(point[0]) < 10.0  # ahead, near the lane
    markers = [m for m in probe.messages(planner.topic(topics.LEAD_MARKER))
               if m.header.frame_id.startswith("lead")]
    assert markers and all(m.action == Marker.ADD for m in markers)
    assert np.allclose([markers[-1].pose.position.z], [leads[-1].point.z])
