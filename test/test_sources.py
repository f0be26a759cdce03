"""Frame sources on the real dash-cam data, and on a rosbag2 bag written from it."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_perception.core.compressed_codec import encode_compressed
from seg_perception.core.image_codec import encode_image
from seg_perception.sources import (
    BagSource,
    ImageFolderSource,
    SingleImageSource,
    VideoSource,
    open_source,
)


@pytest.fixture(scope="module")
def video(shared) -> Path:
    return shared / "data" / "dashcam" / "highway_720p.mp4"


@pytest.fixture(scope="module")
def stills(shared) -> Path:
    return shared / "data" / "dashcam" / "stills"


@pytest.fixture(scope="module")
def video_frames(video) -> list:
    return list(open_source(video))


def test_video_has_its_frames_fps_and_size(video, video_frames):
    source = open_source(video)
    assert isinstance(source, VideoSource)
    assert source.rate == pytest.approx(25.0)
    assert source.length == 38
    assert len(video_frames) == 38
    assert [f.index for f in video_frames] == list(range(38))
    assert video_frames[-1].time_s == pytest.approx(37 / 25)
    for frame in video_frames[:3]:
        assert frame.pixels_rgb.shape == (720, 1280, 3)
        assert frame.pixels_rgb.dtype == np.uint8
        assert frame.stamp is None and frame.frame_id is None
    # consecutive frames of a moving car differ, so this is really decoded video
    assert not np.array_equal(video_frames[0].pixels_rgb, video_frames[-1].pixels_rgb)


def test_video_frames_are_rgb(video, video_frames):
    capture = cv2.VideoCapture(str(video))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    np.testing.assert_array_equal(video_frames[0].pixels_rgb, bgr[..., ::-1])


def test_folder_is_sorted_at_10_hz_by_default(stills, dashcam_still):
    source = open_source(stills)
    assert isinstance(source, ImageFolderSource)
    frames = list(source)
    assert source.rate == 10.0 and source.length == 6
    assert [f.name for f in frames] == [f"test{i}.jpg" for i in range(1, 7)]
    assert [f.time_s for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_array_equal(frames[1].pixels_rgb, dashcam_still("test2"))


def test_rate_override_and_resize(stills):
    source = open_source(stills, rate=4.0, resize=(640, 360))
    frames = list(source)
    assert source.rate == 4.0
    assert [f.time_s for f in frames] == pytest.approx([i / 4 for i in range(6)])
    assert {f.pixels_rgb.shape for f in frames} == {(360, 640, 3)}


def test_single_image_loops_with_growing_index_and_time(stills, dashcam_still):
    source = open_source(stills / "test3.jpg", rate=5.0)
    assert isinstance(source, SingleImageSource)
    assert len(list(source)) == 1
    frames = list(itertools.islice(source.frames(loop=True), 4))
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.time_s for f in frames] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    np.testing.assert_array_equal(frames[3].pixels_rgb, dashcam_still("test3"))


def test_video_loop_continues_time_one_period_after_the_last_frame(video):
    frames = list(itertools.islice(open_source(video).frames(loop=True), 40))
    assert frames[38].index == 38
    assert frames[38].time_s == pytest.approx(38 / 25)  # 37/25 + one period
    np.testing.assert_array_equal(frames[38].pixels_rgb, frames[0].pixels_rgb)


@pytest.mark.parametrize(
    ("make", "error", "text"),
    [
        (lambda tmp: tmp / "missing.mp4", FileNotFoundError, "no such file"),
        (lambda tmp: tmp, ValueError, "no .png/.jpg/.jpeg images"),
        (lambda tmp: _write(tmp / "broken.jpg", b"not a jpeg"), ValueError, "cannot read image"),
        (lambda tmp: _write(tmp / "clip.mp4", b"\x00" * 1000), ValueError, "cannot open video"),
        (lambda tmp: _write(tmp / "bag.mcap", b"garbage"), ValueError, "cannot read bag"),
    ],
    ids=["missing", "empty-folder", "broken-image", "broken-video", "broken-bag"],
)
def test_unreadable_inputs_raise_one_line_errors(tmp_path, make, error, text):
    with pytest.raises(error, match=text) as info:
        open_source(make(tmp_path))
    assert "\n" not in str(info.value)


def test_invalid_options_are_refused(stills):
    with pytest.raises(ValueError, match="rate must be positive"):
        open_source(stills, rate=0)
    with pytest.raises(ValueError, match="resize"):
        open_source(stills, resize=(0, 10))
    with pytest.raises(ValueError, match="only applies to bags"):
        open_source(stills, topic="/image")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- rosbag2 -------------------------------------------------------------------------------

BAG_STAMPS = [(1_700_000_000 + i, 123_000_000 * i) for i in range(3)]
BAG_LOG_NS = [5_000_000_000 + i * 200_000_000 for i in range(3)]  # recorded at 5 Hz


def _write_bag(path: Path, frames: list[np.ndarray], storage: str) -> Path:
    """A bag with a raw rgb8 topic, a JPEG CompressedImage topic and a non-image topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.LATEST)
    Image = store.types["sensor_msgs/msg/Image"]
    CompressedImage = store.types["sensor_msgs/msg/CompressedImage"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    String = store.types["std_msgs/msg/String"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        raw = writer.add_connection("/cam/image_raw", Image.__msgtype__, typestore=store)
        jpeg = writer.add_connection("/cam/image_raw/compressed", CompressedImage.__msgtype__,
                                     typestore=store)
        text = writer.add_connection("/notes", String.__msgtype__, typestore=store)
        for pixels, (sec, nanosec), log_ns in zip(frames, BAG_STAMPS, BAG_LOG_NS, strict=True):
            header = Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id="dashcam")
            height, width, step, data = encode_image(pixels, "rgb8")
            image = Image(header=header, height=height, width=width, encoding="rgb8",
                          is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8))
            writer.write(raw, log_ns, store.serialize_cdr(image, Image.__msgtype__))
            fmt, blob = encode_compressed(pixels, "jpeg", quality=95)
            compressed = CompressedImage(header=header, format=fmt,
                                         data=np.frombuffer(blob, np.uint8))
            writer.write(jpeg, log_ns + 1, store.serialize_cdr(compressed,
                                                               CompressedImage.__msgtype__))
            writer.write(text, log_ns, store.serialize_cdr(String(data="hi"), String.__msgtype__))
    return path


