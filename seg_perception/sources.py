"""Frame sources for the tools: video files, image folders, single images and rosbag2 bags.

ROS-free on purpose: the player publishes these frames over DDS, the benchmark and offline
tools consume them directly, and all of them see the same pixels and timing. Every source
yields :class:`Frame` objects with HxWx3 uint8 RGB pixels and a time offset on the source's
own clock, so a consumer can reproduce the source's pacing (a video's fps, a bag's recorded
timing) without knowing what kind of source it is.

Bags are read with ``rosbags`` (no ROS install needed); ``sensor_msgs/msg/Image`` and
``sensor_msgs/msg/CompressedImage`` become pixels through :mod:`seg_perception.core.image_codec`,
the package's single pixel<->message conversion.
"""

from __future__ import annotations

import contextlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from seg_perception.core.compressed_codec import decode_compressed_msg
from seg_perception.core.image_codec import decode_image_msg
from seg_perception.errors import SegPerceptionError

if TYPE_CHECKING:
    from rosbags.rosbag2 import Reader

__all__ = [
    "DEFAULT_IMAGE_RATE",
    "IMAGE_SUFFIXES",
    "BagSource",
    "Frame",
    "FrameSource",
    "SourceError",
    "ImageFolderSource",
    "SingleImageSource",
    "VideoSource",
    "open_source",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_IMAGE_RATE = 10.0  # Hz for stills, which carry no timing of their own
IMAGE_MSGTYPE = "sensor_msgs/msg/Image"
COMPRESSED_MSGTYPE = "sensor_msgs/msg/CompressedImage"
BAG_SUFFIXES = (".mcap", ".db3")


class SourceError(SegPerceptionError, ValueError):
    """A source cannot be read: its message names the file and the problem."""


@dataclass(frozen=True)
class Frame:
    """One frame of a source.

    ``time_s`` is the offset from the source's first frame on the source's clock (keeps
    growing across loop passes), so pacing a consumer by it reproduces the source's timing.
    ``stamp_ns`` and ``frame_id`` are the original header values where the source has them
    (bags); ``name`` says where the frame came from (a file name, a bag topic).
    """

    index: int
    pixels_rgb: np.ndarray
    time_s: float
    stamp_ns: int | None = None
    frame_id: str | None = None
    name: str | None = None

    @property
    def stamp(self) -> tuple[int, int] | None:
        """The original header stamp as (sec, nanosec), or None."""
        if self.stamp_ns is None:
            return None
        return divmod(self.stamp_ns, 1_000_000_000)


class FrameSource(ABC):
    """A finite sequence of frames with a rate; iterate it with :meth:`frames`.

    ``rate`` overrides the source's own timing with evenly spaced frames; ``resize`` (W, H)
    resizes every frame (the benchmark uses it to measure other input sizes).
    """

    kind = "source"

    def __init__(
        self,
        path: Path,
        *,
        rate: float | None = None,
        resize: tuple[int, int] | None = None,
    ) -> None:
        if rate is not None and not rate > 0:
            raise SourceError(f"rate must be positive, got {rate}")
        if resize is not None and (len(resize) != 2 or min(resize) < 1):
            raise SourceError(f"resize must be a positive (width, height), got {resize}")
        self.path = path
        self._rate_override = rate
        self.resize = tuple(resize) if resize is not None else None

    # --- what a subclass provides -------------------------------------------------------

    @property
    @abstractmethod
    def native_rate(self) -> float:
        """The source's own rate in Hz (a video's fps, a bag's mean rate)."""

    @property
    @abstractmethod
    def length(self) -> int | None:
        """Frames in one pass, when known without decoding."""

    @abstractmethod
    def _read(self) -> Iterator[Frame]:
        """One pass over the source with native timing and unresized pixels."""

    # --- shared behaviour ----------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Frames per second a consumer should play at (the override if one was given)."""
        return self._rate_override or self.native_rate

    @property
    def description(self) -> str:
        count = f"{self.length} frames" if self.length is not None else "unknown length"
        return f"{self.kind} {self.path} ({count}, {self.rate:g} Hz)"

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"the length of {self.path} is not known before reading it")
        return self.length

    def frames(self, loop: bool = False) -> Iterator[Frame]:
        """Frames of one pass, or of endless passes with ``loop`` (indices and times grow)."""
        period = 1.0 / self.rate
        index = 0
        offset = 0.0
        while True:
            first_time: float | None = None
            local = 0.0
            for frame in self._read():
                if self._rate_override:
                    local = frame.index * period
                else:
                    if first_time is None:
                        first_time = frame.time_s
                    local = frame.time_s - first_time
                yield Frame(
                    index=index,
                    pixels_rgb=self._resized(frame.pixels_rgb),
                    time_s=offset + local,
                    stamp_ns=frame.stamp_ns,
                    frame_id=frame.frame_id,
                    name=frame.name,
                )
                index += 1
            if index == 0:
                raise SourceError(f"{self.path} has no readable frames")
            if not loop:
                return
            offset += local + period  # the next pass starts one period after the last frame

    def _resized(self, pixels: np.ndarray) -> np.ndarray:
        if self.resize is None or (pixels.shape[1], pixels.shape[0]) == self.resize:
            return pixels
        width, height = self.resize
        shrink = width * height < pixels.shape[0] * pixels.shape[1]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(pixels, (width, height), interpolation=interpolation)


