"""``seg-perception play``: a camera stand-in that publishes a video, folder, image or bag.

The player is its own ROS process on purpose: the node under test then receives images the
way it does from a real camera driver (across processes, over DDS), QoS and all.

Large best-effort images are lost between processes with Fast DDS's default transports;
the package's Fast DDS profile (a big shared-memory segment) fixes that, and it is the
*publisher's* process that must load it. So :func:`use_fastdds_profile` puts it into this
process's environment before rclpy is imported or initialised (rclpy is only imported inside
:func:`run`), unless the user already chose a profile.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2

from seg_perception.core.image_codec import encode_image
from seg_perception.fastdds import use_fastdds_profile
from seg_perception.sources import Frame, FrameSource, open_source
from seg_perception.tools.common import parse_size

if TYPE_CHECKING:
    from rclpy.node import Node
    from rclpy.qos import QoSProfile

log = logging.getLogger(__name__)

HELP = "publish a video, image folder, image or rosbag2 bag as sensor_msgs/Image"
EPILOG = """examples:
  seg-perception play ../shared/data/dashcam/highway_720p.mp4 --loop        # 25 Hz, forever
  seg-perception play ../shared/data/dashcam/stills --rate 2 --loop --frame-id dashcam
  seg-perception play recording/ --keep-stamps               # a rosbag2 bag, its own timing
  seg-perception play recording.mcap --bag-topic /cam/image_raw/compressed --rate 5
  seg-perception play video.mp4 --reliability best_effort --resize 640x360 --count 100
  seg-perception play video.mp4 --wait-subscribers 1 --lockstep segmentation/label_map

Publishes on 'image' (relative: follows ROS_NAMESPACE / the node's namespace; --topic
changes it) as node 'seg_perception_player'. Stamps are the time of publishing unless
--keep-stamps (bags). When the package's Fast DDS profile (config/fastdds_shm.xml) is found
it is loaded for this process unless FASTDDS_DEFAULT_PROFILES_FILE is already set: with it,
best-effort 720p images arrive intact on the same host.
"""

NODE_NAME = "seg_perception_player"
MATCH_SETTLE_S = 0.5  # after --wait-subscribers: discovery completes on the other side
FINISH_TIMEOUT_S = 5.0  # at the end: how long reliable subscribers may take to acknowledge


# --- the Fast DDS profile ----------------------------------------------------------------


# --- QoS helpers (shared with the demo) --------------------------------------------------


def qos_profile(reliability: str, depth: int) -> QoSProfile:
    """A keep-last volatile profile with the given reliability ('reliable'/'best_effort')."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    policy = {
        "reliable": ReliabilityPolicy.RELIABLE,
        "best_effort": ReliabilityPolicy.BEST_EFFORT,
    }[reliability]
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=policy,
        durability=DurabilityPolicy.VOLATILE,
    )


def publisher_reliability(node: Node, topic: str) -> str | None:
    """'reliable' if every publisher of ``topic`` is, 'best_effort' if any is not; None if none.

    A subscription that asks for what the publishers offer gets reliable delivery when they
    provide it and still matches best-effort publishers.
    """
    from rclpy.qos import ReliabilityPolicy

    infos = node.get_publishers_info_by_topic(topic)
    if not infos:
        return None
    reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
    return "reliable" if reliable else "best_effort"


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds (exact, hashable)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# --- the player ----------------------------------------------------------------------------


@dataclass
class PlayStats:
    """What the player did; printed as the one-line summary."""

    published: int = 0
    first_s: float | None = None
    last_s: float | None = None
    late: int = 0  # frames published more than a period behind schedule (no catch-up burst)
    echoed: int = 0  # lockstep: frames whose output came back
    size: str = "?"
    interrupted: bool = False

    def achieved_hz(self) -> float:
        if self.published < 2 or self.first_s is None or self.last_s is None:
            return 0.0
        span = self.last_s - self.first_s
        return (self.published - 1) / span if span > 0 else 0.0


