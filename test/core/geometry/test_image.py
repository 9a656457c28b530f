"""decode_depth / decode_color / depth helpers: every encoding round-trips through raw message
bytes (padded rows and big-endian data included) and every malformed message is refused."""

from __future__ import annotations

import array

import numpy as np
import pytest

from clamp_core.geometry.image import (
    ImageDecodeError,
    decode_color,
    decode_depth,
    depth_span_m,
    depth_to_metres,
    encode_depth_mm,
    has_depth_in_range,
)

H, W = 5, 7


def to_message(img: np.ndarray, pad: int = 0, big_endian: bool = False, pad_byte: int = 0xAB):
    """Serialise an (H, W[, C]) array like a sensor_msgs/Image publisher: returns (step, bytes)."""
    dt = img.dtype.newbyteorder(">" if big_endian else "<")
    rows = np.ascontiguousarray(img.astype(dt)).reshape(img.shape[0], -1).view(np.uint8)
    padding = np.full((img.shape[0], pad), pad_byte, dtype=np.uint8)
    buf = np.concatenate([rows, padding], axis=1)
    return buf.shape[1], buf.tobytes()


def rng_image(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.uniform(0.1, 10.0, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


# ----------------------------------------------------------------------------- depth round trips
@pytest.mark.parametrize(
    "encoding, dtype, scale",
    [("16UC1", np.uint16, 1e-3), ("mono16", np.uint16, 1e-3), ("32FC1", np.float32, 1.0)],
)
@pytest.mark.parametrize("pad", [0, 1, 2, 4, 9])
@pytest.mark.parametrize("big_endian", [False, True])
def test_depth_round_trip(encoding, dtype, scale, pad, big_endian):
    img = rng_image((H, W), dtype)
    if dtype == np.uint16:
        img[0, :3] = [0x0102, 0xFF00, 0x00FF]  # byte-order sensitive values
    step, data = to_message(img, pad, big_endian)
    depth, got_scale = decode_depth(encoding, H, W, step, big_endian, data)
    assert got_scale == scale
    assert depth.shape == (H, W)
    assert depth.dtype == np.dtype(dtype)  # native byte order, whatever the message had
    assert depth.dtype.isnative
    np.testing.assert_array_equal(depth, img)


def test_big_endian_16bit_known_bytes():
    # 1000 mm = 0x03E8: big-endian bytes 03 E8; read as little-endian it would be 59395
    data = bytes([0x03, 0xE8, 0x00, 0x01])
    depth, _ = decode_depth("16UC1", 1, 2, 4, True, data)
    np.testing.assert_array_equal(depth, [[1000, 1]])
    depth_le, _ = decode_depth("16UC1", 1, 2, 4, False, data)
    np.testing.assert_array_equal(depth_le, [[0xE803, 0x0100]])


def test_decode_depth_is_a_view_for_little_endian_unpadded_data():
    img = rng_image((H, W), np.uint16)
    step, data = to_message(img)
    buf = bytearray(data)
    depth, _ = decode_depth("16UC1", H, W, step, False, buf)
    buf[0:2] = (4321).to_bytes(2, "little")  # the message buffer changes ...
    assert depth[0, 0] == 4321  # ... and so does the decoded image: no copy was made
    # numpy input (bag readers hand over arrays): shares memory too
    arr = np.frombuffer(to_message(rng_image((H, W), np.float32))[1], dtype=np.uint8).copy()
    depth, _ = decode_depth("32FC1", H, W, W * 4, False, arr)
    assert np.shares_memory(depth, arr)


def test_decode_depth_big_endian_is_a_native_copy():
    img = rng_image((H, W), np.uint16)
    step, data = to_message(img, big_endian=True)
    buf = bytearray(data)
    depth, _ = decode_depth("16UC1", H, W, step, True, buf)
    buf[:] = bytes(len(buf))
    np.testing.assert_array_equal(depth, img)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "array", "ndarray"])
def test_decode_accepts_message_buffer_types(kind):
    img = rng_image((H, W), np.uint16)
    step, data = to_message(img, pad=2)
    buf = {
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "array": array.array("B", data),  # what rclpy hands over for uint8[]
        "ndarray": np.frombuffer(data, np.uint8).reshape(H, step),
    }[kind]
    depth, _ = decode_depth("16UC1", H, W, step, False, buf)
    np.testing.assert_array_equal(depth, img)


# ----------------------------------------------------------------------------- color round trips
def expected_rgb(encoding, raw):
    if encoding == "rgb8":
        return raw
    if encoding == "bgr8":
        return np.stack([raw[..., 2], raw[..., 1], raw[..., 0]], axis=-1)
    if encoding == "rgba8":
        return raw[..., [0, 1, 2]]
    if encoding == "bgra8":
        return np.stack([raw[..., 2], raw[..., 1], raw[..., 0]], axis=-1)
    return np.stack([raw, raw, raw], axis=-1)  # mono8


CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


