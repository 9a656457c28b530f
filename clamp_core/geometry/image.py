"""Decode image buffers (the fields of sensor_msgs/Image and CompressedImage) into numpy arrays,
with checks.

Kept free of ROS types: live nodes pass message fields, bag readers pass deserialised fields,
and both get the same validation and the same error messages.
"""

from __future__ import annotations

import numpy as np

# encoding -> (dtype, channels); depth encodings as RealSense and MuJoCo publish them
DEPTH_ENCODINGS = {"16UC1": (np.uint16, 1), "mono16": (np.uint16, 1), "32FC1": (np.float32, 1)}
COLOR_ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
}
# metres per stored unit: 16-bit depth is millimetres (REP-118), float depth is metres
DEPTH_SCALE_M = {"16UC1": 1e-3, "mono16": 1e-3, "32FC1": 1.0}


class ImageDecodeError(ValueError):
    """An Image whose fields are inconsistent or whose encoding is not supported here."""


def _view(
    encoding: str,
    height: int,
    width: int,
    step: int,
    is_bigendian: bool,
    data,
    table: dict,
    kind: str,
) -> np.ndarray:
    if encoding not in table:
        shown = encoding if len(encoding) <= 64 else f"{encoding[:64]}...[{len(encoding)} chars]"
        raise ImageDecodeError(
            f"unsupported {kind} encoding '{shown}' (supported: {', '.join(table)})"
        )
    dtype, channels = table[encoding]
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"{kind} image is empty ({width}x{height})")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ImageDecodeError(
            f"{kind} step {step} is smaller than width*channels*bytes = {row_bytes} "
            f"for {width} px of {encoding}"
        )
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    buf = buf.reshape(-1).view(np.uint8)
    if buf.size != step * height:
        raise ImageDecodeError(
            f"{kind} data has {buf.size} bytes, expected step*height = {step}*{height} = "
            f"{step * height}"
        )
    rows = buf.reshape(height, step)[:, :row_bytes]
    out = rows.view(np.dtype(dtype).newbyteorder(">" if is_bigendian else "<"))
    out = out.reshape(height, width, channels) if channels > 1 else out.reshape(height, width)
    if is_bigendian and itemsize > 1:
        out = out.astype(np.dtype(dtype).newbyteorder("="))
    return out


def decode_depth(
    encoding: str, height: int, width: int, step: int, is_bigendian: bool, data
) -> tuple[np.ndarray, float]:
    """Return ``(depth, scale_m)``: depth (H, W) uint16 or float32 in its stored unit (a view on
    ``data`` where possible, no copy) and the metres per unit. Invalid pixels are 0 (16-bit) or
    0 / NaN / inf (float); fusion drops them."""
    depth = _view(encoding, height, width, step, is_bigendian, data, DEPTH_ENCODINGS, "depth")
    return depth, DEPTH_SCALE_M[encoding]


