"""Unit tests for seg_perception.core.image_codec: known pixel values, zero-copy, bad input."""

from __future__ import annotations

import array
import random
import subprocess
import sys
import types
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import rosbags.image

from seg_perception.core import compressed_codec, image_codec
from seg_perception.core.compressed_codec import (
    decode_compressed,
    decode_compressed_msg,
    encode_compressed,
)
from seg_perception.core.image_codec import (
    SUPPORTED_ENCODINGS,
    DecodedImage,
    ImageConversionError,
    ImageFormatError,
    ImageMessageWriter,
    decode_image,
    decode_image_msg,
    encode_image,
)

CODEC_ERRORS = (ImageFormatError, ImageConversionError)

# A 2x4 (HxW) RGB image with a distinct value in every channel of every pixel.
RGB_2x4 = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 7 + 3


def image_msg(encoding: str, height: int, width: int, step: int, data, **kw) -> SimpleNamespace:
    return SimpleNamespace(
        encoding=encoding, height=height, width=width, step=step, data=data, is_bigendian=0, **kw
    )


def padded(rows: np.ndarray, pad: int, fill: int = 0xEE) -> bytes:
    """Row-major bytes of a HxN byte matrix with `pad` garbage bytes after every row."""
    rows = rows.reshape(rows.shape[0], -1)
    out = np.full((rows.shape[0], rows.shape[1] + pad), fill, dtype=np.uint8)
    out[:, : rows.shape[1]] = rows
    return out.tobytes()


def bt601_uyvy_to_rgb(y: int, u: int, v: int) -> tuple[float, float, float]:
    """BT.601 limited-range YUV -> RGB, the formula OpenCV's YUV422 conversions use."""
    c, d, e = y - 16, u - 128, v - 128
    r = 1.164 * c + 1.596 * e
    g = 1.164 * c - 0.391 * d - 0.813 * e
    b = 1.164 * c + 2.018 * d
    return tuple(min(255.0, max(0.0, x)) for x in (r, g, b))


# --- 8-bit packed encodings: known values and zero copy ------------------------------------


def test_supported_encodings_lists_every_decodable_encoding():
    for enc in (
        "rgb8",
        "bgr8",
        "rgba8",
        "bgra8",
        "mono8",
        "8UC1",
        "8UC3",
        "yuv422",
        "yuv422_yuy2",
        "bayer_rggb8",
        "bayer_bggr8",
        "bayer_gbrg8",
        "bayer_grbg8",
    ):
        assert enc in SUPPORTED_ENCODINGS


def test_rgb8_known_values_zero_copy():
    data = bytearray(RGB_2x4.tobytes())
    out = decode_image("rgb8", 2, 4, 12, data)
    assert out.channel_order == "rgb"
    assert out.pixels.shape == (2, 4, 3) and out.pixels.dtype == np.uint8
    np.testing.assert_array_equal(out.pixels, RGB_2x4)
    assert np.shares_memory(out.pixels, np.frombuffer(data, np.uint8))
    data[0] = 250  # a view, not a copy: writes to the message buffer show through
    assert out.pixels[0, 0, 0] == 250
    rgb = out.to_rgb()
    assert rgb.flags.c_contiguous and np.shares_memory(rgb, out.pixels)  # no copy needed


@pytest.mark.parametrize("encoding", ["bgr8", "8UC3"])
def test_bgr8_and_8uc3_known_values(encoding):
    bgr = RGB_2x4[:, :, ::-1]
    data = bgr.tobytes()
    out = decode_image(encoding, 2, 4, 12, data)
    assert out.channel_order == "bgr"
    np.testing.assert_array_equal(out.pixels, bgr)
    assert np.shares_memory(out.pixels, np.frombuffer(data, np.uint8))
    rgb = out.to_rgb()
    assert rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, RGB_2x4)


@pytest.mark.parametrize(("encoding", "order"), [("rgba8", "rgb"), ("bgra8", "bgr")])
def test_rgba8_bgra8_drop_alpha_zero_copy(encoding, order):
    src = RGB_2x4 if order == "rgb" else RGB_2x4[:, :, ::-1]
    alpha = np.full((2, 4, 1), 0x55, np.uint8)
    data = np.concatenate([src, alpha], axis=2).tobytes()
    out = decode_image(encoding, 2, 4, 16, data)
    assert out.channel_order == order
    assert out.pixels.shape == (2, 4, 3)
    np.testing.assert_array_equal(out.pixels, src)
    assert np.shares_memory(out.pixels, np.frombuffer(data, np.uint8))
    rgb = out.to_rgb()
    assert rgb.shape == (2, 4, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, RGB_2x4)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_and_8uc1_become_gray_rgb(encoding):
    gray = np.array([[0, 1, 127, 255], [10, 20, 30, 40]], np.uint8)
    out = decode_image(encoding, 2, 4, 4, gray.tobytes())
    assert out.channel_order == "rgb"
    np.testing.assert_array_equal(out.pixels, np.repeat(gray[:, :, None], 3, axis=2))


YUV_SAMPLES = [  # (Y0, U, Y1, V) per pixel pair
    (16, 128, 235, 128),  # black, white
    (81, 90, 145, 240),  # reddish, brighter
    (41, 240, 210, 110),
    (120, 90, 60, 200),
]


def _yuv_expected() -> np.ndarray:
    expected = np.zeros((2, 4, 3))
    for row in range(2):
        for pair in range(2):
            y0, u, y1, v = YUV_SAMPLES[row * 2 + pair]
            expected[row, 2 * pair] = bt601_uyvy_to_rgb(y0, u, v)
            expected[row, 2 * pair + 1] = bt601_uyvy_to_rgb(y1, u, v)
    return expected


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy"])
def test_yuv422_is_uyvy(encoding):
    data = bytes(b for y0, u, y1, v in YUV_SAMPLES for b in (u, y0, v, y1))
    out = decode_image(encoding, 2, 4, 8, data)
    assert out.channel_order == "rgb" and out.pixels.shape == (2, 4, 3)
    np.testing.assert_allclose(out.pixels.astype(float), _yuv_expected(), atol=2)


