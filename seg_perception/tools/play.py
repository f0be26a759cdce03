"""``seg-perception play``: a camera stand-in that publishes a video, folder, image or bag.

The player is its own ROS process on purpose: the node under test then receives images the
way it does from a real camera driver (across processes, over DDS), QoS and all.

Large best-effort images are lost between processes with Fast DDS's default transports;
the package's Fast DDS profile (a big shared-memory segment) fixes that, and it is the
*publisher's* process that must load it. So :func:`use_fastdds_profile` puts it into this
process's environment before rclpy is imported or initialised (rclpy is only imported inside
:func:`run`), unless the user already chose a profile.

Several sources at once (``front=video.mp4 left=stills/``) are several cameras of one robot:
one node, one publisher per camera on ``NAME/image``, each at its own source's pacing in a
thread of its own, so a multi-camera node can be fed from one command.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seg_perception import topics
from seg_perception.checks import number_type

if TYPE_CHECKING:
    from seg_perception.sources import FrameSource
    from seg_perception.tools.frame_publisher import FramePublisher, Outgoing

log = logging.getLogger(__name__)

HELP = "publish a video, image folder, image or rosbag2 bag as sensor_msgs/Image"
EPILOG = """examples:
  seg-perception play ../shared/data/dashcam/highway_720p.mp4 --loop        # 25 Hz, forever
  seg-perception play ../shared/data/dashcam/stills --rate 2 --loop --frame-id dashcam
  seg-perception play recording/ --keep-stamps               # a rosbag2 bag, its own timing
  seg-perception play recording.mcap --bag-topic /cam/image_raw/compressed --rate 5
  seg-perception play video.mp4 --reliability best_effort --resize 640x360 --count 100
  seg-perception play video.mp4 --wait-subscribers 1 --lockstep segmentation/label_map
  seg-perception play front=video.mp4 left=stills/ rear=bag/ --loop    # three cameras

Publishes on 'image' (relative: follows ROS_NAMESPACE / the node's namespace; --topic
changes it) as node 'seg_perception_player_<pid>' (--node-name changes it). Stamps are the
time of publishing unless --keep-stamps (bags). When the package's Fast DDS profile
(config/fastdds_shm.xml) is found it is loaded for this process unless
FASTDDS_DEFAULT_PROFILES_FILE is already set: with it, best-effort 720p images arrive intact
on the same host.

Several cameras (NAME=SOURCE ...): camera NAME publishes on NAME/image (NAME/<--topic>),
frame_id NAME unless the bag has one or --frame-id is given, at its own source's pacing;
--lockstep waits on NAME/<TOPIC> for each camera's own frames; the other options apply to
every camera; output lines start with 'NAME: '.
"""

NODE_NAME = "seg_perception_player"
FINISH_TIMEOUT_S = 5.0  # at the end: how long reliable subscribers may take to acknowledge
CAMERA_SOURCE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)=(.+)$")  # NAME=SOURCE
_output_lock = threading.Lock()  # whole lines on stdout from the cameras' threads


@dataclass
class Camera:
    """One source played on one topic: the whole player, or one camera of several."""

    name: str  # "" in the single-source form: no prefix anywhere
    source: FrameSource
    publisher: FramePublisher | None = None
    size: str = "?"  # WxH once a frame was made

    def topic(self, name: str) -> str:
        """``name`` for this camera (relative names get its prefix)."""
        return name if name.startswith("/") else topics.camera_topic(self.name, name)

    def say(self, text: str) -> None:
        """One line on stdout, the camera's name first when there are several."""
        with _output_lock:
            sys.stdout.write(f"{self.name}: {text}\n" if self.name else f"{text}\n")
            sys.stdout.flush()


def camera_sources(sources: list[str]) -> list[tuple[str, str]]:
    """(camera name, source) pairs: ``[("", SOURCE)]`` for one plain source (an existing
    path is never read as NAME=SOURCE), else one camera per NAME=SOURCE."""
    from seg_perception.errors import UsageError

    if len(sources) == 1 and (Path(sources[0]).exists() or not CAMERA_SOURCE.match(sources[0])):
        return [("", sources[0])]
    pairs = []
    for text in sources:
        match = CAMERA_SOURCE.match(text)
        if match is None:
            raise UsageError(f"several sources need a camera name each (NAME=SOURCE, NAME of "
                             f"letters, digits and underscores): {text!r}")
        pairs.append((match[1], match[2]))
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise UsageError(f"camera names must be unique, got {', '.join(names)}")
    return pairs