def _read_image_file(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SourceError(f"cannot read image {path} (not an image, or corrupt)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class VideoSource(FrameSource):
    """A video file decoded with OpenCV; its rate is the file's fps."""

    kind = "video"

    def __init__(self, path: Path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        capture = self._open()
        try:
            fps = capture.get(cv2.CAP_PROP_FPS)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            ok, _ = capture.read()
        finally:
            capture.release()
        if not ok:
            raise SourceError(f"cannot decode a frame of video {path}")
        # Some containers report no fps; 25 Hz is the common camera default (use --rate).
        self._fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else 25.0
        self._count = count if count > 0 else None

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open video {self.path} (unsupported format or corrupt)")
        return capture

    @property
    def native_rate(self) -> float:
        return self._fps

    @property
    def length(self) -> int | None:
        return self._count

    def _read(self) -> Iterator[Frame]:
        capture = self._open()
        try:
            for index in itertools.count():
                ok, bgr = capture.read()
                if not ok:
                    return
                yield Frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index / self._fps)
        finally:
            capture.release()


class ImageFolderSource(FrameSource):
    """The images of a folder in file-name order, at ``rate`` (default 10 Hz)."""

    kind = "image folder"

    def __init__(self, path: Path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.files:
            raise SourceError(f"no {'/'.join(IMAGE_SUFFIXES)} images in folder {path}")

    @property
    def native_rate(self) -> float:
        return DEFAULT_IMAGE_RATE

    @property
    def length(self) -> int:
        return len(self.files)

    def _read(self) -> Iterator[Frame]:
        for index, file in enumerate(self.files):
            yield Frame(index, _read_image_file(file), index / DEFAULT_IMAGE_RATE, name=file.name)


class SingleImageSource(FrameSource):
    """One image file: one frame per pass (loop it to stream it at ``rate``)."""

    kind = "image"

    def __init__(self, path: Path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self._pixels = _read_image_file(path)
        self._pixels.flags.writeable = False  # shared by every pass

    @property
    def native_rate(self) -> float:
        return DEFAULT_IMAGE_RATE

    @property
    def length(self) -> int:
        return 1

    def _read(self) -> Iterator[Frame]:
        yield Frame(0, self._pixels, 0.0, name=self.path.name)


class BagSource(FrameSource):
    """One image topic of a rosbag2 bag (directory, .mcap or .db3), with the bag's timing.

    Frames keep their header stamps and frame ids; ``time_s`` follows the recording times,
    so a player reproduces the bag's (possibly uneven) timing.
    """

    kind = "bag"

    def __init__(self, path: Path, *, topic: str | None = None, **kwargs) -> None:
        super().__init__(path, **kwargs)
        from rosbags.typesys import Stores, get_typestore

        self._typestore = get_typestore(Stores.LATEST)
        with self._reader() as reader:
            # Raw images first (lossless), then compressed ones, each by name.
            image_topics = {
                name: info.msgtype
                for name, info in sorted(
                    reader.topics.items(), key=lambda t: (t[1].msgtype != IMAGE_MSGTYPE, t[0])
                )
                if info.msgtype in (IMAGE_MSGTYPE, COMPRESSED_MSGTYPE)
            }
            if not image_topics:
                listed = ", ".join(f"{n} ({i.msgtype})" for n, i in reader.topics.items())
                raise SourceError(f"bag {path} has no image topics (topics: {listed or 'none'})")
            if topic is None:
                topic = next(iter(image_topics))
            else:
                topic = topic if topic.startswith("/") else "/" + topic
                if topic not in image_topics:
                    raise SourceError(
                        f"bag {path} has no image topic {topic} "
                        f"(image topics: {', '.join(image_topics)})"
                    )
            self.topic = topic
            self.msgtype = image_topics[topic]
            self._connections = [c for c in reader.connections if c.topic == topic]
            self._count = sum(c.msgcount for c in self._connections)
            duration_ns = reader.duration
        if self._count == 0:
            raise SourceError(f"topic {topic} of bag {path} has no messages")
        # The mean rate over the bag's span: exact for one-topic bags, and read from the
        # metadata instead of scanning every message of a possibly large bag.
        span = duration_ns / 1e9
        self._rate = (
            (self._count - 1) / span if self._count > 1 and span > 0 else DEFAULT_IMAGE_RATE
        )

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Reader]:
        """An open rosbags Reader; its errors become one-line ValueErrors."""
        from rosbags.rosbag2 import Reader, ReaderError

        try:
            reader = Reader(self.path)
            reader.open()
        except (ReaderError, KeyError, OSError) as exc:  # bad metadata.yaml, unreadable storage
            raise SourceError(f"cannot read bag {self.path}: {exc}") from None
        try:
            yield reader
        finally:
            reader.close()

    @property
    def description(self) -> str:
        return f"{super().description} topic {self.topic} ({self.msgtype})"

    @property
    def native_rate(self) -> float:
        return self._rate

    @property
    def length(self) -> int:
        return self._count

    def _read(self) -> Iterator[Frame]:
        compressed = self.msgtype == COMPRESSED_MSGTYPE
        decode = decode_compressed_msg if compressed else decode_image_msg
        first_ns: int | None = None
        with self._reader() as reader:
            for index, (connection, log_time, raw) in enumerate(
                reader.messages(connections=self._connections)
            ):
                first_ns = log_time if first_ns is None else first_ns
                msg = self._typestore.deserialize_cdr(raw, connection.msgtype)
                pixels = decode(msg).to_rgb()
                stamp = msg.header.stamp
                yield Frame(
                    index,
                    pixels,
                    (log_time - first_ns) / 1e9,  # offsets in ns first: exact in float
                    stamp_ns=stamp.sec * 1_000_000_000 + stamp.nanosec,
                    frame_id=msg.header.frame_id or None,
                    name=self.topic,
                )


def _is_bag(path: Path) -> bool:
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix.lower() in BAG_SUFFIXES


def open_source(
    path: str | Path,
    *,
    rate: float | None = None,
    resize: tuple[int, int] | None = None,
    topic: str | None = None,
) -> FrameSource:
    """The right :class:`FrameSource` for ``path``: bag, image folder, image or video.

    ``rate`` replaces the source's timing with evenly spaced frames, ``resize`` is (W, H),
    ``topic`` picks a bag's image topic (default: the first one by name). Raises
    FileNotFoundError for a missing path and ValueError for anything unreadable.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    kwargs = {"rate": rate, "resize": resize}
    if _is_bag(path):
        return BagSource(path, topic=topic, **kwargs)
    if topic is not None:
        raise SourceError(f"a topic only applies to bags, and {path} is not a rosbag2 bag")
    if path.is_dir():
        return ImageFolderSource(path, **kwargs)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return SingleImageSource(path, **kwargs)
    return VideoSource(path, **kwargs)
