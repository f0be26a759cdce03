"""sensor_msgs/CompressedImage payloads (jpeg, png) to pixels and back.

The compressed half of :mod:`.image_codec`, with the same rules: ROS-free (duck-typed
messages), untrusted input never crashes the node (every malformed payload raises
:class:`~.image_codec.ImageFormatError` or :class:`~.image_codec.ImageConversionError`), and
the frame size in the payload's header is checked against ``max_pixels`` before anything is
decoded. The ``format`` string is read as compressed_image_transport reads it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import cv2
import numpy as np

from seg_perception.core.image_codec import (
    ChannelOrder,
    DecodedImage,
    ImageConversionError,
    ImageFormatError,
    _as_buffer,
    _as_int,
    _check_max_pixels,
)

__all__ = [
    "SUPPORTED_COMPRESSED_FORMATS",
    "decode_compressed",
    "decode_compressed_msg",
    "encode_compressed",
]

# --- compressed formats ----------------------------------------------------------------

SUPPORTED_COMPRESSED_FORMATS: tuple[str, ...] = ("jpeg", "png")
_CODEC_ALIASES = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# IGNORE_ORIENTATION: EXIF rotation would silently swap H and W behind the header check.
# ANYDEPTH: a 16-bit payload stays 16-bit (and is refused) instead of being scaled to 8 bits.
_IMDECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
# JPEG start-of-frame markers (carry the frame size); C4/C8/CC are DHT/JPG/DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# sensor_msgs image_encodings isColor(): with one of these before the ';',
# compressed_image_transport reads the decoded data as RGB unless "compressed bgr" follows.
_COLOUR_ENCODINGS = frozenset(
    f"{name}{bits}" for name in ("rgb", "bgr", "rgba", "bgra") for bits in (8, 16)
) | {"yuv422", "yuv422_yuy2", "uyvy", "yuyv", "nv12", "nv21", "nv24"}
# Encodings with more than 8 bits per channel (image_encodings bitDepth() > 8).
_WIDE_ENCODING = re.compile(
    r"(?:mono|rgb|bgr|rgba|bgra|bayer_(?:rggb|bggr|gbrg|grbg))16|(?:16|32|64)[USF]C\d*"
)



# --- compressed decoding ---------------------------------------------------------------


def _parse_compressed_format(fmt: Any) -> tuple[str | None, ChannelOrder]:
    """(codec or None if the string is empty, order of the decoded data) of a format string.

    Accepts bare codecs ("jpeg", "png") and the image_transport form
    "<orig encoding>; <codec> compressed <target encoding>". Order as compressed_image_transport's
    subscriber reads it: for a colour original, BGR only if "compressed bgr" follows the ';'
    (its publisher's "rgb8; jpeg compressed bgr8"), else RGB (older publishers' "rgb8; jpeg
    compressed rgb8"); BGR for bare codecs and non-colour originals.
    """
    if not isinstance(fmt, str):
        raise ImageFormatError(f"CompressedImage format must be a str, got {fmt!r:.40}")
    text = fmt.strip()
    if not text:
        return None, "bgr"
    if "compresseddepth" in text.lower():
        raise ImageFormatError(
            f"compressed depth format {fmt!r} is not supported; supported formats: "
            f"{', '.join(SUPPORTED_COMPRESSED_FORMATS)}"
        )
    original, sep, rest = text.partition(";")
    tokens = (rest if sep else text).lower().split()
    codec = _CODEC_ALIASES.get(tokens[0]) if tokens else None
    if codec is None:
        raise ImageFormatError(
            f"unsupported CompressedImage format {fmt!r}; supported formats: "
            f"{', '.join(SUPPORTED_COMPRESSED_FORMATS)} (optionally as "
            f"'<encoding>; <format> compressed <encoding>')"
        )
    original = original.strip() if sep else ""
    if _WIDE_ENCODING.fullmatch(original):
        raise _wide_error(fmt, f"{original!r} image (more than 8 bits per channel)")
    rgb = original in _COLOUR_ENCODINGS and "compressed bgr" not in rest
    return codec, "rgb" if rgb else "bgr"


def _wide_error(fmt: Any, what: str) -> ImageFormatError:
    return ImageFormatError(
        f"{what} in CompressedImage format {fmt!r} is not supported: segmentation needs an "
        f"8-bit colour or grey camera image; 16-bit (depth, mono16) data is refused, "
        f"compressed or raw"
    )


def _jpeg_size(buf: memoryview) -> tuple[int, int] | None:
    """(height, width) from the JPEG SOF header, or None if not found cheaply."""
    n = len(buf)
    i = 2  # past SOI
    while i + 4 <= n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers, no length
            i += 2
            continue
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            return (buf[i + 5] << 8) | buf[i + 6], (buf[i + 7] << 8) | buf[i + 8]
        seg_len = (buf[i + 2] << 8) | buf[i + 3]
        if seg_len < 2:
            return None
        i += 2 + seg_len
    return None


def _png_size(buf: memoryview) -> tuple[int, int]:
    """(height, width) from IHDR, after checking every chunk fits inside the payload.

    OpenCV's PNG reader trusts chunk lengths: a 300-byte PNG whose IDAT claims 2 GB
    makes it allocate that much and stall for seconds. Walking the chunk headers costs
    microseconds (hundreds of chunks even for a 720p frame).
    """
    n = len(buf)
    if n < 33 or bytes(buf[12:16]) != b"IHDR" or int.from_bytes(buf[8:12], "big") != 13:
        raise ImageConversionError(f"corrupt PNG: missing or malformed IHDR ({n} bytes)")
    i = 8
    while True:
        if i + 12 > n:
            raise ImageConversionError(f"corrupt PNG: truncated at byte {i} of {n}, no IEND")
        length = int.from_bytes(buf[i : i + 4], "big")
        if i + 12 + length > n:
            raise ImageConversionError(
                f"corrupt PNG: chunk at byte {i} claims {length} bytes, payload has {n}"
            )
        if bytes(buf[i + 4 : i + 8]) == b"IEND":
            break
        i += 12 + length
    return int.from_bytes(buf[20:24], "big"), int.from_bytes(buf[16:20], "big")


def decode_compressed(
    format: str,  # mirrors the CompressedImage field name
    data: Any,
    max_pixels: int | None = None,
) -> DecodedImage:
    """Decode a sensor_msgs/CompressedImage payload (JPEG or PNG) to 8-bit HxWx3 BGR/RGB.

    The format string gates which codecs are accepted and says whether the data is BGR or
    RGB; the payload's magic bytes pick the decoder, and anything that is not JPEG/PNG is
    refused before it reaches OpenCV (which would otherwise happily parse TIFF, EXR, ...).
    16-bit payloads are refused by PNG header and by decoded depth, whatever the format
    says. With ``max_pixels`` the frame size is read from the PNG IHDR / JPEG SOF header
    first, so decompression bombs are refused before OpenCV allocates anything; without it
    there is no size limit.
    """
    codec, order = _parse_compressed_format(format)
    buf = _as_buffer(data)
    if buf.size == 0:
        raise ImageConversionError("compressed image data is empty")
    head = memoryview(buf)
    if bytes(head[:3]) == _JPEG_MAGIC:
        size = _jpeg_size(head)
    elif bytes(head[:8]) == _PNG_MAGIC:
        size = _png_size(head)
        if head[24] == 16:  # IHDR bit depth (1/2/4-bit PNGs are expanded to 8 bits)
            raise _wide_error(format, "16-bit PNG")
    else:
        expected = codec or "JPEG/PNG"
        raise ImageConversionError(
            f"compressed image data is not a {expected} stream (bad magic bytes "
            f"{bytes(head[:8])!r})"
        )
    if size is not None:
        _check_max_pixels(size[0], size[1], max_pixels)
    try:
        pixels = cv2.imdecode(buf, _IMDECODE_FLAGS)
    except cv2.error as exc:
        raise ImageConversionError(f"corrupt compressed image ({format!r}): {exc}") from None
    if pixels is None or pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise ImageConversionError(
            f"corrupt compressed image ({format!r}): OpenCV could not decode {buf.size} bytes"
        )
    if pixels.dtype != np.uint8:  # the decoded depth, whatever the header claimed
        raise _wide_error(format, f"image decoded to {pixels.dtype}")
    _check_max_pixels(pixels.shape[0], pixels.shape[1], max_pixels)
    return DecodedImage(pixels, order)


def decode_compressed_msg(msg: Any, max_pixels: int | None = None) -> DecodedImage:
    """Decode a sensor_msgs/CompressedImage (duck-typed: ``.format`` and ``.data``)."""
    try:
        fmt, data = msg.format, msg.data
    except AttributeError as exc:
        raise ImageConversionError(f"not a sensor_msgs/CompressedImage: {exc}") from None
    return decode_compressed(fmt, data, max_pixels=max_pixels)


def encode_compressed(
    pixels_rgb: np.ndarray,
    fmt: Literal["jpeg", "png"] = "jpeg",
    quality: int = 90,
) -> tuple[str, bytes]:
    """Compress an HxWx3 RGB array: (CompressedImage.format, data).

    The format string follows image_transport ("rgb8; jpeg compressed bgr8") so standard
    ROS subscribers (and :func:`decode_compressed`) understand it. ``quality`` (0-100) is
    the JPEG quality; PNG is lossless and ignores it.
    """
    if fmt not in SUPPORTED_COMPRESSED_FORMATS:
        raise ImageFormatError(
            f"cannot compress to {fmt!r}; supported: {', '.join(SUPPORTED_COMPRESSED_FORMATS)}"
        )
    q = _as_int(quality, "quality")
    if not 0 <= q <= 100:
        raise ValueError(f"quality must be within 0..100, got {q}")
    arr = np.asarray(pixels_rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ImageConversionError(
            f"encode_compressed needs a non-empty HxWx3 uint8 RGB array, "
            f"got {arr.dtype} {arr.shape}"
        )
    bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
    else:
        ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise ImageConversionError(f"OpenCV failed to encode {arr.shape} image as {fmt}")
    return f"rgb8; {fmt} compressed bgr8", encoded.tobytes()