@pytest.mark.parametrize("encoding", ["yuv422_yuy2", "yuyv"])
def test_yuv422_yuy2_is_yuyv(encoding):
    data = bytes(b for y0, u, y1, v in YUV_SAMPLES for b in (y0, u, y1, v))
    out = decode_image(encoding, 2, 4, 8, data)
    assert out.channel_order == "rgb" and out.pixels.shape == (2, 4, 3)
    np.testing.assert_allclose(out.pixels.astype(float), _yuv_expected(), atol=2)


def nv_planes(h: int, w: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Random full-range Y plane (h x w) and interleaved chroma plane (h/2 x w)."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (h, w), dtype=np.uint8),
        rng.integers(0, 256, (h // 2, w), dtype=np.uint8),
    )


def bt601_nv_to_rgb(y: np.ndarray, chroma: np.ndarray, encoding: str) -> np.ndarray:
    """Textbook NV12/NV21 -> RGB: each 2x2 block shares one (U, V), BT.601 limited range."""
    first, second = chroma[:, 0::2].astype(float), chroma[:, 1::2].astype(float)
    u, v = (first, second) if encoding == "nv12" else (second, first)
    d = np.repeat(np.repeat(u - 128, 2, axis=0), 2, axis=1)
    e = np.repeat(np.repeat(v - 128, 2, axis=0), 2, axis=1)
    c = y.astype(float) - 16
    rgb = [1.164 * c + 1.596 * e, 1.164 * c - 0.391 * d - 0.813 * e, 1.164 * c + 2.018 * d]
    return np.clip(np.dstack(rgb), 0, 255)


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
def test_nv12_nv21_match_bt601_formula(encoding):
    # Legal video-range samples (Y 16..235, U/V 16..240): the textbook formula applies as is.
    assert encoding in SUPPORTED_ENCODINGS
    y, chroma = nv_planes(6, 8)
    y = (16 + y.astype(int) * 219 // 255).astype(np.uint8)
    chroma = (16 + chroma.astype(int) * 224 // 255).astype(np.uint8)
    out = decode_image(encoding, 6, 8, 8, np.vstack([y, chroma]).tobytes())
    assert out.channel_order == "rgb" and out.pixels.shape == (6, 8, 3)
    np.testing.assert_allclose(out.pixels, bt601_nv_to_rgb(y, chroma, encoding), atol=1)


def test_nv21_is_nv12_with_chroma_swapped():
    y, chroma = nv_planes(4, 6)
    swapped = chroma.reshape(2, 3, 2)[:, :, ::-1].reshape(2, 6)
    nv12 = decode_image("nv12", 4, 6, 6, np.vstack([y, chroma]).tobytes())
    nv21 = decode_image("nv21", 4, 6, 6, np.vstack([y, swapped]).tobytes())
    np.testing.assert_array_equal(nv12.pixels, nv21.pixels)
    assert len(np.unique(nv12.pixels.reshape(-1, 3), axis=0)) > 12  # not a flat image


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
def test_nv12_nv21_match_rosbags_image_and_skip_row_padding(encoding):
    h, w = 8, 10
    y, chroma = nv_planes(h, w, seed=11)
    planes = np.vstack([y, chroma])
    # rosbags-image takes `height` as the buffer's row count (h*3/2) and no row padding;
    # sensor_msgs (image_encodings getHeightScaling) uses the image height, as we do.
    reference = rosbags.image.message_to_cvimage(
        image_msg(encoding, h * 3 // 2, w, w, planes.tobytes()), "rgb8"
    )
    out = decode_image(encoding, h, w, w, planes.tobytes())
    np.testing.assert_array_equal(out.pixels, reference)
    # Both planes have row stride `step`; the padding after every row is skipped.
    with_pad = decode_image(encoding, h, w, w + 6, padded(planes, pad=6))
    np.testing.assert_array_equal(with_pad.pixels, reference)
    message = image_msg(encoding, h, w, w, planes.tobytes())
    np.testing.assert_array_equal(decode_image_msg(message).pixels, reference)


BAYER_LAYOUTS = {  # encoding -> colours of the 2x2 cell, row-major
    "bayer_rggb8": "RGGB",
    "bayer_bggr8": "BGGR",
    "bayer_gbrg8": "GBRG",
    "bayer_grbg8": "GRBG",
}


@pytest.mark.parametrize("encoding", sorted(BAYER_LAYOUTS))
def test_bayer_uniform_colour_demosaics_to_that_colour(encoding):
    # Distinct R, G and B levels, so a wrong pattern mapping cannot pass.
    colour = {"R": 200, "G": 100, "B": 50}
    cell = BAYER_LAYOUTS[encoding]
    h, w = 6, 8
    mosaic = np.zeros((h, w), np.uint8)
    for i, name in enumerate(cell):
        mosaic[i // 2 :: 2, i % 2 :: 2] = colour[name]
    out = decode_image(encoding, h, w, w, mosaic.tobytes())
    assert out.channel_order == "rgb" and out.pixels.shape == (h, w, 3)
    expected = np.broadcast_to(np.array([200, 100, 50], np.uint8), (h, w, 3))
    np.testing.assert_allclose(out.pixels, expected, atol=1)


def bayer_mosaic(cell: str, h: int, w: int, colour: dict[str, int]) -> np.ndarray:
    mosaic = np.zeros((h, w), np.uint8)
    for i, name in enumerate(cell):
        mosaic[i // 2 :: 2, i % 2 :: 2] = colour[name]
    return mosaic


@pytest.mark.parametrize("encoding", sorted(BAYER_LAYOUTS))
@pytest.mark.parametrize(("h", "w"), [(2, 2), (2, 3), (2, 8), (3, 2), (7, 2)])
def test_bayer_two_pixels_high_or_wide_is_not_black(encoding, h, w):
    # OpenCV's demosaicing needs 3 rows and columns and returns all zeros below that.
    mosaic = bayer_mosaic(BAYER_LAYOUTS[encoding], h, w, {"R": 200, "G": 100, "B": 50})
    out = decode_image(encoding, h, w, w + 3, padded(mosaic, pad=3))
    assert out.channel_order == "rgb" and out.pixels.shape == (h, w, 3)
    expected = np.broadcast_to(np.array([200, 100, 50], np.uint8), (h, w, 3))
    np.testing.assert_array_equal(out.pixels, expected)


TRANSPOSED_BAYER = {  # the mosaic's transpose has this pattern (G sites swap rows)
    "bayer_rggb8": "bayer_rggb8",
    "bayer_bggr8": "bayer_bggr8",
    "bayer_gbrg8": "bayer_grbg8",
    "bayer_grbg8": "bayer_gbrg8",
}


@pytest.mark.parametrize("encoding", sorted(BAYER_LAYOUTS))
def test_bayer_two_pixels_high_or_wide_keeps_the_picture(encoding):
    # Left half orange, right half blue: each end keeps its own colour, exactly.
    cell = BAYER_LAYOUTS[encoding]
    mosaic = bayer_mosaic(cell, 2, 8, {"R": 200, "G": 100, "B": 50})
    mosaic[:, 4:] = bayer_mosaic(cell, 2, 4, {"R": 20, "G": 90, "B": 240})
    wide = decode_image(encoding, 2, 8, 8, mosaic.tobytes()).pixels
    tall = decode_image(TRANSPOSED_BAYER[encoding], 8, 2, 2, mosaic.T.tobytes()).pixels
    np.testing.assert_array_equal(tall.transpose(1, 0, 2), wide)
    np.testing.assert_array_equal(wide[:, :2], np.full((2, 2, 3), [200, 100, 50]))
    np.testing.assert_array_equal(wide[:, -2:], np.full((2, 2, 3), [20, 90, 240]))


# --- row padding ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "8UC3"])
def test_padded_step_is_skipped_and_zero_copy(encoding):
    src = RGB_2x4 if encoding == "rgb8" else RGB_2x4[:, :, ::-1]
    data = padded(src, pad=5)  # 17-byte rows: odd padding, not a multiple of 3
    out = decode_image(encoding, 2, 4, 17, data)
    np.testing.assert_array_equal(out.pixels, src)
    assert np.shares_memory(out.pixels, np.frombuffer(data, np.uint8))
    assert not out.pixels.flags.c_contiguous
    rgb = out.to_rgb()
    assert rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, RGB_2x4)


@pytest.mark.parametrize("encoding", ["rgba8", "bgra8"])
def test_padded_step_with_alpha(encoding):
    src = RGB_2x4 if encoding == "rgba8" else RGB_2x4[:, :, ::-1]
    rgba = np.concatenate([src, np.zeros((2, 4, 1), np.uint8)], axis=2)
    data = padded(rgba, pad=3)
    out = decode_image(encoding, 2, 4, 19, data)
    assert np.shares_memory(out.pixels, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(out.to_rgb(), RGB_2x4)


@pytest.mark.parametrize(
    ("encoding", "bpp"),
    [("mono8", 1), ("8UC1", 1), ("yuv422", 2), ("yuv422_yuy2", 2), ("bayer_rggb8", 1)],
)
def test_padded_step_for_converted_encodings(encoding, bpp):
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (4, 6 * bpp), dtype=np.uint8)
    unpadded = decode_image(encoding, 4, 6, 6 * bpp, rows.tobytes())
    with_pad = decode_image(encoding, 4, 6, 6 * bpp + 7, padded(rows, pad=7))
    np.testing.assert_array_equal(with_pad.pixels, unpadded.pixels)


# --- buffer types and message objects --------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        bytes,
        bytearray,
        lambda b: memoryview(b),
        lambda b: array.array("B", b),
        lambda b: np.frombuffer(b, np.uint8).copy(),
    ],
    ids=["bytes", "bytearray", "memoryview", "array", "ndarray"],
)
def test_all_buffer_types_decode_zero_copy(make):
    data = make(RGB_2x4.tobytes())
    out = decode_image("rgb8", 2, 4, 12, data)
    np.testing.assert_array_equal(out.pixels, RGB_2x4)
    assert np.shares_memory(out.pixels, np.frombuffer(data, np.uint8))


def test_is_bigendian_is_ignored_for_8bit():
    a = decode_image("rgb8", 2, 4, 12, RGB_2x4.tobytes(), is_bigendian=0)
    b = decode_image("rgb8", 2, 4, 12, RGB_2x4.tobytes(), is_bigendian=1)
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_decode_image_msg_duck_typed():
    msg = image_msg("bgr8", 2, 4, 12, array.array("B", RGB_2x4[:, :, ::-1].tobytes()))
    np.testing.assert_array_equal(decode_image_msg(msg).to_rgb(), RGB_2x4)
    msg.width = 1000
    with pytest.raises(ImageConversionError, match="max_pixels"):
        decode_image_msg(msg, max_pixels=1500)


def test_decode_image_msg_rejects_non_messages():
    with pytest.raises(ImageConversionError, match="sensor_msgs/Image"):
        decode_image_msg(object())
    with pytest.raises(ImageConversionError, match="sensor_msgs/CompressedImage"):
        decode_compressed_msg(SimpleNamespace(data=b""))


def test_real_sensor_msgs_image_decodes():
    sensor_msgs_msg = pytest.importorskip("sensor_msgs.msg")
    msg = sensor_msgs_msg.Image()
    msg.header.frame_id = "camera"
    msg.encoding = "rgb8"
    msg.height, msg.width, msg.step = 2, 4, 15  # padded rows
    msg.data = padded(RGB_2x4, pad=3)
    out = decode_image_msg(msg)
    np.testing.assert_array_equal(out.pixels, RGB_2x4)
    assert np.shares_memory(out.pixels, np.frombuffer(msg.data, np.uint8))

    msg.encoding = "mono16"
    with pytest.raises(ImageFormatError, match="mono16"):
        decode_image_msg(msg)


def test_real_sensor_msgs_image_from_encode_image():
    sensor_msgs_msg = pytest.importorskip("sensor_msgs.msg")
    msg = sensor_msgs_msg.Image(encoding="bgra8")
    bgra = np.dstack([RGB_2x4[:, :, ::-1], np.full((2, 4), 9, np.uint8)])
    msg.height, msg.width, msg.step, msg.data = encode_image(bgra, "bgra8")
    np.testing.assert_array_equal(decode_image_msg(msg).to_rgb(), RGB_2x4)


def test_message_writer_reuses_one_buffer_and_round_trips(dashcam_still):
    """The node's output path: real sensor_msgs/Image, one kept buffer, exact pixels."""
    sensor_msgs_msg = pytest.importorskip("sensor_msgs.msg")
    std_msgs_msg = pytest.importorskip("std_msgs.msg")
    write = ImageMessageWriter(sensor_msgs_msg.Image)
    header = std_msgs_msg.Header(frame_id="camera")
    first, second = dashcam_still("test1"), dashcam_still("test2")
    msg = write(first, "rgb8", header)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (720, 1280, 3840, "rgb8")
    assert msg.header.frame_id == "camera"
    np.testing.assert_array_equal(decode_image_msg(msg).pixels, first)
    buffer = msg.data
    again = write(second[::-1], "rgb8")  # a non-contiguous view is packed too
    assert again.data is buffer  # same size: no new allocation
    np.testing.assert_array_equal(decode_image_msg(again).pixels, second[::-1])
    labels = write(first[:, :, 0], "mono8")
    assert (labels.step, len(labels.data)) == (1280, 1280 * 720)
    np.testing.assert_array_equal(np.frombuffer(labels.data, np.uint8).reshape(720, 1280),
                                  first[:, :, 0])
    with pytest.raises(ImageConversionError, match="HxWx3"):
        write(first[:, :, 0], "rgb8")


def test_message_writer_works_with_any_class_with_image_fields():
    write = ImageMessageWriter(SimpleNamespace)
    msg = write(RGB_2x4, "bgr8")
    assert (msg.height, msg.width, msg.step, msg.is_bigendian) == (2, 4, 12, 0)
    assert bytes(msg.data) == RGB_2x4.tobytes()


def test_module_does_not_import_ros():
    code = (
        "import sys, seg_perception.core.image_codec; "
        "bad = [m for m in ('rclpy', 'sensor_msgs') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- cv_bridge fallback ----------------------------------------------------------------------


@pytest.fixture
def fake_cv_bridge(monkeypatch):
    """Install a stand-in `cv_bridge` module; yields the list of calls it received."""
    calls: list[tuple[str, str]] = []

    class CvBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):
            calls.append((msg.encoding, desired_encoding))
            if msg.encoding == "broken16":
                raise RuntimeError("cannot convert")
            return np.full((msg.height, msg.width, 3), 42, np.uint8)

    module = types.ModuleType("cv_bridge")
    module.CvBridge = CvBridge
    monkeypatch.setitem(sys.modules, "cv_bridge", module)
    image_codec._cv_bridge.cache_clear()
    yield calls
    image_codec._cv_bridge.cache_clear()


def test_cv_bridge_fallback_for_unhandled_encoding(fake_cv_bridge):
    msg = image_msg("mono16", 2, 4, 8, bytes(16))
    out = decode_image_msg(msg)
    assert out.channel_order == "rgb" and out.pixels.shape == (2, 4, 3)
    assert fake_cv_bridge == [("mono16", "rgb8")]
    with pytest.raises(ImageConversionError, match="max_pixels"):
        decode_image_msg(msg, max_pixels=4)
    # decode_image itself never falls back
    with pytest.raises(ImageFormatError):
        decode_image("mono16", 2, 4, 8, bytes(16))


def test_cv_bridge_failure_becomes_format_error(fake_cv_bridge):
    with pytest.raises(ImageFormatError, match="broken16"):
        decode_image_msg(image_msg("broken16", 2, 4, 8, bytes(16)))


def test_without_cv_bridge_unhandled_encoding_is_format_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv_bridge", None)  # makes `import cv_bridge` fail
    image_codec._cv_bridge.cache_clear()
    try:
        with pytest.raises(ImageFormatError, match="32FC1"):
            decode_image_msg(image_msg("32FC1", 2, 4, 16, bytes(32)))
    finally:
        image_codec._cv_bridge.cache_clear()


# --- malformed raw images ------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding",
    [
        "mono16",
        "rgb16",
        "bgr16",
        "rgba16",
        "bgra16",
        "16UC1",
        "16SC1",
        "32FC1",
        "64FC1",
        "8UC4",
        "bayer_rggb16",
        "nv24",  # nv21 was here until nv12/nv21 became supported
        "RGB8",
        "jpeg",
        "",
        "   ",
    ],
)
def test_unsupported_encodings_raise_format_error(encoding):
    with pytest.raises(ImageFormatError) as info:
        decode_image(encoding, 2, 4, 32, bytes(64))
    message = str(info.value)
    assert repr(encoding) in message
    assert "supported" in message and "rgb8" in message


@pytest.mark.parametrize("encoding", [None, 3, b"rgb8", ["rgb8"]])
def test_non_string_encoding_raises_format_error(encoding):
    with pytest.raises(ImageFormatError, match="encoding"):
        decode_image(encoding, 2, 4, 12, bytes(24))


def test_format_is_checked_before_geometry():
    with pytest.raises(ImageFormatError):
        decode_image("32FC1", -1, 0, -5, None)


MALFORMED = [
    # (kwargs overriding a valid 2x4 rgb8 image, key word in the message)
    ({"width": 0}, "positive"),
    ({"height": 0}, "positive"),
    ({"width": -4}, "positive"),
    ({"height": -2, "step": -12}, "positive"),
    ({"step": 11}, "step"),
    ({"step": 0}, "step"),
    ({"step": -12}, "step"),
    ({"data": bytes(23)}, "too short"),
    ({"data": b""}, "too short"),
    ({"data": bytes(25)}, "too long"),
    ({"step": 13}, "too short"),  # padding declared but not present
    ({"data": None}, "None"),
    ({"data": "abc" * 8}, "str"),
    ({"data": list(range(24))}, "bytes-like"),
    ({"data": np.zeros(48, np.uint8)[::2]}, "contiguous"),
    ({"height": "2"}, "integer"),
    ({"width": 4.0}, "integer"),
    ({"step": None}, "integer"),
    ({"height": True}, "integer"),
    ({"height": 2**40, "width": 2**40, "step": 3 * 2**40}, "too short"),
    ({"encoding": "yuv422", "width": 3, "step": 6, "data": bytes(12)}, "odd"),
    ({"encoding": "yuv422_yuy2", "width": 5, "step": 10, "data": bytes(20)}, "odd"),
    ({"encoding": "bayer_rggb8", "height": 1, "step": 4, "data": bytes(4)}, "2x2"),
    ({"encoding": "nv12", "width": 3, "step": 3, "data": bytes(9)}, "odd"),
    ({"encoding": "nv21", "height": 3, "step": 4, "data": bytes(18)}, "odd"),
    ({"encoding": "nv12", "step": 3, "data": bytes(9)}, "step"),
    ({"encoding": "nv12", "step": 4, "data": bytes(8)}, r"too short.*step\*height\*3/2"),
    ({"encoding": "nv21", "step": 4, "data": bytes(13)}, "too long"),
]


@pytest.mark.parametrize(("override", "keyword"), MALFORMED)
def test_malformed_raw_images_raise_conversion_error(override, keyword):
    kwargs = {"encoding": "rgb8", "height": 2, "width": 4, "step": 12, "data": bytes(24)}
    kwargs.update(override)
    with pytest.raises(ImageConversionError, match=keyword):
        decode_image(**kwargs)


def test_max_pixels_names_dimensions_and_limit():
    data = bytes(720 * 1280 * 3)
    assert decode_image("rgb8", 720, 1280, 3840, data, max_pixels=1280 * 720).pixels.shape
    with pytest.raises(ImageConversionError) as info:
        decode_image("rgb8", 720, 1280, 3840, data, max_pixels=640 * 480)
    message = str(info.value)
    assert "1280x720" in message and "max_pixels=307200" in message
    # Checked before the data: a huge declared image fails on the limit, not the length.
    with pytest.raises(ImageConversionError, match="max_pixels"):
        decode_image("rgb8", 10**6, 10**6, 3 * 10**6, b"", max_pixels=10**7)


def test_errors_are_value_errors():
    assert issubclass(ImageFormatError, ValueError)
    assert issubclass(ImageConversionError, ValueError)


# --- encode_image ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "pixels"),
    [
        ("rgb8", RGB_2x4),
        ("bgr8", RGB_2x4[:, :, ::-1]),  # non-contiguous input is packed
        ("rgba8", np.dstack([RGB_2x4, np.full((2, 4), 7, np.uint8)])),
        ("bgra8", np.dstack([RGB_2x4[:, :, ::-1], np.full((2, 4), 7, np.uint8)])),
    ],
)
def test_encode_decode_round_trip_colour(encoding, pixels):
    height, width, step, data = encode_image(pixels, encoding)
    channels = pixels.shape[2]
    assert (height, width, step) == (2, 4, 4 * channels)
    assert isinstance(data, bytes) and len(data) == step * height
    assert data == np.ascontiguousarray(pixels).tobytes()
    np.testing.assert_array_equal(
        decode_image(encoding, height, width, step, data).to_rgb(), RGB_2x4
    )


@pytest.mark.parametrize("shape", [(3, 5), (3, 5, 1)])
def test_encode_decode_round_trip_mono(shape):
    gray = np.arange(15, dtype=np.uint8).reshape(shape) * 17
    height, width, step, data = encode_image(gray, "mono8")
    assert (height, width, step) == (3, 5, 5)
    out = decode_image("mono8", height, width, step, data)
    np.testing.assert_array_equal(out.pixels, np.repeat(gray.reshape(3, 5, 1), 3, axis=2))


def test_encode_image_full_hd_round_trip_is_exact(dashcam_still):
    rgb = dashcam_still("test1")
    height, width, step, data = encode_image(rgb, "rgb8")
    out = decode_image("rgb8", height, width, step, data)
    np.testing.assert_array_equal(out.pixels, rgb)


@pytest.mark.parametrize(
    ("pixels", "encoding", "error", "keyword"),
    [
        (RGB_2x4, "rgb16", ImageFormatError, "rgb16"),
        (RGB_2x4, "yuv422", ImageFormatError, "yuv422"),
        (RGB_2x4, None, ImageFormatError, "None"),
        (RGB_2x4.astype(np.uint16), "rgb8", ImageConversionError, "uint8"),
        (RGB_2x4.astype(np.float32), "rgb8", ImageConversionError, "uint8"),
        (RGB_2x4, "rgba8", ImageConversionError, "HxWx4"),
        (RGB_2x4, "mono8", ImageConversionError, "HxW"),
        (RGB_2x4[:, :, 0], "rgb8", ImageConversionError, "HxWx3"),
        (np.zeros((0, 4, 3), np.uint8), "rgb8", ImageConversionError, "empty"),
    ],
)
def test_encode_image_rejects_mismatched_input(pixels, encoding, error, keyword):
    with pytest.raises(error, match=keyword):
        encode_image(pixels, encoding)


# --- compressed ------------------------------------------------------------------------------


def png_chunks(*chunks: tuple[str, bytes]) -> bytes:
    """A PNG stream assembled from (type, payload) chunks with valid CRCs."""
    out = b"\x89PNG\r\n\x1a\n"
    for kind, payload in chunks:
        body = kind.encode() + payload
        out += len(payload).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    return out


def smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)]).astype(np.uint8)