@pytest.mark.parametrize("encoding", list(CHANNELS))
@pytest.mark.parametrize("pad", [0, 1, 3, 13])
@pytest.mark.parametrize("big_endian", [False, True])  # irrelevant for 8-bit data
def test_color_round_trip(encoding, pad, big_endian):
    c = CHANNELS[encoding]
    raw = rng_image((H, W, c) if c > 1 else (H, W), np.uint8, seed=pad)
    step, data = to_message(raw, pad, big_endian)
    rgb = decode_color(encoding, H, W, step, big_endian, data)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, expected_rgb(encoding, raw))


def test_color_channel_order_known_pixel():
    # one pixel: R=10, G=20, B=30, A=40 in each encoding
    cases = {
        "rgb8": [10, 20, 30],
        "bgr8": [30, 20, 10],
        "rgba8": [10, 20, 30, 40],
        "bgra8": [30, 20, 10, 40],
    }
    for encoding, px in cases.items():
        rgb = decode_color(encoding, 1, 1, len(px), False, bytes(px))
        assert rgb.tolist() == [[[10, 20, 30]]], encoding
    assert decode_color("mono8", 1, 1, 1, False, bytes([77])).tolist() == [[[77, 77, 77]]]


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "bgra8", "mono8"])
def test_reordered_color_is_a_contiguous_copy(encoding):
    c = CHANNELS[encoding]
    raw = rng_image((H, W, c) if c > 1 else (H, W), np.uint8)
    step, data = to_message(raw, pad=2)
    buf = bytearray(data)
    rgb = decode_color(encoding, H, W, step, False, buf)
    assert rgb.flags.c_contiguous and rgb.flags.owndata
    before = rgb.copy()
    buf[:] = bytes(len(buf))
    np.testing.assert_array_equal(rgb, before)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "func, encoding, kind",
    [
        (decode_depth, "yuv422", "depth"),
        (decode_depth, "rgb8", "depth"),
        (decode_depth, "16SC1", "depth"),
        (decode_color, "16UC1", "color"),
        (decode_color, "bayer_rggb8", "color"),
        (decode_color, "RGB8", "color"),
        (decode_color, "", "color"),
    ],
)
def test_unsupported_encoding(func, encoding, kind):
    with pytest.raises(ImageDecodeError) as info:
        func(encoding, H, W, W * 4, False, bytes(H * W * 4))
    msg = str(info.value)
    assert f"unsupported {kind} encoding '{encoding}'" in msg
    assert ("16UC1" in msg) if kind == "depth" else ("rgb8" in msg and "bgra8" in msg)


@pytest.mark.parametrize("h, w", [(0, W), (H, 0), (0, 0), (-1, W)])
def test_empty_image(h, w):
    with pytest.raises(ImageDecodeError, match=rf"depth image is empty \({w}x{h}\)"):
        decode_depth("16UC1", h, w, 2 * max(w, 1), False, b"")
    with pytest.raises(ImageDecodeError, match=rf"color image is empty \({w}x{h}\)"):
        decode_color("rgb8", h, w, 3 * max(w, 1), False, b"")


@pytest.mark.parametrize(
    "func, encoding, row_bytes",
    [
        (decode_depth, "16UC1", W * 2),
        (decode_depth, "32FC1", W * 4),
        (decode_color, "bgra8", W * 4),
        (decode_color, "mono8", W),
    ],
)
def test_step_smaller_than_row(func, encoding, row_bytes):
    step = row_bytes - 1
    with pytest.raises(ImageDecodeError) as info:
        func(encoding, H, W, step, False, bytes(step * H))
    msg = str(info.value)
    assert f"step {step} is smaller than" in msg and f"= {row_bytes}" in msg and encoding in msg


@pytest.mark.parametrize("delta", [-1, 1, -14, 14])
def test_data_size_mismatch(delta):
    step = W * 2
    n = step * H + delta
    with pytest.raises(ImageDecodeError) as info:
        decode_depth("16UC1", H, W, step, False, bytes(n))
    msg = str(info.value)
    assert f"data has {n} bytes" in msg and f"{step}*{H} = {step * H}" in msg


def test_data_missing_row_padding():
    """A publisher that declares a padded step but sends unpadded rows is refused, not misread."""
    img = rng_image((H, W, 3), np.uint8)
    _, data = to_message(img)
    with pytest.raises(ImageDecodeError, match="expected step\\*height"):
        decode_color("rgb8", H, W, W * 3 + 4, False, data)


def test_empty_data():
    with pytest.raises(ImageDecodeError, match="data has 0 bytes"):
        decode_color("rgb8", H, W, W * 3, False, b"")


def test_error_type_is_value_error():
    assert issubclass(ImageDecodeError, ValueError)


# ----------------------------------------------------------------------------- depth helpers
def test_encode_depth_mm_rounding_and_invalid():
    metres = np.array(
        [
            [1.2344, 1.2346, 0.0, 0.0004, 0.0006, 65.535, 65.5356, 70.0],
            [np.nan, np.inf, -np.inf, -0.5, -0.0004, 2.0, 0.001, 3.9999],
        ]
    )
    mm = encode_depth_mm(metres)
    assert mm.dtype == np.uint16 and mm.shape == metres.shape
    assert mm.tolist() == [
        [1234, 1235, 0, 0, 1, 65535, 0, 0],
        [0, 0, 0, 0, 0, 2000, 1, 4000],
    ]