class Player:
    """Publishes frames of a source at its pace; optionally waits for each frame's output."""

    def __init__(self, node: Node, source: FrameSource, args: argparse.Namespace) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        self.node = node
        self.source = source
        self.args = args
        self.stats = PlayStats()
        # Set by SIGINT/SIGTERM; every wait checks it, so a stop never lands inside rclpy.
        self.stop_requested = threading.Event()
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self.publisher = node.create_publisher(
            Image, args.topic, qos_profile(args.reliability, args.depth)
        )
        self.topic = self.publisher.topic_name
        self._echoed_stamp: int | None = None
        self._lockstep_sub = None

    # --- waiting ---------------------------------------------------------------------------

    def _spin_for(self, seconds: float) -> None:
        """Sleep while serving callbacks (lockstep echoes)."""
        end = time.monotonic() + seconds
        while (remaining := end - time.monotonic()) > 0:
            self._check_stop()
            self.executor.spin_once(timeout_sec=min(remaining, 0.05))

    def _check_stop(self) -> None:
        if self.stop_requested.is_set():
            raise PlayStopped

    def _wait_until(self, done: Callable[[], bool], what: str, timeout: float | None) -> None:
        start = time.monotonic()
        announced = False
        while not done():
            waited = time.monotonic() - start
            if timeout is not None and waited > timeout:
                raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")
            if not announced and waited > 1.0:
                log.info("waiting for %s", what)
                announced = True
            self._spin_for(0.05)

    def wait_for_subscribers(self) -> None:
        want = self.args.wait_subscribers
        if want > 0:
            self._wait_until(
                lambda: self.publisher.get_subscription_count() >= want,
                f"{want} subscriber(s) on {self.topic}",
                self.args.wait_timeout,
            )
            # We see them; they see us a moment later (a best-effort frame sent before that
            # is dropped by the reader).
            self._spin_for(MATCH_SETTLE_S)

    def finish(self) -> None:
        """Let reliable subscribers acknowledge the last frames: destroying the publisher
        earlier throws away what they have not fetched yet."""
        from rclpy.duration import Duration

        if self.stats.published and not self.publisher.wait_for_all_acked(
            Duration(seconds=FINISH_TIMEOUT_S)
        ):
            log.warning("not every subscriber acknowledged the last frames within %g s",
                        FINISH_TIMEOUT_S)

    def setup_lockstep(self) -> None:
        """Subscribe to the output to wait for, with the QoS its publisher offers."""
        from sensor_msgs.msg import Image

        topic = self.node.resolve_topic_name(self.args.lockstep)
        reliability: list[str] = []

        def discovered() -> bool:
            found = publisher_reliability(self.node, topic)
            if found:
                reliability.append(found)
            return bool(found)

        self._wait_until(discovered, f"a publisher of {topic} (--lockstep)", self.args.wait_timeout)
        self._lockstep_sub = self.node.create_subscription(
            Image, topic, self._on_echo, qos_profile(reliability[-1], 5)
        )
        self._wait_until(
            lambda: self._lockstep_sub.get_publisher_count() > 0,
            f"the --lockstep subscription to {topic} to match",
            self.args.wait_timeout,
        )

    def _on_echo(self, msg: Any) -> None:
        self._echoed_stamp = stamp_ns(msg.header.stamp)

    def _wait_for_echo(self, stamp: int) -> bool:
        end = time.monotonic() + self.args.lockstep_timeout
        while self._echoed_stamp != stamp:
            self._check_stop()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            self.executor.spin_once(timeout_sec=min(remaining, 0.05))
        return True

    # --- publishing ------------------------------------------------------------------------

    def _message(self, frame: Frame) -> tuple[Any, int]:
        from builtin_interfaces.msg import Time
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        pixels = frame.pixels_rgb
        if self.args.encoding == "bgr8":
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        height, width, step, data = encode_image(pixels, self.args.encoding)
        if self.args.keep_stamps and frame.stamp_ns is not None:
            nanos = frame.stamp_ns
        else:
            nanos = self.node.get_clock().now().nanoseconds
        sec, nanosec = divmod(nanos, 1_000_000_000)
        header = Header(
            stamp=Time(sec=sec, nanosec=nanosec),
            frame_id=self.args.frame_id or frame.frame_id or "camera",
        )
        self.stats.size = f"{width}x{height}"
        # All fields in the constructor: assigning .data afterwards can cost 100x more.
        msg = Image(
            header=header,
            height=height,
            width=width,
            encoding=self.args.encoding,
            is_bigendian=0,
            step=step,
            data=data,
        )
        return msg, nanos

    def frames(self) -> Iterator[Frame]:
        frames = self.source.frames(loop=self.args.loop)
        return islice(frames, self.args.count) if self.args.count else frames

    def play(self) -> PlayStats:
        period = 1.0 / self.source.rate
        origin: float | None = None  # monotonic time of source time 0
        for frame in self.frames():
            self._check_stop()
            now = time.monotonic()
            if origin is None:
                origin = now - frame.time_s
            delay = origin + frame.time_s - now
            if delay > 0 and self._lockstep_sub is not None:
                self._spin_for(delay)
            elif delay > 0 and self.stop_requested.wait(delay):
                raise PlayStopped
            elif delay < -period:
                origin -= delay  # behind schedule: carry on from now instead of bursting
                self.stats.late += self._lockstep_sub is None  # lockstep: waiting is the point
            msg, nanos = self._message(frame)
            self.publisher.publish(msg)
            published_at = time.monotonic()
            self.stats.published += 1
            if self.stats.first_s is None:
                self.stats.first_s = published_at
            self.stats.last_s = published_at
            if self.args.print_frames:
                sec, nanosec = divmod(nanos, 1_000_000_000)
                print(f"frame {frame.index} stamp {sec}.{nanosec:09d} {frame.name or ''}".rstrip(),
                      flush=True)
            if self._lockstep_sub is not None:
                if self._wait_for_echo(nanos):
                    self.stats.echoed += 1
                else:
                    log.warning("no output for frame %d within %g s (--lockstep-timeout)",
                                frame.index, self.args.lockstep_timeout)
        return self.stats

    def summary(self) -> str:
        s = self.stats
        text = (
            f"published {s.published} frames on {self.topic} ({s.size} {self.args.encoding}, "
            f"{self.args.reliability}) at {s.achieved_hz():.1f} Hz achieved"
        )
        if self._lockstep_sub is not None:
            text += (f" (lockstep, at most {self.source.rate:g} Hz): {s.echoed}/{s.published} "
                     "outputs came back")
        else:
            text += f" (target {self.source.rate:g} Hz" + (f", {s.late} late)" if s.late else ")")
        if s.interrupted:
            text += "; interrupted"
        return text


