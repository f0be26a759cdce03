"""Helper processes of a ROS graph: ``python -m seg_perception.tools.graph_process
publish|record ...`` (not user commands).

The benchmark and the tests run their camera stand-in and their recorder in processes of
their own, as a camera driver and a consumer would be, so frames cross DDS between processes.
The publisher takes its messages from a file (:func:`write_messages`) and reports what it sent
as JSON; the recorder reports (topic, stamp, receipt) of every image it got, and the node's
last diagnostics. :func:`publish_command` and :func:`record_command` spell their arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seg_perception.tools.frame_publisher import FramePublisher, at_rate
from seg_perception.tools.rosgraph import NodeCounters, RosNode, Stopped, TopicRecorder

MODULE = "seg_perception.tools.graph_process"
LINGER_S = 0.3  # after the last frame / before "ready": what is in flight arrives


def write_messages(path: Path, messages: Sequence[Mapping[str, Any]]) -> Path:
    """Store the fields of sensor_msgs/Image messages (or CompressedImage: with ``format``)
    for a publisher process: plain dicts, no ROS types in the writer."""
    path.write_bytes(pickle.dumps([dict(m) for m in messages]))
    return path


def _read_messages(path: Path) -> list[Any]:
    from sensor_msgs.msg import CompressedImage, Image

    # All fields in the constructor: assigning .data afterwards can cost 100x more.
    return [(CompressedImage if "format" in fields else Image)(**fields)
            for fields in pickle.loads(path.read_bytes())]


def _options(options: Mapping[str, Any]) -> list[str]:
    """--key value per option (True: a bare flag; None/False: left out)."""
    args: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        args.append("--" + key.replace("_", "-"))
        if value is not True:
            args.append(str(value))
    return args


def publish_command(messages: Path, topic: str, out: Path, **options: Any) -> list[str]:
    """The publisher process; ``options`` are its flags (``rate=30``, ``lockstep=TOPIC``...)."""
    return [sys.executable, "-m", MODULE, "publish", "--messages", str(messages), "--topic",
            topic, "--out", str(out), *_options(options)]


def record_command(topics: Sequence[str], out: Path, **options: Any) -> list[str]:
    """The recorder process; ``options`` are its flags (``ready=FILE``, ``depth=1``...)."""
    return [sys.executable, "-m", MODULE, "record", "--topics", ",".join(topics), "--out",
            str(out), *_options(options)]


def publish_main(argv: Sequence[str]) -> int:
    """Publish the stored messages; write what was sent to --out."""
    parser = argparse.ArgumentParser(prog=f"{MODULE} publish")
    parser.add_argument("--messages", type=Path, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.0, help="Hz; 0: as fast as possible")
    parser.add_argument("--count", type=int, help="frames in all (default: one pass, or "
                        "endless with --seconds)")
    parser.add_argument("--seconds", type=float, help="stop after this long (pauses excluded)")
    parser.add_argument("--frame-id", help="header frame_id, may use {seq}")
    parser.add_argument("--wait-subscribers", type=int, default=1)
    parser.add_argument("--wait-timeout", type=float, default=60.0)
    parser.add_argument("--same-qos", action="store_true",
                        help="also wait until every subscription asks for this reliability")
    parser.add_argument("--lockstep", metavar="TOPIC",
                        help="the next frame once an Image with this frame's stamp came back")
    parser.add_argument("--counters-of", metavar="NODE",
                        help="lockstep: or once NODE's diagnostics show the frame settled")
    parser.add_argument("--lockstep-timeout", type=float, default=10.0)
    parser.add_argument("--paired", action="store_true",
                        help="lockstep: after each frame print 'paired INDEX STAMP' and wait for "
                        "a line on stdin (excluded from --seconds)")
    parser.add_argument("--ready", type=Path,
                        help="created once the subscribers are matched (with --go: several "
                        "publishers start together)")
    parser.add_argument("--go", type=Path, help="wait until this file exists, then publish")
    args = parser.parse_args(argv)
    if (args.paired or args.counters_of) and not args.lockstep:
        parser.error("--paired and --counters-of need --lockstep")
    messages = _read_messages(args.messages)
    count = args.count or (None if args.seconds else len(messages))
    ros = RosNode(f"graph_publisher_{os.getpid()}", handle_signals=True)
    publisher = FramePublisher(ros, args.topic, type(messages[0]), args.reliability, args.depth)
    log = publisher.log
    try:
        if args.lockstep:
            publisher.lockstep(args.lockstep, args.wait_timeout, args.counters_of)
        publisher.wait_for_subscribers(args.wait_subscribers, args.wait_timeout, args.same_qos)
        if args.ready:
            args.ready.touch()
        if args.go:
            ros.wait_for(args.go.exists, args.wait_timeout, f"the start signal {args.go}")
        frames = at_rate(messages, args.rate, count, args.frame_id)
        publisher.run(frames, seconds=args.seconds,
                      max_lag_s=1 / args.rate if args.rate > 0 else float("inf"),
                      lockstep_timeout=args.lockstep_timeout,
                      between=_paired if args.paired else None)
        if not log.interrupted:
            if not args.lockstep:  # in lockstep every frame is known to have arrived
                publisher.finish()
            ros.spin_for(LINGER_S)
    except Stopped:
        log.interrupted = True
    except TimeoutError as exc:
        print(f"publisher: {exc}", file=sys.stderr)
        return 1
    finally:
        ros.close()
    args.out.write_text(json.dumps({
        "messages": len(messages), "sent": log.sent, "frame_ids": log.frame_ids,
        "seconds": log.seconds,
        "cpu_seconds": log.cpu_seconds, "lockstep_timeouts": log.timeouts,
        "echoed": log.echoed, "pauses": log.pauses, "interrupted": log.interrupted}))
    return 0


def _paired(index: int, stamp: int, settled: bool) -> bool:
    """The benchmark's turn: it times its own pipeline on this frame, then sends a line."""
    print(f"paired {index} {stamp}", flush=True)
    return bool(sys.stdin.readline())  # "": the benchmark went away