def test_png_round_trip_is_exact():
    rgb = smooth_rgb()
    fmt, data = encode_compressed(rgb, "png")
    assert fmt == "rgb8; png compressed bgr8"
    assert data.startswith(b"\x89PNG")
    out = decode_compressed(fmt, data)
    assert out.channel_order == "bgr"
    np.testing.assert_array_equal(out.to_rgb(), rgb)


def test_jpeg_round_trip_within_tolerance():
    rgb = smooth_rgb()
    fmt, data = encode_compressed(rgb, "jpeg", quality=95)
    assert fmt == "rgb8; jpeg compressed bgr8"
    assert data.startswith(b"\xff\xd8\xff")
    out = decode_compressed(fmt, data)
    assert out.channel_order == "bgr" and out.pixels.shape == rgb.shape
    diff = np.abs(out.to_rgb().astype(int) - rgb.astype(int))
    assert diff.mean() < 2 and diff.max() < 20


def test_jpeg_quality_trades_size(dashcam_still):
    rgb = dashcam_still("test1")
    _, high = encode_compressed(rgb, "jpeg", quality=95)
    _, low = encode_compressed(rgb, "jpeg", quality=30)
    assert len(low) < len(high)
    out = decode_compressed_msg(SimpleNamespace(format="jpeg", data=array.array("B", high)))
    assert out.pixels.shape == rgb.shape
    assert np.abs(out.to_rgb().astype(int) - rgb.astype(int)).mean() < 3