# --- CLI -------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path,
                        help="video file, image folder, image, or rosbag2 bag (folder/.mcap/.db3)")
    out = parser.add_argument_group("output")
    out.add_argument("--topic", default="image", help="topic to publish on (default: image)")
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
    src.add_argument("--resize", type=parse_size, metavar="WxH", help="resize frames first")
    src.add_argument("--count", type=int, default=0,
                     help="stop after N frames (default 0 = all; with --loop, forever)")
    sync = parser.add_argument_group("synchronisation")
    sync.add_argument("--start-delay", type=float, default=0.0, metavar="S",
                      help="seconds to wait before the first frame")
    sync.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
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
    if args.depth < 1:
        raise ValueError(f"--depth must be at least 1, not {args.depth}")
    if args.count < 0:
        raise ValueError(f"--count must be positive, not {args.count}")
    source = open_source(args.source, rate=args.rate, resize=args.resize, topic=args.bag_topic)
    profile = use_fastdds_profile()  # before rclpy exists in this process
    log.debug("Fast DDS profile: %s", profile or "none (default transports)")

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    # Our own SIGINT/SIGTERM handling instead of rclpy's, which shuts the context down under
    # our feet: once the player exists, a signal only sets a flag that every wait checks.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = None
    player = None
    previous = {}
    try:
        node = rclpy.create_node(NODE_NAME)
        player = Player(node, source, args)

        def request_stop(signum: int, frame: Any) -> None:
            player.stop_requested.set()

        previous = {sig: signal.signal(sig, request_stop)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        log.info("playing %s on %s", source.description, player.topic)
        if args.lockstep:
            player.setup_lockstep()
        player.wait_for_subscribers()
        if args.start_delay > 0:
            player._spin_for(args.start_delay)
        player.play()
        player.finish()
    except (PlayStopped, KeyboardInterrupt):  # KeyboardInterrupt: Ctrl-C during start-up
        if player is not None:
            player.stats.interrupted = True
    except TimeoutError as exc:
        print(f"seg-perception play: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if player is not None:
            print(player.summary(), flush=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


class PlayStopped(Exception):
    """SIGINT or SIGTERM asked the player to stop (raised at the next wait, not in rclpy)."""