@pytest.fixture(scope="module")
def bag_frames(video_frames) -> list[np.ndarray]:
    return [f.pixels_rgb for f in video_frames[:3]]


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def bag(request, tmp_path_factory, bag_frames) -> Path:
    return _write_bag(tmp_path_factory.mktemp(request.param) / "bag", bag_frames, request.param)


def test_bag_raw_topic_is_chosen_first_and_round_trips(bag, bag_frames):
    source = open_source(bag)
    assert isinstance(source, BagSource)
    assert source.topic == "/cam/image_raw"
    assert source.length == 3
    frames = list(source)
    assert len(frames) == 3
    for frame, pixels, stamp in zip(frames, bag_frames, BAG_STAMPS, strict=True):
        np.testing.assert_array_equal(frame.pixels_rgb, pixels)  # lossless: exact
        assert frame.stamp == stamp
        assert frame.frame_id == "dashcam"
    assert [f.time_s for f in frames] == pytest.approx([0.0, 0.2, 0.4])  # the bag's timing


def test_bag_compressed_topic_decodes_to_the_same_picture(bag, bag_frames):
    source = open_source(bag, topic="cam/image_raw/compressed")  # relative name accepted
    assert source.topic == "/cam/image_raw/compressed"
    frames = list(source)
    assert len(frames) == 3
    for frame, pixels in zip(frames, bag_frames, strict=True):
        assert frame.pixels_rgb.shape == pixels.shape
        # JPEG q95: close, but it really went through the codec (RGB, not BGR: a swap
        # would make the error large on this colourful scene)
        error = np.abs(frame.pixels_rgb.astype(int) - pixels).mean()
        assert error < 3.0
    assert frames[2].stamp == BAG_STAMPS[2]


def test_bag_storage_file_opens_directly_and_rate_follows_the_bag(bag):
    storage_file = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    source = open_source(storage_file, resize=(320, 180))
    assert source.rate == pytest.approx(5.0, rel=0.05)
    frames = list(source)
    assert {f.pixels_rgb.shape for f in frames} == {(180, 320, 3)}


def test_bag_errors_name_the_topics(bag):
    with pytest.raises(ValueError, match="no image topic /notes") as info:
        open_source(bag, topic="/notes")
    assert "/cam/image_raw" in str(info.value)


def test_bag_without_image_topics_is_refused(tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.LATEST)
    String = store.types["std_msgs/msg/String"]
    with Writer(tmp_path / "bag", version=9) as writer:
        conn = writer.add_connection("/notes", String.__msgtype__, typestore=store)
        writer.write(conn, 1, store.serialize_cdr(String(data="x"), String.__msgtype__))
    with pytest.raises(ValueError, match="no image topics"):
        open_source(tmp_path / "bag")