@pytest.mark.parametrize(
    "fmt",
    [
        "jpeg",
        "JPEG",
        "jpg",
        " jpeg ",
        "rgb8; jpeg compressed bgr8",
        "bgr8; jpeg compressed bgr8",
        "mono8; jpeg compressed mono8",
        "",
    ],
)
def test_compressed_format_strings_accepted_for_jpeg(fmt):
    _, data = encode_compressed(smooth_rgb(8, 16), "jpeg")
    assert decode_compressed(fmt, data).pixels.shape == (8, 16, 3)


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed bgr8", "rgba8; png compressed bgra8"])
def test_compressed_format_strings_accepted_for_png(fmt):
    rgb = smooth_rgb(8, 16)
    _, data = encode_compressed(rgb, "png")
    np.testing.assert_array_equal(decode_compressed(fmt, data).to_rgb(), rgb)


@pytest.mark.parametrize(
    "fmt",
    [
        "rgb8; png compressed rgb8",
        "bgr8; png compressed rgb8",
        "rgba8; png compressed rgba8",
        "rgb8; jpeg compressed rgb8",
    ],
)
def test_compressed_rgb_target_is_rgb_as_compressed_image_transport_reads_it(fmt):
    # compressed_image_transport's subscriber: for a colour original encoding, the decoded
    # data is BGR only if "compressed bgr" follows the ';', otherwise RGB. Publishers that
    # write "compressed rgb8" hand their RGB bytes to the encoder unconverted, like this:
    rgb = smooth_rgb()
    data = cv2.imencode(".png" if "png" in fmt else ".jpg", rgb)[1].tobytes()
    out = decode_compressed(fmt, data)
    assert out.channel_order == "rgb"
    diff = np.abs(out.to_rgb().astype(int) - rgb.astype(int))
    assert (diff.max() == 0) if "png" in fmt else (diff.mean() < 2 and diff.max() < 20)