def decode_color(
    encoding: str, height: int, width: int, step: int, is_bigendian: bool, data
) -> np.ndarray:
    """Return (H, W, 3) uint8 RGB (a copy when channels must be reordered or dropped)."""
    img = _view(encoding, height, width, step, is_bigendian, data, COLOR_ENCODINGS, "color")
    if encoding == "rgb8":
        return img
    # reordered / dropped channels are strided views (negative strides for BGR): copy them into
    # a C-contiguous array as documented, so consumers (cv2, torch.from_numpy) accept them
    if encoding == "bgr8":
        return np.ascontiguousarray(img[..., ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(img[..., :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(img[..., 2::-1])
    return np.repeat(img[..., None], 3, axis=-1)


COMPRESSED_DEPTH_HEADER_BYTES = 12
"""image_transport's compressedDepth plugin puts a configuration header before the PNG: int32
compression format, then two float32 inverse-depth quantisation parameters (A, B); native byte
order, which is little-endian on every platform ROS 2 ships for."""


def _imdecode(data, flags: int, kind: str) -> np.ndarray:
    import cv2  # only the compressed transports need it

    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    buf = buf.reshape(-1).view(np.uint8)
    if buf.size == 0:
        raise ImageDecodeError(f"{kind} image has no data")
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as e:  # OpenCV raises for some malformed streams, returns None for others
        raise ImageDecodeError(f"{kind} image does not decode: {str(e).strip()[:200]}") from None
    if img is None:
        raise ImageDecodeError(f"{kind} image data ({buf.size} bytes) is not a readable JPEG/PNG")
    return img


def decode_compressed_color(fmt: str, data) -> np.ndarray:
    """sensor_msgs/CompressedImage fields (format, data) -> (H, W, 3) uint8 RGB. JPEG and PNG as
    image_transport's compressed plugin sends them (format e.g. 'rgb8; jpeg compressed bgr8', or
    just 'jpeg'); the stream itself says what it is, so the format string is only checked for
    depth payloads sent on a colour topic."""
    import cv2

    if "compresseddepth" in str(fmt).lower():
        raise ImageDecodeError(
            f"color image has format '{str(fmt)[:64]}': a compressedDepth payload, not colour"
        )
    bgr = _imdecode(data, cv2.IMREAD_COLOR, "color")
    return np.ascontiguousarray(bgr[..., ::-1])


def decode_compressed_depth(fmt: str, data) -> tuple[np.ndarray, float]:
    """image_transport compressedDepth (sensor_msgs/CompressedImage format like '16UC1;
    compressedDepth png') -> ``(depth, scale_m)`` as :func:`decode_depth` returns them.

    16UC1: the PNG holds the millimetres as they were. 32FC1: the PNG holds quantised inverse
    depth v, and depth = A / (v - B) metres with A, B from the header; v = 0 is no reading (NaN).
    Only the PNG variant is decoded; 'rvl' payloads are refused."""
    import cv2

    fmt = str(fmt)
    encoding, _, rest = fmt.partition(";")
    encoding, rest = encoding.strip(), rest.strip()
    # a format without ';' comes from old plugin versions, which only knew PNG
    if rest and rest.lower() not in ("compresseddepth png", "compresseddepth"):
        raise ImageDecodeError(
            f"compressedDepth format '{fmt[:64]}' is not supported (only 'compressedDepth png')"
        )
    if encoding not in ("16UC1", "mono16", "32FC1"):
        raise ImageDecodeError(
            f"compressedDepth format '{fmt[:64]}': depth encoding '{encoding[:32]}' is not "
            "16UC1 or 32FC1"
        )
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    buf = buf.reshape(-1).view(np.uint8)
    if buf.size <= COMPRESSED_DEPTH_HEADER_BYTES:
        raise ImageDecodeError(
            f"compressedDepth image has {buf.size} bytes: no room for the "
            f"{COMPRESSED_DEPTH_HEADER_BYTES}-byte header and a PNG"
        )
    header = buf[:COMPRESSED_DEPTH_HEADER_BYTES].tobytes()
    quant_a, quant_b = np.frombuffer(header, dtype="<f4", offset=4, count=2).astype(np.float64)
    img = _imdecode(buf[COMPRESSED_DEPTH_HEADER_BYTES:], cv2.IMREAD_UNCHANGED, "depth")
    if img.dtype != np.uint16 or img.ndim != 2:
        raise ImageDecodeError(
            f"compressedDepth PNG is {img.dtype} with shape {img.shape}; expected one 16-bit "
            "channel"
        )
    if encoding != "32FC1":
        return img, DEPTH_SCALE_M["16UC1"]
    if not (np.isfinite(quant_a) and np.isfinite(quant_b)) or quant_a == 0:
        raise ImageDecodeError(
            f"compressedDepth 32FC1 header has unusable quantisation parameters A={quant_a}, "
            f"B={quant_b}"
        )
    v = img.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.float32(quant_a) / (v - np.float32(quant_b))
    depth[img == 0] = np.nan
    return depth.astype(np.float32, copy=False), DEPTH_SCALE_M["32FC1"]


def _in_range(depth: np.ndarray, scale_m: float, min_m: float, max_m: float) -> bool:
    # float32 arithmetic and strict bounds, exactly as the fusion kernels decide validity
    d = depth.astype(np.float32) * np.float32(scale_m)
    return bool(np.any((d > np.float32(min_m)) & (d < np.float32(max_m))))


def has_depth_in_range(depth: np.ndarray, scale_m: float, min_m: float, max_m: float) -> bool:
    """Whether any pixel of (H, W) stored ``depth`` is a usable reading: ``min_m < d < max_m``
    metres after scaling (NaN, inf, 0 and denormals are not). Looks at every 4th pixel of every
    4th row first, so a normal frame costs a sixteenth of a full pass; only a frame with nothing
    usable there is scanned in full."""
    if _in_range(depth[::4, ::4], scale_m, min_m, max_m):
        return True
    return _in_range(depth, scale_m, min_m, max_m)


def depth_span_m(depth: np.ndarray, scale_m: float) -> tuple[float, float] | None:
    """(min, max) in metres of the finite, positive pixels of every 4th pixel of every 4th row
    (for messages about unusable frames); None when there are none."""
    d = depth[::4, ::4].astype(np.float64) * scale_m
    d = d[np.isfinite(d) & (d > 0)]
    if d.size == 0:
        return None
    return float(d.min()), float(d.max())


def depth_to_metres(depth: np.ndarray, scale_m: float) -> np.ndarray:
    """(H, W) stored depth -> float32 metres with every invalid pixel set to 0."""
    d = depth.astype(np.float32) * np.float32(scale_m)
    d[~np.isfinite(d)] = 0.0
    return d


def encode_depth_mm(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) metres -> uint16 millimetres (16UC1); invalid or out-of-range pixels become 0."""
    d = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    mm = np.rint(d * 1000.0)
    mm[(mm < 0) | (mm > 65535)] = 0
    return mm.astype(np.uint16)
