#!/usr/bin/env python3
"""Start-up time of the node: from starting the process to the first ``vehicle_ahead``.

A camera stand-in publishes a dash-cam still at 10 Hz from the start; the time is taken when
the first decision arrives in this process. Measured with the model already in the cache
(a usual start) and with an empty cache (the first start, which exports the built-in model).

    python scripts/startup_time.py                   # default model, 3 warm starts + 1 cold
    python scripts/startup_time.py --model espnet-camvid --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

from seg_perception import topics
from seg_perception.core.image_codec import encode_image
from seg_perception.shared_data import dashcam_stills, use_shared_torch_home
from seg_perception.tools.frame_publisher import FramePublisher, Outgoing
from seg_perception.tools.rosgraph import ChildProcess, RosNode, node_command, ros_env


def one_start(model: str, cache: Path | None, workdir: Path) -> float:
    """Seconds from starting the node to the first vehicle_ahead it publishes."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool

    env = ros_env()
    if cache is not None:
        env["SEG_PERCEPTION_CACHE"] = str(cache)
    ros = RosNode("startup_probe", domain_id=int(env["ROS_DOMAIN_ID"]))
    first: list[float] = []
    ros.node.create_subscription(Bool, topics.VEHICLE_AHEAD,
                                 lambda msg: first.append(time.monotonic()),
                                 topics.stream_profile("reliable", 10))
    rgb = cv2.cvtColor(cv2.imread(str(dashcam_stills()[0])), cv2.COLOR_BGR2RGB)
    height, width, step, data = encode_image(rgb, "rgb8")
    frame = Image(height=height, width=width, encoding="rgb8", step=step, data=data)
    publisher = FramePublisher(ros, topics.IMAGE, Image)
    started = time.monotonic()
    node = ChildProcess(node_command("-p", f"model:={model}"), workdir / "node.log", env)
    try:
        while not first:  # a frame every 0.1 s until the first decision is back
            publisher.run([Outgoing(frame)])
            ros.spin_for(0.1)
            if node.poll() is not None:
                raise RuntimeError(f"the node exited:\n{node.tail()}")
            if time.monotonic() - started > 300:
                raise RuntimeError("no vehicle_ahead within 300 s")
        return first[0] - started
    finally:
        node.stop()
        ros.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="espnet-cityscapes")
    parser.add_argument("--runs", type=int, default=3, help="warm starts (default 3)")
    args = parser.parse_args()
    use_shared_torch_home()
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        work = Path(tmp)
        cold = one_start(args.model, work / "empty-cache", work)
        warm = [one_start(args.model, None, work) for _ in range(args.runs)]
    print(f"{args.model}: first start (empty cache, exports the model) {cold:.1f} s; "
          f"usual start (cached) median {statistics.median(warm):.1f} s "
          f"(runs: {', '.join(f'{w:.1f}' for w in warm)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