@pytest.mark.parametrize(
    "fmt",
    [
        "png",
        "",
        "rgb8; png compressed bgr8",
        "bgra8; png compressed bgra8",
        "8UC3; png compressed rgb8",
    ],
)
def test_compressed_bgr_unless_a_colour_original_names_an_rgb_target(fmt):
    # 8UC3 is not a colour encoding for image_encodings: the data passes through as 8UC3,
    # which cv_bridge reads as BGR.
    rgb = smooth_rgb(8, 16)
    _, data = encode_compressed(rgb, "png")
    out = decode_compressed(fmt, data)
    assert out.channel_order == "bgr"
    np.testing.assert_array_equal(out.to_rgb(), rgb)


def png16(shape: tuple[int, ...]) -> bytes:
    return cv2.imencode(".png", np.full(shape, 40_000, np.uint16))[1].tobytes()


@pytest.mark.parametrize(
    ("fmt", "shape"),
    [
        ("16UC1; png compressed ", (6, 8)),  # what compressed_image_transport writes
        ("mono16; png compressed ", (6, 8)),
        ("rgb16; png compressed bgr16", (6, 8, 3)),
        ("png", (6, 8)),  # the format string need not say it: the PNG header does
        ("", (6, 8, 3)),
        ("rgb8; png compressed bgr8", (6, 8, 3)),
        ("mono8; png compressed ", (6, 8)),
    ],
)
def test_16bit_png_is_refused_like_raw_16bit(fmt, shape):
    data = png16(shape)
    with pytest.raises(ImageFormatError, match="16") as info:
        decode_compressed(fmt, data)
    message = str(info.value)
    assert repr(fmt) in message and "8-bit" in message
    with pytest.raises(ImageFormatError, match="16UC1"):  # the raw counterpart
        decode_image("16UC1", 6, 8, 16, bytes(96))


