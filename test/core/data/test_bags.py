"""Reading bags: real rosbag2 files (MCAP and sqlite3, written with rosbags' own writer), MCAP
files cut short as a killed writer leaves them, compressed images as image_transport sends them,
the topics map and its errors, decoded messages in recording order."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from clamp_core.aloha import ARM_JOINT_NAMES
from clamp_core.data.bags import (
    EPISODE_KEY,
    Bag,
    BagError,
    StampOrderError,
    TopicsMap,
    TopicsMapError,
    TrajectoryCommand,
    arm_joint_values,
    read_roles,
    topics_map_path,
)
from clamp_core.geometry.camera import PinholeCamera
from clamp_core.geometry.image import (
    ImageDecodeError,
    decode_compressed_color,
    decode_compressed_depth,
)
from clamp_core.geometry.tf_buffer import TfBuffer, UnknownFrameError
from clamp_core.geometry.transforms import Transform

TS = get_typestore(Stores.ROS2_JAZZY)
T0 = 1_700_000_000 * 10**9  # a plausible epoch for stamps and log times
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
INFO = "sensor_msgs/msg/CameraInfo"
JOINTS = "sensor_msgs/msg/JointState"
TRAJ = "trajectory_msgs/msg/JointTrajectory"
TF = "tf2_msgs/msg/TFMessage"


# ---------------------------------------------------------------------------------------------
# message builders (rosbags types, ROS 2 Jazzy definitions)


def _t(cls: str):
    return TS.types[cls]


def stamp(ns: int):
    return _t("builtin_interfaces/msg/Time")(sec=int(ns // 10**9), nanosec=int(ns % 10**9))


def header(ns: int, frame: str = ""):
    return _t("std_msgs/msg/Header")(stamp=stamp(ns), frame_id=frame)


def image(array: np.ndarray, encoding: str, ns: int, frame: str):
    a = np.ascontiguousarray(array)
    return _t(IMAGE)(
        header=header(ns, frame),
        height=a.shape[0],
        width=a.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=a.strides[0],
        data=a.view(np.uint8).reshape(-1),
    )


def compressed(fmt: str, payload: bytes, ns: int, frame: str):
    return _t(COMPRESSED)(
        header=header(ns, frame), format=fmt, data=np.frombuffer(payload, np.uint8).copy()
    )


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def compressed_depth_16(depth_mm: np.ndarray) -> bytes:
    """image_transport compressedDepth of 16UC1: 12-byte header (int32 format, float32 A, B),
    then a 16-bit PNG of the millimetres."""
    ok, png = cv2.imencode(".png", depth_mm.astype(np.uint16))
    assert ok
    return struct.pack("<iff", 0, 0.0, 0.0) + png.tobytes()


def compressed_depth_32(depth_m: np.ndarray, depth_max: float = 10.0, z0: float = 100.0):
    """compressedDepth of 32FC1 as the plugin quantises it: v = A / d + B with A = z0 (z0 + 1),
    B = 1 - A / depth_max; 0 where d >= depth_max or invalid."""
    a = z0 * (z0 + 1.0)
    b = 1.0 - a / depth_max
    d = depth_m.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(np.isfinite(d) & (d > 0) & (d < depth_max), a / d + b, 0.0)
    ok, png = cv2.imencode(".png", v.astype(np.uint16))
    assert ok
    return struct.pack("<iff", 0, a, b) + png.tobytes()


def camera_info(cam: PinholeCamera, ns: int, frame: str):
    return _t(INFO)(
        header=header(ns, frame),
        height=cam.height,
        width=cam.width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=np.array([cam.fx, 0, cam.cx, 0, cam.fy, cam.cy, 0, 0, 1], float),
        r=np.eye(3).reshape(-1),
        p=np.array([cam.fx, 0, cam.cx, 0, 0, cam.fy, cam.cy, 0, 0, 0, 1, 0], float),
        binning_x=0,
        binning_y=0,
        roi=_t("sensor_msgs/msg/RegionOfInterest")(
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )


def joint_state(ns: int, names, pos, vel=(), eff=()):
    return _t(JOINTS)(
        header=header(ns),
        name=list(names),
        position=np.asarray(pos, float),
        velocity=np.asarray(vel, float),
        effort=np.asarray(eff, float),
    )


def trajectory(ns: int, names, points):
    """points: [(time_from_start_ns, positions)]."""
    pt = _t("trajectory_msgs/msg/JointTrajectoryPoint")
    dur = _t("builtin_interfaces/msg/Duration")
    return _t(TRAJ)(
        header=header(ns),
        joint_names=list(names),
        points=[
            pt(
                positions=np.asarray(p, float),
                velocities=np.zeros(0),
                accelerations=np.zeros(0),
                effort=np.zeros(0),
                time_from_start=dur(sec=int(t // 10**9), nanosec=int(t % 10**9)),
            )
            for t, p in points
        ],
    )


def tf_message(transforms):
    """transforms: [(parent, child, stamp_ns, (4, 4) T_parent_child)]."""
    ts_cls = _t("geometry_msgs/msg/TransformStamped")
    out = []
    for parent, child, ns, T in transforms:
        tr = Transform.from_matrix(np.asarray(T, float))
        x, y, z = (float(v) for v in tr.translation)
        qx, qy, qz, qw = (float(v) for v in tr.rotation)
        out.append(
            ts_cls(
                header=header(ns, parent),
                child_frame_id=child,
                transform=_t("geometry_msgs/msg/Transform")(
                    translation=_t("geometry_msgs/msg/Vector3")(x=x, y=y, z=z),
                    rotation=_t("geometry_msgs/msg/Quaternion")(x=qx, y=qy, z=qz, w=qw),
                ),
            )
        )
    return _t(TF)(transforms=out)


class BagBuilder:
    """Collects (topic, type, log time, message) and writes them, in log-time order, as a real
    rosbag2 bag with rosbags' writer."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, str, str, object]] = []
        self.custom: dict[str, str] = {}

    def add(self, topic: str, msgtype: str, log_ns: int, msg) -> None:
        self.items.append((int(log_ns), len(self.items), topic, msgtype, msg))

    def write(self, path, storage: str = "mcap") -> Path:
        path = Path(path)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        conns = {}
        with Writer(path, version=9, storage_plugin=plugin) as w:
            for log_ns, _, topic, msgtype, msg in sorted(self.items, key=lambda x: x[:2]):
                if topic not in conns:
                    conns[topic] = w.add_connection(topic, msgtype, typestore=TS)
                w.write(conns[topic], log_ns, TS.serialize_cdr(msg, msgtype))
            for k, v in self.custom.items():
                w.set_custom_data(k, v)
        return path