def _messages(camera: Camera, args: argparse.Namespace) -> Iterator[Outgoing]:
    """The camera's frames as Image messages at its source's times (sets ``camera.size``)."""
    import cv2
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from seg_perception.core.image_codec import encode_image
    from seg_perception.tools.frame_publisher import Outgoing

    frames = camera.source.frames(loop=args.loop)
    for frame in islice(frames, args.count) if args.count else frames:
        pixels = frame.pixels_rgb
        if args.encoding == "bgr8":
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        height, width, step, data = encode_image(pixels, args.encoding)
        camera.size = f"{width}x{height}"
        frame_id = args.frame_id or frame.frame_id or camera.name or "camera"
        # All fields in the constructor: assigning .data afterwards can cost 100x more.
        msg = Image(header=Header(frame_id=frame_id),
                    height=height, width=width, encoding=args.encoding, is_bigendian=0,
                    step=step, data=data)
        stamp = frame.stamp_ns if args.keep_stamps else None
        yield Outgoing(msg, frame.time_s, stamp, tag=frame)


def _play(camera: Camera, args: argparse.Namespace) -> None:
    """Publish the camera's frames; the summary counts what its publisher's log saw."""
    current: list[Any] = [None]  # the frame just sent
    publisher, camera_text = camera.publisher, f"camera {camera.name}: " if camera.name else ""

    def sent(item: Outgoing, stamp: int) -> None:
        current[0] = frame = item.tag
        if args.print_frames:
            sec, nanosec = divmod(stamp, 1_000_000_000)
            camera.say(f"frame {frame.index} stamp {sec}.{nanosec:09d} {frame.name or ''}"
                       .rstrip())

    def settled(index: int, stamp: int, came_back: bool) -> bool:
        if not came_back:
            log.warning("%sno output for frame %d within %g s (--lockstep-timeout)",
                        camera_text, current[0].index, args.lockstep_timeout)
        return True

    publisher.run(_messages(camera, args), max_lag_s=1.0 / camera.source.rate,
                  lockstep_timeout=args.lockstep_timeout, on_sent=sent, between=settled)
    if not publisher.log.interrupted and not publisher.finish(FINISH_TIMEOUT_S):
        log.warning("%snot every subscriber acknowledged the last frames within %g s",
                    camera_text, FINISH_TIMEOUT_S)


def _play_all(cameras: list[Camera], args: argparse.Namespace) -> None:
    """One camera here; several in threads of their own, each at its own pacing."""
    if len(cameras) == 1:
        _play(cameras[0], args)
        return
    failures: list[BaseException] = []

    def play(camera: Camera) -> None:
        try:
            _play(camera, args)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=play, args=(camera,), name=f"play-{camera.name}",
                                daemon=True) for camera in cameras]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.2)  # short waits: signals reach the main thread meanwhile
    if failures:
        raise failures[0]


def _summary(camera: Camera, args: argparse.Namespace, lockstep: bool) -> str:
    publisher, source, s = camera.publisher, camera.source, camera.publisher.log
    text = (f"published {len(s.sent)} frames on {publisher.topic} ({camera.size} "
            f"{args.encoding}, {args.reliability}) at {s.achieved_hz():.1f} Hz achieved")
    if lockstep:
        text += (f" (lockstep, at most {source.rate:g} Hz): {s.echoed}/{len(s.sent)} "
                 "outputs came back")
    else:
        text += f" (target {source.rate:g} Hz" + (f", {s.late} late)" if s.late else ")")
    if s.interrupted:
        text += "; interrupted"
    return text