def test_16bit_original_encoding_is_refused_even_in_an_8bit_jpeg():
    # compressed_image_transport sends mono16 as an 8-bit JPEG and its subscriber scales
    # it back to 16 bits; the original is still a 16-bit (depth) image.
    _, jpeg = encode_compressed(smooth_rgb(8, 8), "jpeg")
    for fmt in ("mono16; jpeg compressed mono8", "16UC1; jpeg compressed mono8"):
        with pytest.raises(ImageFormatError, match="more than 8 bits"):
            decode_compressed(fmt, jpeg)


def test_decoded_bit_depth_is_checked_not_only_headers(monkeypatch):
    _, jpeg = encode_compressed(smooth_rgb(8, 8), "jpeg")
    real_imdecode = cv2.imdecode

    def imdecode_16bit(buf, flags):  # e.g. a 12-bit JPEG, which OpenCV decodes to uint16
        return real_imdecode(buf, flags).astype(np.uint16) * 257

    monkeypatch.setattr(compressed_codec.cv2, "imdecode", imdecode_16bit)
    with pytest.raises(ImageFormatError, match="uint16"):
        decode_compressed("rgb8; jpeg compressed bgr8", jpeg)


@pytest.mark.parametrize(
    "fmt",
    [
        "tiff",
        "webp",
        "bmp",
        "rgb8; webp compressed bgr8",
        "16UC1; compressedDepth png",
        "32FC1; compressedDepth rvl",
        "rgb8;",
        None,
        5,
    ],
)
def test_unknown_compressed_formats_raise_format_error(fmt):
    _, data = encode_compressed(smooth_rgb(8, 16), "png")
    with pytest.raises(ImageFormatError):
        decode_compressed(fmt, data)


