"""Latency over DDS, from the stamps a publisher sent and the receipts a recorder kept:
one publisher run matched to its outputs frame by frame (pure functions on their JSON)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from seg_perception import topics
from seg_perception.tools.bench.frames import Size
from seg_perception.tools.bench.timing import Summary, sig, summarize

SETTLE_S = 1.0  # outputs of the first second at a new size are warm-up
Key = TypeVar("Key")


@dataclass
class StreamResult:
    """Latency from header stamp to receipt, over one publisher run."""

    size: Size
    sent: int
    received: int  # frames with every output
    partial: int  # frames with some outputs only
    latency: Summary
    fps_in: float
    fps_out: float
    publisher_cpu: float  # fraction of one core the publisher used
    timeouts: int = 0  # lockstep: frames whose output never came back in time
    samples: list[tuple[float, float]] = field(default_factory=list, repr=False)
    per_output: dict[str, Summary] = field(default_factory=dict)  # topic -> its own latency

    @property
    def dropped(self) -> int:
        return self.sent - self.received - self.partial

    def to_json(self) -> dict[str, Any]:
        return {
            "frames_sent": self.sent, "frames_out": self.received,
            "frames_partial": self.partial, "frames_dropped": self.dropped,
            "fps_in": sig(self.fps_in), "fps_out": sig(self.fps_out),
            "latency_ms": self.latency.to_json(), "publisher_cpu": sig(self.publisher_cpu),
            "lockstep_timeouts": self.timeouts,
            "latency_ms_by_output": {k: v.to_json() for k, v in self.per_output.items()},
        }


def stream_result(size: Size, publish: dict, received: dict,
                  settle_s: float = SETTLE_S) -> StreamResult:
    """Match outputs to the inputs of one run by stamp; the latency of a frame is that of
    its last output. Frames stamped within ``settle_s`` of the start are warm-up."""
    sent = publish["sent"]
    outputs = len(received["topics"])
    if not sent:
        return StreamResult(size, 0, 0, 0, summarize([]), 0.0, 0.0, 0.0)
    wanted, arrivals = _arrivals(sent, received, settle_s)
    complete = {s: max(r.values()) for s, r in arrivals.items() if len(r) == outputs}
    latencies = [(r - s) / 1e9 for s, r in complete.items()]
    samples = sorted((r / 1e9, (r - s) / 1e9) for s, r in complete.items())
    per_output = {
        name: summarize([(r[index] - s) / 1e9 for s, r in arrivals.items() if s in complete])
        for index, name in enumerate(received["topics"])
    } if outputs > 1 else {}
    span = (max(complete.values()) - min(complete.values())) / 1e9 if len(complete) > 1 else 0
    if span and publish.get("pauses"):  # a paired run: the benchmark's turns are not the node's
        pause_after = dict(zip(sent, publish["pauses"], strict=False))
        span -= sum(pause_after.get(s, 0.0) for s in sent
                    if min(complete) <= s < max(complete))
    seconds = max(publish["seconds"], 1e-9)
    return StreamResult(
        size=size,
        sent=len(wanted),
        received=len(complete),
        partial=len(arrivals) - len(complete),
        latency=summarize(latencies),
        fps_in=len(sent) / seconds,
        fps_out=(len(complete) - 1) / span if span > 0 else 0.0,
        publisher_cpu=publish["cpu_seconds"] / seconds,
        timeouts=publish.get("lockstep_timeouts", 0),
        samples=samples,
        per_output=per_output,
    )


def _arrivals(sent: list[int], received: dict,
              settle_s: float) -> tuple[set[int], dict[int, dict[int, int]]]:
    """The stamps sent after the warm-up, and for each, topic index -> receipt (ns)."""
    first = sent[0] + int(settle_s * 1e9)
    wanted = {s for s in sent if s >= first}
    arrivals: dict[int, dict[int, int]] = {}
    for topic, stamp, receipt in received["records"]:
        if stamp in wanted:
            arrivals.setdefault(stamp, {})[topic] = receipt
    return wanted, arrivals


def paired_extra(publish: dict, received: dict, reference: dict[int, float],
                 settle_s: float = SETTLE_S) -> dict[str, list[float]]:
    """Per frame of a paired lockstep run with every output back: the in-process pipeline on
    that frame (ms), and the node's latency to the label map and to its last output minus it:
    what the node and DDS add, free of the machine's drift."""
    names = received["topics"]
    label_map = names.index(topics.LABEL_MAP) if topics.LABEL_MAP in names else 0
    sent = publish["sent"]
    if not sent:
        return {"pipeline_ms": [], "label_map_extra_ms": [], "last_output_extra_ms": []}
    _, arrivals = _arrivals(sent, received, settle_s)
    frames = sorted((s, r) for s, r in arrivals.items()
                    if len(r) == len(names) and s in reference)
    return {
        "pipeline_ms": [sig(reference[s] * 1e3) for s, _ in frames],
        "label_map_extra_ms": [sig((r[label_map] - s) / 1e6 - reference[s] * 1e3)
                               for s, r in frames],
        "last_output_extra_ms": [sig((max(r.values()) - s) / 1e6 - reference[s] * 1e3)
                                 for s, r in frames],
    }


def select_topics(received: dict, names: Sequence[str]) -> dict:
    """A recorder's JSON cut down to the topics ``names`` (one camera's or one node's
    outputs, when one recorder heard several)."""
    index = {received["topics"].index(name): new for new, name in enumerate(names)}
    return {"topics": list(names),
            "records": [[index[t], stamp, receipt] for t, stamp, receipt in received["records"]
                        if t in index]}


def overlap_fps(receipts: Mapping[Key, Sequence[float]]) -> dict[Key, float]:
    """Output rate of each stream while every stream ran: from the latest first receipt to
    the earliest last one (s), each stream's (outputs - 1) / its own span inside it. Streams
    fed at once start and end a little apart; this compares them over the same time. A
    stream without outputs has rate 0 and no say in the span."""
    spans = [(min(times), max(times)) for times in receipts.values() if times]
    if not spans:
        return {key: 0.0 for key in receipts}
    start, end = max(first for first, _ in spans), min(last for _, last in spans)
    rates = {}
    for key, times in receipts.items():
        inside = sorted(t for t in times if start <= t <= end)
        span = inside[-1] - inside[0] if len(inside) > 1 else 0.0
        rates[key] = (len(inside) - 1) / span if span > 0 else 0.0
    return rates