def test_encode_depth_mm_accepts_float32_and_lists():
    assert encode_depth_mm(np.float32([[0.25]])).tolist() == [[250]]
    assert encode_depth_mm([[1.0, np.nan]]).tolist() == [[1000, 0]]


def test_encode_decode_round_trip_within_half_a_millimetre():
    rng = np.random.default_rng(4)
    metres = rng.uniform(0.1, 60.0, size=(H, W))
    metres[1, 2] = np.nan
    mm = encode_depth_mm(metres)
    step, data = to_message(mm)
    depth, scale = decode_depth("16UC1", H, W, step, False, data)
    back = depth_to_metres(depth, scale)
    valid = np.isfinite(metres)
    assert np.abs(back[valid] - metres[valid]).max() <= 0.0005 + 1e-6
    assert back[1, 2] == 0.0


def test_depth_to_metres_zeroes_invalid_and_keeps_input():
    d = np.array([[1.5, np.nan, np.inf], [-np.inf, 0.0, 2.25]], dtype=np.float32)
    out = depth_to_metres(d, 1.0)
    assert out.dtype == np.float32
    assert out.tolist() == [[1.5, 0.0, 0.0], [0.0, 0.0, 2.25]]
    assert np.isnan(d[0, 1]) and np.isinf(d[0, 2])  # the input is not modified
    mm = np.array([[1000, 0, 65535]], dtype=np.uint16)
    np.testing.assert_allclose(depth_to_metres(mm, 1e-3), [[1.0, 0.0, 65.535]], rtol=1e-6)


def test_depth_to_metres_on_a_read_only_view():
    step, data = to_message(np.float32([[np.nan, 1.0]]))
    depth, scale = decode_depth("32FC1", 1, 2, step, False, data)
    assert not depth.flags.writeable
    assert depth_to_metres(depth, scale).tolist() == [[0.0, 1.0]]


# ----------------------------------------------------------------------------- usable depth range
DMIN, DMAX = 0.07, 3.0
DENORMAL = np.float32(1e-40)


@pytest.mark.parametrize(
    "depth, scale",
    [
        (np.full((48, 64), 65535, np.uint16), 1e-3),  # a 'no data' marker everywhere
        (np.full((48, 64), 3000, np.uint16), 1e-3),  # exactly at the far limit (exclusive)
        (np.full((48, 64), 70, np.uint16), 1e-3),  # exactly at the near limit (exclusive)
        (np.zeros((48, 64), np.uint16), 1e-3),
        (np.full((48, 64), 1e30, np.float32), 1.0),
        (np.full((48, 64), DENORMAL, np.float32), 1.0),
        (np.full((48, 64), -0.5, np.float32), 1.0),
        (np.full((48, 64), np.inf, np.float32), 1.0),
        (np.full((48, 64), np.nan, np.float32), 1.0),
    ],
)
def test_no_depth_in_range(depth, scale):
    assert DENORMAL > 0 and DENORMAL < np.finfo(np.float32).tiny  # really a denormal
    assert not has_depth_in_range(depth, scale, DMIN, DMAX)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_one_usable_pixel_off_the_strided_grid_is_found(encoding):
    if encoding == "16UC1":
        depth, scale, good = np.full((48, 64), 65535, np.uint16), 1e-3, 500
    else:
        depth, scale, good = np.full((48, 64), 1e30, np.float32), 1.0, 0.5
    depth[5, 7] = good  # not on the every-4th-pixel grid
    assert has_depth_in_range(depth, scale, DMIN, DMAX)
    depth[5, 7] = depth[0, 0]
    depth[8, 12] = good  # on the grid
    assert has_depth_in_range(depth, scale, DMIN, DMAX)


def test_in_range_agrees_with_float32_fusion_rule():
    """Validity as the fusion kernels decide it: float32(d) * float32(scale) strictly inside."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        depth = rng.integers(0, 4000, size=(9, 11)).astype(np.uint16)
        d = depth.astype(np.float32) * np.float32(1e-3)
        expected = bool(np.any((d > np.float32(DMIN)) & (d < np.float32(DMAX))))
        assert has_depth_in_range(depth, 1e-3, DMIN, DMAX) == expected
    assert has_depth_in_range(np.full((3, 3), 0.5, np.float32), 1.0, DMIN, DMAX)


def test_depth_span_for_messages():
    assert depth_span_m(np.full((8, 8), 65535, np.uint16), 1e-3) == pytest.approx((65.535, 65.535))
    assert depth_span_m(np.zeros((8, 8), np.float32), 1.0) is None
    d = np.full((8, 8), np.nan, np.float32)
    d[0, 0], d[4, 4] = 2.0, 1e30
    assert depth_span_m(d, 1.0) == pytest.approx((2.0, 1e30))


def test_long_unsupported_encoding_is_cut_in_the_message():
    with pytest.raises(ImageDecodeError) as info:
        decode_depth("x" * 100_000, 1, 1, 4, False, b"\0" * 4)
    msg = str(info.value)
    assert len(msg) < 300 and "100000 chars" in msg