def record_main(argv: Sequence[str]) -> int:
    """Record (topic index, header stamp, receipt) of every image until SIGINT/SIGTERM."""
    from sensor_msgs.msg import Image

    parser = argparse.ArgumentParser(prog=f"{MODULE} record")
    parser.add_argument("--topics", required=True, help="comma-separated")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument("--depth", type=int, default=10, help="keep-last queue depth")
    parser.add_argument("--ready", type=Path, help="created once every topic has a publisher")
    parser.add_argument("--diagnostics", metavar="NODE", help="keep NODE's last status")
    args = parser.parse_args(argv)
    names = [t for t in args.topics.split(",") if t]
    recorder = TopicRecorder(f"graph_recorder_{os.getpid()}", handle_signals=True)
    counters = NodeCounters(recorder, args.diagnostics) if args.diagnostics else None
    for topic in names:
        recorder.record(topic, Image, reliability=args.reliability, depth=args.depth,
                        stamps_only=True)
    ready = args.ready is None
    try:
        while True:
            recorder.step(0.1)
            if not ready and recorder.all_matched():
                time.sleep(LINGER_S)
                args.ready.touch()
                ready = True
    except Stopped:
        pass
    finally:
        recorder.close()
    records = [(index, stamp, receipt) for index, topic in enumerate(names)
               for stamp, receipt in recorder.records(topic)]
    args.out.write_text(json.dumps({"topics": names, "records": records,
                                    "diagnostics": counters.latest()[1] if counters else {}}))
    return 0


def main(argv: Sequence[str]) -> int:
    roles = {"publish": publish_main, "record": record_main}
    if not argv or argv[0] not in roles:
        print(f"usage: python -m {MODULE} {{{','.join(roles)}}} ...", file=sys.stderr)
        return 2
    return roles[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