def storage_file(bag_dir: Path) -> Path:
    (f,) = [p for p in bag_dir.iterdir() if p.suffix in (".mcap", ".db3")]
    return f


def simple_bag(n: int = 60, payload: int = 4000) -> BagBuilder:
    """n depth images (each a distinct value) and n joint states, 20 ms apart."""
    b = BagBuilder()
    for i in range(n):
        t = T0 + i * 20_000_000
        b.add(
            "/depth",
            IMAGE,
            t + 1000,
            image(np.full((20, payload // 40), i, np.uint16), "16UC1", t, "cam"),
        )
        b.add("/js", JOINTS, t + 500, joint_state(t, ARM_JOINT_NAMES, np.arange(7) + i))
    return b


# ---------------------------------------------------------------------------------------------
# compressed images


def test_compressed_depth_16_roundtrips_exactly_after_the_12_byte_header(rng):
    mm = rng.integers(0, 4000, size=(12, 16)).astype(np.uint16)
    depth, scale = decode_compressed_depth("16UC1; compressedDepth png", compressed_depth_16(mm))
    assert scale == 1e-3 and depth.dtype == np.uint16
    np.testing.assert_array_equal(depth, mm)
    # plugin versions before the ';' format knew PNG only
    depth, _ = decode_compressed_depth("16UC1", compressed_depth_16(mm))
    np.testing.assert_array_equal(depth, mm)


def test_compressed_depth_32_undoes_the_inverse_depth_quantisation(rng):
    d = rng.uniform(0.2, 3.0, size=(12, 16)).astype(np.float32)
    d[0, 0] = 0.0  # no reading
    depth, scale = decode_compressed_depth("32FC1; compressedDepth png", compressed_depth_32(d))
    assert scale == 1.0 and depth.dtype == np.float32
    assert np.isnan(depth[0, 0])
    ok = np.ones_like(d, bool)
    ok[0, 0] = False
    # one step of v changes d by about d^2 / A: under 1 mm at 3 m with A = 10100
    np.testing.assert_allclose(depth[ok], d[ok], atol=1e-3)


@pytest.mark.parametrize(
    "fmt, payload, match",
    [
        ("16UC1; compressedDepth rvl", b"\0" * 40, "not supported"),
        ("rgb8; compressedDepth png", b"\0" * 40, "not 16UC1 or 32FC1"),
        ("16UC1; compressedDepth png", b"\0" * 12, "12-byte header"),
        ("16UC1; compressedDepth png", b"\0" * 12 + b"not a png", "not a readable"),
    ],
)
def test_compressed_depth_refusals_name_the_problem(fmt, payload, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_compressed_depth(fmt, payload)


def test_compressed_depth_png_of_8_bits_is_refused():
    ok, png = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageDecodeError, match="16-bit"):
        decode_compressed_depth("16UC1; compressedDepth png", b"\0" * 12 + png.tobytes())


def test_compressed_color_jpeg_and_png_come_back_as_rgb(rng):
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[..., 0] = 200  # red: a BGR mix-up would show in channel 2
    rgb[4:8, 4:8] = rng.integers(0, 255, size=(4, 4, 3))
    out = decode_compressed_color("rgb8; jpeg compressed bgr8", jpeg(rgb))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert abs(int(out[0, 0, 0]) - 200) < 8 and out[0, 0, 2] < 8
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    np.testing.assert_array_equal(decode_compressed_color("png", png.tobytes()), rgb)
    with pytest.raises(ImageDecodeError, match="compressedDepth"):
        decode_compressed_color("16UC1; compressedDepth png", png.tobytes())
    with pytest.raises(ImageDecodeError, match="not a readable"):
        decode_compressed_color("jpeg", b"garbage bytes")


# ---------------------------------------------------------------------------------------------
# opening bags


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_directory_and_bare_storage_file_read_the_same(tmp_path, storage):
    b = simple_bag(10)
    b.custom[EPISODE_KEY] = json.dumps({"task": "pick", "instruction": "pick it"})
    bag_dir = b.write(tmp_path / "demo", storage)
    with Bag(bag_dir) as bag:
        assert bag.storage == storage and bag.name == "demo" and bag.truncation is None
        assert bag.topics["/depth"].msgtype == IMAGE and bag.topics["/depth"].count == 10
        assert bag.episode_metadata() == {"task": "pick", "instruction": "pick it"}
        full = [(t, log) for t, _, log, _ in bag.messages()]
    with Bag(storage_file(bag_dir)) as bag:  # no metadata.yaml read: no custom data
        assert bag.name == "demo" and bag.episode_metadata() is None
        assert [(t, log) for t, _, log, _ in bag.messages()] == full
    assert len(full) == 20 and [x[1] for x in full] == sorted(x[1] for x in full)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated_mcap_reads_every_complete_chunk_and_says_where_it_stopped(tmp_path, fraction):
    bag_dir = simple_bag(300, payload=40_000).write(tmp_path / "full")
    with Bag(bag_dir) as bag:
        full = [(topic, log, int(m.header.stamp.nanosec)) for topic, _, log, m in bag.messages()]
    src = storage_file(bag_dir)
    data = src.read_bytes()
    cut = tmp_path / "crashed"  # a recorder killed mid-episode: no metadata.yaml, no footer
    cut.mkdir()
    (cut / "crashed.mcap").write_bytes(data[: int(len(data) * fraction)])
    with Bag(cut) as bag:
        got = [(topic, log, int(m.header.stamp.nanosec)) for topic, _, log, m in bag.messages()]
        t = bag.truncation
    assert t is not None and t.total_bytes == int(len(data) * fraction)
    assert 0 < t.readable_bytes <= t.total_bytes
    assert got == full[: len(got)]  # a prefix, in order, nothing invented
    # rosbags' writer closes a chunk every ~1 MiB: at most that much (about 26 messages) is lost
    lost_bytes = len(data) * fraction - t.readable_bytes
    assert lost_bytes < 2**20 + 50_000
    assert len(got) >= len(full) * fraction - 60


def _metadata_record(name: str, values: dict[str, str]) -> bytes:
    """An MCAP Metadata record (op 0x0C) as the MCAP specification lays it out."""

    def s(text: str) -> bytes:
        return struct.pack("<I", len(text.encode())) + text.encode()

    entries = b"".join(s(k) + s(v) for k, v in values.items())
    body = s(name) + struct.pack("<I", len(entries)) + entries
    return struct.pack("<BQ", 0x0C, len(body)) + body


def test_a_killed_recording_keeps_its_episode_metadata_from_the_mcap_record(tmp_path):
    """The recorder writes the episode metadata as an MCAP metadata record at the start, so a
    recording killed before metadata.yaml existed still has it: <name>.partial/<name>/<name>.mcap
    """
    src = storage_file(simple_bag(300, payload=40_000).write(tmp_path / "full")).read_bytes()
    (header_len,) = struct.unpack_from("<Q", src, 9)
    at = 8 + 9 + header_len  # after the magic and the header record
    meta = {"task": "pour", "instruction": "pour the water", "operator": "ada"}
    record = _metadata_record(EPISODE_KEY, {"json": json.dumps(meta)})
    data = src[:at] + record + src[at:]
    crashed = tmp_path / "ep_0001.partial" / "ep_0001"
    crashed.mkdir(parents=True)
    (crashed / "ep_0001.mcap").write_bytes(data[: len(data) // 2])
    (crashed.parent / "reserve").write_bytes(b"\0" * 100)
    with Bag(crashed.parent) as bag:
        assert bag.name == "ep_0001" and bag.truncation is not None
        assert bag.episode_metadata() == meta
        assert sum(1 for _ in bag.messages()) > 100
    # zeros after the last record (space the writer reserved) end the readable part too
    (crashed / "ep_0001.mcap").write_bytes(data[: len(data) // 2] + b"\0" * 5000)
    with Bag(crashed / "ep_0001.mcap") as bag:
        assert bag.truncation.readable_bytes < len(data) // 2
        assert bag.episode_metadata() == meta


def test_a_cut_inside_the_header_or_a_non_bag_is_a_clear_error(tmp_path):
    src = storage_file(simple_bag(5).write(tmp_path / "b"))
    (tmp_path / "x.mcap").write_bytes(src.read_bytes()[:10])
    with pytest.raises(BagError, match="nothing readable"):
        Bag(tmp_path / "x.mcap")
    (tmp_path / "y.mcap").write_bytes(b"hello world, not an mcap file at all")
    with pytest.raises(BagError, match="not an MCAP file"):
        Bag(tmp_path / "y.mcap")
    with pytest.raises(BagError, match="does not exist"):
        Bag(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BagError, match="not a rosbag2 directory"):
        Bag(tmp_path / "notes.txt")


def test_a_bag_directory_whose_mcap_was_cut_still_opens(tmp_path):
    """metadata.yaml present (custom data kept) but its MCAP file lost its end."""
    b = simple_bag(200, payload=40_000)
    b.custom[EPISODE_KEY] = json.dumps({"task": "t"})
    bag_dir = b.write(tmp_path / "b")
    f = storage_file(bag_dir)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with Bag(bag_dir) as bag:
        assert bag.truncation is not None and bag.episode_metadata() == {"task": "t"}
        n = sum(1 for _ in bag.messages())
    assert 0 < n < 400


# ---------------------------------------------------------------------------------------------
# topics map


def test_shipped_maps_load():
    ours = TopicsMap.load(topics_map_path("clamp"))
    assert ours.camera_names == ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]
    assert ours.arms["left"].leader == "/leader_left/joint_states"
    assert ours.arms["right"].command == "/right_arm_controller/joint_trajectory"
    assert ours.follower_gripper_range is None
    trossen = TopicsMap.load(topics_map_path("trossen_realsense"))
    assert trossen.cameras[0].depth.endswith("/compressedDepth")
    assert trossen.cameras[0].frame_id == "cam_high_color_optical_frame"
    assert trossen.arms["left"].command == "" and trossen.follower_gripper_range is not None


def _map_dict():
    return {
        "cameras": {"cam_a": {"color": "a/c", "depth": "a/d", "camera_info": "a/i"}},
        "arms": {
            "left": {"follower": "/fl", "leader": "/ll"},
            "right": {"follower": "/fr", "command": "/cr"},
        },
    }


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d["cameras"]["cam_a"].update(colour="x"), "cameras.cam_a.colour"),
        (lambda d: d["cameras"]["cam_a"].pop("depth"), "cameras.cam_a.depth"),
        (lambda d: d["arms"].update(middle={"follower": "/m"}), "arms.middle"),
        (lambda d: d["arms"].pop("right"), "arms"),
        (lambda d: d["arms"]["left"].pop("follower"), "arms.left.follower"),
        (lambda d: d.update(leader_gripper_range=[0.1]), "leader_gripper_range"),
        (lambda d: d.update(follower_gripper_range=[1, 1]), "follower_gripper_range"),
        (lambda d: d.update(expected_rates_hz={"camera": -1}), "expected_rates_hz.camera"),
        (lambda d: d.update(tf="/a/c"), "tf"),
        (lambda d: d.update(frobnicate=1), "frobnicate"),
        (lambda d: d.pop("cameras"), "cameras"),
        (lambda d: d["cameras"]["cam_a"].update(depth_camera_info="/x"), "depth_camera_info"),
        (lambda d: d["cameras"].update({"bad name": d["cameras"]["cam_a"]}), "cameras.bad name"),
        (lambda d: d["cameras"]["cam_a"].update(color=3), "cameras.cam_a.color"),
    ],
)
def test_a_wrong_topics_map_is_one_error_naming_the_key(tmp_path, edit, key):
    d = _map_dict()
    edit(d)
    path = tmp_path / "map.yaml"
    import yaml

    path.write_text(yaml.safe_dump(d))
    with pytest.raises(TopicsMapError) as e:
        TopicsMap.load(path)
    msg = str(e.value)
    assert str(path) in msg and f"{key}" in msg and "\n" not in msg


def test_topics_map_resolves_relative_names_and_routes_topics():
    m = TopicsMap.from_dict(_map_dict())
    routes = m.routes()
    assert routes["/a/c"] == ("camera", "cam_a", "color")
    assert routes["/ll"] == ("arm", "left", "leader")
    assert routes["/cr"] == ("arm", "right", "command")
    assert routes["/tf_static"] == ("tf", "", "tf_static")
    assert "/fr" in routes and m.base_frame == "world"
    with pytest.raises(TopicsMapError, match="cannot read"):
        TopicsMap.load("/nonexistent/map.yaml")


# ---------------------------------------------------------------------------------------------
# decoded messages


def test_arm_joint_values_pick_joints_by_name_and_refuse_incomplete_states():
    names = ["left_finger", *reversed(ARM_JOINT_NAMES), "right_finger"]
    values = [9.0, *reversed(range(7)), 8.0]
    np.testing.assert_array_equal(arm_joint_values(names, values, "position"), np.arange(7))
    assert arm_joint_values(names, [], "velocity") is None
    with pytest.raises(ValueError, match="missing joint"):
        arm_joint_values(ARM_JOINT_NAMES[:6], np.zeros(6), "position")
    with pytest.raises(ValueError, match="more than once"):
        arm_joint_values([*ARM_JOINT_NAMES, "waist"], np.zeros(8), "position")
    with pytest.raises(ValueError, match="non-finite position"):
        arm_joint_values(ARM_JOINT_NAMES, [np.nan] + [0.0] * 6, "position")
    with pytest.raises(ValueError, match="7 joint names but 6"):
        arm_joint_values(ARM_JOINT_NAMES, np.zeros(6), "effort")


def test_trajectory_runs_like_joint_trajectory_controller():
    p = np.array([np.full(7, 1.0), np.full(7, 3.0)])
    traj = TrajectoryCommand(1000, np.array([100, 300]), p)
    before = np.zeros(7)
    np.testing.assert_allclose(traj.sample(1000, before), 0.0)  # takes over from where it was
    np.testing.assert_allclose(traj.sample(1050, before), 0.5)  # ... towards the first point
    np.testing.assert_allclose(traj.sample(1100, before), 1.0)
    np.testing.assert_allclose(traj.sample(1200, before), 2.0)
    np.testing.assert_allclose(traj.sample(5000, before), 3.0)  # holds the last point
    np.testing.assert_allclose(traj.sample(1050, None), 1.0)  # nothing before: hold the first
    stop = TrajectoryCommand(2000, np.zeros(0, np.int64), np.zeros((0, 7)))
    np.testing.assert_allclose(stop.sample(3000, np.full(7, 2.0)), 2.0)
    assert stop.sample(3000, None) is None


def test_tf_sample_distance_measures_how_far_a_pose_is_from_measured_tf():
    tf = TfBuffer()
    tf.set_transform("world", "base", 0, Transform.identity(), static=True)
    for t in (0, 100, 200, 1000):
        tf.set_transform(
            "base", "cam", t, Transform(np.array([t * 1e-3, 0, 0]), np.array([0, 0, 0, 1.0]))
        )
    assert tf.sample_distance_ns("world", "cam", 100) == 0
    assert tf.sample_distance_ns("world", "cam", 150) == 50
    assert tf.sample_distance_ns("world", "cam", 600) == 400  # inside the 200..1000 gap
    assert tf.sample_distance_ns("world", "base", 600) == 0  # static only
    assert tf.sample_distance_ns("cam", "cam", 5) == 0
    with pytest.raises(UnknownFrameError):
        tf.sample_distance_ns("world", "nowhere", 0)


def _roles_map(**arms) -> TopicsMap:
    return TopicsMap.from_dict(
        {
            "cameras": {"cam": {"color": "/color", "depth": "/depth", "camera_info": "/info"}},
            "arms": {
                "left": {"follower": "/js", **arms},
                "right": {"follower": "/js_r"},
            },
        }
    )


def test_read_roles_decodes_in_recording_order_and_keeps_bad_messages_as_errors(tmp_path):
    b = BagBuilder()
    cam = PinholeCamera.from_fov(8, 6, 60.0)
    for i in range(3):
        t = T0 + i * 10_000_000
        b.add("/depth", IMAGE, t + 5, image(np.full((6, 8), 100 + i, np.uint16), "16UC1", t, "f"))
        b.add("/info", INFO, t + 4, camera_info(cam, t, "f"))
        b.add("/js", JOINTS, t + 1, joint_state(t, ARM_JOINT_NAMES, np.arange(7) * i, np.ones(7)))
    b.add("/color", IMAGE, T0 + 7, image(np.zeros((6, 8), np.uint8), "yuv422", T0, "f"))
    b.add("/tf_static", TF, T0, tf_message([("world", "f", 0, np.eye(4))]))
    path = b.write(tmp_path / "b")
    with Bag(path) as bag:
        msgs = list(read_roles(bag, _roles_map()))
    assert [m.log_ns for m in msgs] == sorted(m.log_ns for m in msgs)
    depth = [m for m in msgs if m.kind == "depth"]
    assert [int(m.value.data[0, 0]) for m in depth] == [100, 101, 102]
    assert depth[0].value.scale_m == 1e-3 and depth[0].value.frame_id == "f"
    assert depth[1].stamp_ns == T0 + 10_000_000 and depth[1].log_ns == T0 + 10_000_005
    js = [m for m in msgs if m.kind == "follower"]
    np.testing.assert_array_equal(js[2].value.positions, np.arange(7) * 2)
    assert js[0].value.efforts is None and js[0].role == "arm" and js[0].name == "left"
    (color,) = [m for m in msgs if m.kind == "color"]
    assert color.value is None and "yuv422" in color.error
    (static,) = [m for m in msgs if m.kind == "tf_static"]
    assert static.value[0].child == "f"
    info = [m for m in msgs if m.kind == "camera_info"][0].value
    got = info.camera
    assert (got.width, got.height, got.fx, got.fy, got.cx, got.cy) == (
        cam.width,
        cam.height,
        cam.fx,
        cam.fy,
        cam.cx,
        cam.cy,
    )
    assert got.distortion_model == "plumb_bob" and not any(got.distortion)


def test_read_roles_refuses_a_stream_whose_stamps_go_backwards(tmp_path):
    b = BagBuilder()
    for i, k in enumerate([0, 1, 2, 1, 3]):  # a clock reset in the middle
        t = T0 + k * 20_000_000
        b.add("/js", JOINTS, T0 + i * 20_000_000, joint_state(t, ARM_JOINT_NAMES, np.zeros(7)))
    with Bag(b.write(tmp_path / "b")) as bag:
        with pytest.raises(StampOrderError, match="/js: header stamps go backwards"):
            list(read_roles(bag, _roles_map()))


def test_read_roles_refuses_a_mapped_topic_of_the_wrong_type(tmp_path):
    b = BagBuilder()
    b.add("/js", IMAGE, T0, image(np.zeros((2, 2), np.uint16), "16UC1", T0, "f"))
    with Bag(b.write(tmp_path / "b")) as bag:
        with pytest.raises(BagError, match="topic /js .*carries sensor_msgs/msg/Image.*JointState"):
            list(read_roles(bag, _roles_map()))


def test_trajectory_messages_decode_with_their_start(tmp_path):
    b = BagBuilder()
    names = list(reversed(ARM_JOINT_NAMES))
    b.add(
        "/cmd", TRAJ, T0 + 5, trajectory(T0 + 100, names, [(0, np.arange(7)), (10**8, np.ones(7))])
    )
    b.add("/cmd", TRAJ, T0 + 9, trajectory(0, names, [(10**8, np.ones(7))]))  # stamp 0: now
    with Bag(b.write(tmp_path / "b")) as bag:
        msgs = list(read_roles(bag, _roles_map(command="/cmd")))
    first, second = (m.value for m in msgs)
    assert first.start_ns == T0 + 100 and list(first.times_ns) == [0, 10**8]
    np.testing.assert_array_equal(first.positions[0], np.arange(7)[::-1])
    assert second.start_ns == T0 + 9 and msgs[1].stamp_ns == T0 + 9