# --- CLI -------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    from seg_perception.tools.common import parse_size  # imports torch: only when used

    return parse_size(text)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="+", metavar="SOURCE",
                        help="video file, image folder, image, or rosbag2 bag (folder/.mcap/.db3);"
                        " or several cameras at once, each as NAME=SOURCE")
    out = parser.add_argument_group("output")
    out.add_argument("--topic", default=topics.IMAGE, help="topic to publish on (default: image)")
    out.add_argument("--node-name", help="ROS node name (default: seg_perception_player_<pid>, "
                     "unique per process)")
    out.add_argument("--frame-id",
                     help="header frame_id (default: the bag's, else 'camera')")
    out.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8",
                     help="image encoding (default rgb8)")
    out.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable",
                     help="publisher reliability (default reliable; the node matches either)")
    out.add_argument("--depth", type=int, default=5, help="publisher queue depth (default 5)")
    out.add_argument("--keep-stamps", action="store_true",
                     help="bags: publish the recorded header stamps instead of now")
    src = parser.add_argument_group("source")
    src.add_argument("--bag-topic", help="bags: image topic to play (default: the first one)")
    src.add_argument("--rate", type=_positive_float,
                     help="frames per second (default: the video's fps, the bag's timing, "
                     "10 for images)")
    src.add_argument("--loop", action="store_true", help="start over at the end, forever")
    src.add_argument("--resize", type=_size, metavar="WxH", help="resize frames first")
    src.add_argument("--count", type=int, default=0,
                     help="stop after N frames (default 0 = all; with --loop, forever)")
    sync = parser.add_argument_group("synchronisation")
    sync.add_argument("--start-delay", type=number_type(float, minimum=0), default=0.0,
                      metavar="S",
                      help="seconds to wait before the first frame")
    sync.add_argument("--wait-subscribers", type=number_type(int, minimum=0), default=0,
                      metavar="N",
                      help="wait until N subscribers are matched before the first frame")
    sync.add_argument("--wait-timeout", type=_positive_float, metavar="S",
                      help="fail if the waits above take longer (default: wait forever)")
    sync.add_argument("--lockstep", metavar="TOPIC",
                      help="after each frame, wait for an Image with its stamp on TOPIC "
                      "(e.g. segmentation/label_map): no frame is sent before the previous "
                      "one was processed, so a slow consumer loses nothing")
    sync.add_argument("--lockstep-timeout", type=_positive_float, default=10.0, metavar="S",
                      help="give up waiting for one frame's output after S s (default 10)")
    sync.add_argument("--print-frames", action="store_true",
                      help="print 'frame INDEX stamp SEC.NANOSEC NAME' per published frame")


def run(args: argparse.Namespace) -> int:
    from seg_perception.checks import check_ros_name
    from seg_perception.errors import UsageError
    from seg_perception.fastdds import use_fastdds_profile
    from seg_perception.sources import open_source

    if args.depth < 1:
        raise UsageError(f"--depth must be at least 1, not {args.depth}")
    if args.count < 0:
        raise UsageError(f"--count must be positive, not {args.count}")
    check_ros_name(args.topic, "--topic")
    if args.lockstep:
        check_ros_name(args.lockstep, "--lockstep")
    if args.node_name:
        check_ros_name(args.node_name, "--node-name", kind="node")
    cameras = [Camera(name, open_source(path, rate=args.rate, resize=args.resize,
                                        topic=args.bag_topic))
               for name, path in camera_sources(args.source)]
    profile = use_fastdds_profile()  # before rclpy exists in this process
    log.debug("Fast DDS profile: %s", profile or "none (default transports)")

    from sensor_msgs.msg import Image

    from seg_perception.tools.frame_publisher import FramePublisher
    from seg_perception.tools.rosgraph import RosNode, Stopped

    ros = None
    try:
        # SIGINT/SIGTERM only set a flag that every wait checks: a stop never lands in rclpy.
        # Several cameras publish from threads of their own: a thread spins the node.
        ros = RosNode(args.node_name or f"{NODE_NAME}_{os.getpid()}", handle_signals=True,
                      background=len(cameras) > 1)
        for camera in cameras:
            camera.publisher = FramePublisher(ros, camera.topic(args.topic), Image,
                                              args.reliability, args.depth)
            log.info("playing %s on %s", camera.source.description, camera.publisher.topic)
            if args.lockstep:
                camera.publisher.lockstep(camera.topic(args.lockstep), args.wait_timeout)
            if args.wait_subscribers > 0:
                log.info("waiting for %d subscriber(s) on %s", args.wait_subscribers,
                         camera.publisher.topic)
                camera.publisher.wait_for_subscribers(args.wait_subscribers, args.wait_timeout)
        if args.start_delay > 0:
            ros.spin_for(args.start_delay)
        _play_all(cameras, args)
    except (Stopped, KeyboardInterrupt):  # KeyboardInterrupt: Ctrl-C during start-up
        for camera in cameras:
            if camera.publisher is not None:
                camera.publisher.log.interrupted = True
    except TimeoutError as exc:
        print(f"seg-perception play: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for camera in cameras:
            if camera.publisher is not None:
                camera.say(_summary(camera, args, bool(args.lockstep)))
        if ros is not None:
            ros.close()
    return 0