def test_corrupt_jpeg_raises_conversion_error():
    _, data = encode_compressed(smooth_rgb(), "jpeg")
    garbage_body = data[:2] + bytes(range(256)) * 4
    for payload in (data[:100], garbage_body, data[:3] + b"\x00" * (len(data) - 3)):
        with pytest.raises(ImageConversionError, match="corrupt|magic"):
            decode_compressed("jpeg", payload)


def test_non_image_payloads_raise_conversion_error():
    for payload, keyword in [
        (b"", "empty"),
        (b"hello world, not an image", "magic"),
        (cv2.imencode(".bmp", smooth_rgb(4, 4))[1].tobytes(), "magic"),  # OpenCV could read it
        (None, "None"),
    ]:
        with pytest.raises(ImageConversionError, match=keyword):
            decode_compressed("jpeg", payload)


def test_compressed_max_pixels_checked_from_header_before_decoding():
    # A PNG header that claims 100000x100000 pixels and carries no image data: the header
    # check must refuse it by size (not by trying to decode 30 GB).
    bomb = png_chunks(
        ("IHDR", (100_000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"),
        ("IDAT", zlib.compress(bytes(1000))),
        ("IEND", b""),
    )
    with pytest.raises(ImageConversionError, match=r"100000x100000.*max_pixels=1000000"):
        decode_compressed("png", bomb, max_pixels=1_000_000)

    _, jpeg = encode_compressed(smooth_rgb(48, 64), "jpeg")
    assert compressed_codec._jpeg_size(memoryview(jpeg)) == (48, 64)
    with pytest.raises(ImageConversionError, match=r"64x48.*max_pixels=1000"):
        decode_compressed("jpeg", jpeg, max_pixels=1000)
    assert decode_compressed("jpeg", jpeg, max_pixels=48 * 64).pixels.shape == (48, 64, 3)


def test_png_chunk_lengths_are_checked_before_opencv_sees_them():
    # A 300-byte PNG whose IDAT length claims ~2 GB made OpenCV allocate it and stall for
    # seconds (found by the fuzz test); it must be refused up front.
    _, png = encode_compressed(smooth_rgb(8, 8), "png")
    lying = bytearray(png)
    assert lying[37:41] == b"IDAT"
    lying[33:37] = (2_181_038_291).to_bytes(4, "big")
    with pytest.raises(ImageConversionError, match="claims 2181038291 bytes"):
        decode_compressed("png", bytes(lying))
    with pytest.raises(ImageConversionError, match="no IEND"):
        decode_compressed("png", png[:-12])
    with pytest.raises(ImageConversionError, match="IHDR"):
        decode_compressed("png", png[:8] + png[16:])


def test_encode_compressed_rejects_bad_input():
    with pytest.raises(ImageFormatError, match="webp"):
        encode_compressed(smooth_rgb(), "webp")
    with pytest.raises(ValueError, match="quality"):
        encode_compressed(smooth_rgb(), "jpeg", quality=101)
    with pytest.raises(ImageConversionError, match="HxWx3"):
        encode_compressed(smooth_rgb()[:, :, 0], "png")
    with pytest.raises(ImageConversionError, match="HxWx3"):
        encode_compressed(smooth_rgb().astype(np.float32), "png")


# --- DecodedImage ----------------------------------------------------------------------------


def test_decoded_image_is_frozen_and_to_rgb_copies_only_when_needed():
    px = np.ascontiguousarray(RGB_2x4)
    image = DecodedImage(px, "rgb")
    assert image.to_rgb() is px
    with pytest.raises(AttributeError):
        image.channel_order = "bgr"  # type: ignore[misc]
    bgr = DecodedImage(np.ascontiguousarray(RGB_2x4[:, :, ::-1]), "bgr")
    np.testing.assert_array_equal(bgr.to_rgb(), RGB_2x4)
    assert DecodedImage(px, "rgb") == DecodedImage(px, "rgb")


# --- fuzzing ---------------------------------------------------------------------------------

FUZZ_ENCODINGS = [
    *SUPPORTED_ENCODINGS,
    "mono16",
    "rgb16",
    "32FC1",
    "16UC1",
    "",
    "RGB8",
    "bayer_rggb16",
    None,
    8,
    b"rgb8",
]
BYTES_PER_PIXEL = {e: s.bpp for e, s in image_codec._SPECS.items()}
NV_ENCODINGS = ("nv12", "nv21")  # plus height/2 rows of chroma after the Y rows


def _random_dim(rng: random.Random):
    roll = rng.random()
    if roll < 0.80:
        return rng.randint(1, 9)
    if roll < 0.90:
        return rng.choice([0, -1, -7, 2**31, 2**63, 10**12])
    return rng.choice([None, "3", 2.0, np.int64(3), np.uint32(2), True, [2]])


def _as_random_buffer(rng: random.Random, raw: bytes) -> object:
    return rng.choice(
        [
            bytes,
            bytearray,
            memoryview,
            lambda b: array.array("B", b),
            lambda b: np.frombuffer(b, np.uint8),
        ]
    )(raw)


def _random_valid_raw_case(rng: random.Random) -> tuple:
    encoding = rng.choice(SUPPORTED_ENCODINGS)
    height, width = rng.randint(2, 9), rng.randint(1, 9)
    if encoding.startswith(("yuv", "uyvy", "nv")) or encoding.startswith("bayer"):
        width = 2 * rng.randint(1, 5)
    if encoding in NV_ENCODINGS:
        height = 2 * rng.randint(1, 4)
    rows = height * 3 // 2 if encoding in NV_ENCODINGS else height
    step = width * BYTES_PER_PIXEL[encoding] + rng.choice([0, 0, 1, 5])
    data = _as_random_buffer(rng, bytes(rng.getrandbits(8) for _ in range(step * rows)))
    return encoding, height, width, step, data, rng.choice([0, 1])


def _random_raw_case(rng: random.Random) -> tuple:
    if rng.random() < 0.3:
        return _random_valid_raw_case(rng)
    encoding = rng.choice(FUZZ_ENCODINGS)
    height, width = _random_dim(rng), _random_dim(rng)
    bpp = BYTES_PER_PIXEL.get(encoding, rng.randint(1, 8)) if isinstance(encoding, str) else 3
    valid_geometry = type(height) is int and type(width) is int and height > 0 < width
    if valid_geometry and rng.random() < 0.7:
        if encoding in ("yuv422", "yuv422_yuy2", "uyvy", "yuyv", *NV_ENCODINGS):
            if rng.random() < 0.8:
                width += width % 2
                height += height % 2 if encoding in NV_ENCODINGS else 0
        step = width * bpp + rng.choice([0, 0, 0, 1, 3, 16, -1])
    else:
        step = _random_dim(rng) if rng.random() < 0.5 else rng.randint(-20, 200)
    kind = rng.random()
    if valid_geometry and isinstance(step, int) and 0 <= step * height < 10**6 and kind < 0.8:
        rows = height * 3 // 2 if encoding in NV_ENCODINGS else height
        size = step * rows + rng.choice([0, 0, 0, 0, -1, 1, -step, step])
        data = _as_random_buffer(rng, bytes(rng.getrandbits(8) for _ in range(max(size, 0))))
    else:
        data: object = rng.choice(
            [
                None,
                b"",
                bytes(rng.randint(0, 64)),
                "text",
                12,
                [1, 2, 3],
                np.zeros((4, 4), np.float32),
                np.zeros(64, np.uint8)[::2],
            ]
        )
    is_bigendian = rng.choice([0, 1, 2, -1, None, "x"])
    return encoding, height, width, step, data, is_bigendian


def test_fuzz_decode_image_raises_only_codec_errors():
    rng = random.Random(20240611)
    successes = 0
    for _ in range(3000):
        case = _random_raw_case(rng)
        max_pixels = rng.choice([None, None, None, 1, 20, 10**9])
        try:
            out = decode_image(*case, max_pixels=max_pixels)
        except CODEC_ERRORS:
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{type(exc).__name__}: {exc} for {case!r:.300}")
        _, height, width, *_ = case
        assert out.pixels.shape == (height, width, 3), case
        assert out.pixels.dtype == np.uint8
        assert out.to_rgb().shape == (height, width, 3)
        successes += 1
    assert successes > 500  # the generator must also exercise valid inputs


def test_fuzz_decode_compressed_raises_only_codec_errors():
    rng = random.Random(7)
    np_rng = np.random.default_rng(7)
    seeds = []
    for h, w in [(8, 8), (5, 13), (16, 9), (1, 1)]:
        rgb = np_rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for fmt in ("jpeg", "png"):
            seeds.append(((h, w), encode_compressed(rgb, fmt)[1]))
    formats = [
        "jpeg",
        "png",
        "",
        "rgb8; jpeg compressed bgr8",
        "rgb8; png compressed bgr8",
        "tiff",
        "16UC1; compressedDepth png",
        None,
        "jpg;",
    ]
    successes = 0
    for _ in range(2500):
        (h, w), payload = rng.choice(seeds)
        mutated = bytearray(payload)
        action = rng.random()
        if action < 0.25:
            mutated = mutated[: rng.randint(0, len(mutated))]
        elif action < 0.55:
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
        elif action < 0.65:
            mutated = bytearray(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        elif action < 0.75:
            mutated = bytearray(payload[:8]) + bytearray(rng.getrandbits(8) for _ in range(40))
        data = rng.choice([bytes, bytearray, memoryview, lambda b: array.array("B", b)])(mutated)
        fmt = rng.choice(formats)
        try:
            # max_pixels keeps mutated headers from asking OpenCV for gigabytes
            out = decode_compressed(fmt, data, max_pixels=4096)
        except CODEC_ERRORS:
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{type(exc).__name__}: {exc} for format {fmt!r}")
        assert out.pixels.ndim == 3 and out.pixels.shape[2] == 3
        assert out.pixels.dtype == np.uint8
        assert out.pixels.shape[0] * out.pixels.shape[1] <= 4096
        if bytes(mutated) == payload:
            assert out.pixels.shape[:2] == (h, w)
        successes += 1
    assert successes > 300
