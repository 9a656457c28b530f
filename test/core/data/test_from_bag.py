"""`clamp data from-bag`: real bags (written with rosbags' writer) become episodes that match an
independent account of the same data - a MuJoCo rollout written directly, and synthetic streams
with known motion - and every kind of bad bag is refused (or reported) with nothing left behind.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from clamp_core.aloha import ARM_JOINT_NAMES, SIDES
from clamp_core.cli import main
from clamp_core.data import EpisodeReader, check_dataset
from clamp_core.data.bags import EPISODE_KEY, TopicsMap, topics_map_path
from clamp_core.data.from_bag import FromBagConfig, convert_bag, convert_bags
from clamp_core.geometry.camera import PinholeCamera
from clamp_core.geometry.image import encode_depth_mm
from clamp_core.teleop import GripperMap, leader_positions

from .test_bags import (
    COMPRESSED,
    IMAGE,
    INFO,
    JOINTS,
    T0,
    TF,
    TRAJ,
    BagBuilder,
    camera_info,
    compressed,
    compressed_depth_16,
    image,
    joint_state,
    jpeg,
    storage_file,
    tf_message,
    trajectory,
)

MS = 1_000_000
CAMS = ("cam_a", "cam_b")  # cam_a fixed (tf_static), cam_b moving (tf)
W, H = 16, 12
INTR = PinholeCamera.from_fov(W, H, 60.0)
LEADER = GripperMap()


def leftover_files(out) -> list:
    """Everything under ``out`` a refused bag must not leave: episodes, partial files, the
    task folders made for them."""
    return sorted(str(p) for p in out.rglob("*")) if out.exists() else []


# ---------------------------------------------------------------------------------------------
# synthetic streams with known motion


def q_true(t_s: float) -> np.ndarray:
    """(14,) follower joints at t: linear in time (interpolation is exact), grippers 0.2 .. 0.7."""
    j = np.arange(7)
    one = np.concatenate([0.1 * (j[:6] + 1) * t_s + 0.01 * j[:6], [0.2 + 0.5 * t_s]])
    return np.concatenate([one, one - 0.05])


def lead_true(t_s: float) -> np.ndarray:
    """(14,) the operator's command: 50 ms ahead of the follower."""
    return q_true(t_s + 0.05)


def cam_b_pose(t_s: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = [[1, 0, 0], [0, -1, 0], [0, 0, -1]]  # looking down
    T[:3, 3] = [0.1 + 0.2 * t_s, 0.0, 0.5]
    return T


CAM_A_POSE = np.array([[0, 0, 1, -0.5], [-1, 0, 0, 0], [0, -1, 0, 0.3], [0, 0, 0, 1]], dtype=float)


def cam_stamps(duration_s: float, hz: float, offset_ns: int = 0) -> list[int]:
    n = int(duration_s * hz) + 1
    return [T0 + offset_ns + int(round(i * 1e9 / hz)) for i in range(n)]


def depth_value(cam: int, i: int) -> int:
    return 500 + 1000 * cam + i


def map_dict(cams=CAMS) -> dict:
    return {
        "cameras": {
            c: {
                "color": f"/{c}/color/image_raw",
                "depth": f"/{c}/depth/image_raw",
                "camera_info": f"/{c}/color/camera_info",
            }
            for c in cams
        },
        "arms": {
            s: {
                "follower": f"/follower_{s}/joint_states",
                "leader": f"/leader_{s}/joint_states",
                "command": f"/{s}_arm_controller/joint_trajectory",
            }
            for s in SIDES
        },
    }


TMAP = TopicsMap.from_dict(map_dict(), "test map")


def synthetic_bag(
    path,
    *,
    duration_s: float = 1.0,
    cam_hz: float = 30.0,
    storage: str = "mcap",
    leader: bool = True,
    commands: bool = False,
    skip: tuple = (),
    tf_gap_s: tuple[float, float] | None = None,
    backwards_at: int | None = None,
    info_from_s: float = 0.0,
    wrong_type: str | None = None,
    metadata: dict | None = None,
    cam_b_offset_ns: int = 3 * MS,
    size: tuple[int, int] = (W, H),
    log_offset_ns: int = 0,
):
    """Two 16x12 RGB-D cameras at cam_hz (cam_b stamped cam_b_offset_ns after cam_a), follower and
    leader joint states and tf at 50 Hz, recorded with realistic delays (log time = stamp +
    transport). Topics in ``skip`` are left out."""
    b = BagBuilder()
    w, h = size
    intr = PinholeCamera.from_fov(w, h, 60.0)

    def add(topic, msgtype, log_ns, msg):
        log_ns += log_offset_ns
        if topic in skip:
            return
        if topic == wrong_type:  # the right name, something else on it
            msgtype, msg = JOINTS, joint_state(log_ns, ARM_JOINT_NAMES, np.zeros(7))
        b.add(topic, msgtype, log_ns, msg)

    for ci, cam in enumerate(CAMS):
        frame = f"{cam}_color_optical_frame"
        offset = cam_b_offset_ns if cam == "cam_b" else 0
        for i, t in enumerate(cam_stamps(duration_s, cam_hz, offset)):
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[..., 0], rgb[..., 1] = i % 256, ci
            d = np.full((h, w), depth_value(ci, i), np.uint16)
            add(f"/{cam}/color/image_raw", IMAGE, t + 8 * MS, image(rgb, "rgb8", t, frame))
            add(f"/{cam}/depth/image_raw", IMAGE, t + 9 * MS, image(d, "16UC1", t, frame))
            if t - T0 >= info_from_s * 1e9:
                add(f"/{cam}/color/camera_info", INFO, t + 8 * MS, camera_info(intr, t, frame))
    add("/tf_static", TF, T0, tf_message([("world", "cam_a_color_optical_frame", T0, CAM_A_POSE)]))
    n = int(duration_s * 50) + 1
    for k in range(n):
        t = T0 + k * 20 * MS
        ts = (t - T0) * 1e-9
        js_t = t
        if backwards_at is not None and k >= backwards_at:
            js_t = t - 200 * MS  # the clock jumped back
        q, a = q_true(ts), lead_true(ts)
        lead = leader_positions(a, LEADER)
        for i, side in enumerate(SIDES):
            sl = slice(7 * i, 7 * i + 7)
            add(
                f"/follower_{side}/joint_states",
                JOINTS,
                t + 1 * MS,
                joint_state(js_t, ARM_JOINT_NAMES, q[sl], np.full(7, 0.5), np.full(7, -1.0)),
            )
            if leader:
                add(
                    f"/leader_{side}/joint_states",
                    JOINTS,
                    t + 1 * MS,
                    joint_state(t, ARM_JOINT_NAMES, lead[side]),
                )
            if commands and k % 5 == 0:  # a plan every 100 ms along the operator's path
                pts = [(dt, a_at(ts + dt * 1e-9)[sl]) for dt in (20 * MS, 100 * MS)]
                add(
                    f"/{side}_arm_controller/joint_trajectory",
                    TRAJ,
                    t + 2 * MS,
                    trajectory(t, ARM_JOINT_NAMES, pts),
                )
        in_gap = tf_gap_s is not None and tf_gap_s[0] < ts < tf_gap_s[1]
        if not in_gap:
            add(
                "/tf",
                TF,
                t + 1 * MS,
                tf_message([("world", "cam_b_color_optical_frame", t, cam_b_pose(ts))]),
            )
    if metadata is not None:
        b.custom[EPISODE_KEY] = json.dumps(metadata)
    return b.write(path, storage)


def a_at(t_s: float) -> np.ndarray:
    return lead_true(t_s)


META = {
    "task": "pick_cube",
    "instruction": "pick up the cube",
    "success": False,
    "joint_names": [f"{s}_{j}" for s in SIDES for j in ARM_JOINT_NAMES],
    "camera_names": list(CAMS),
    "robot": "aloha",
    "software_version": "0.1.0",
    "start_ns": T0,
    "stop_ns": T0 + 10**9,
    "operator": "ada",
    "notes": "second try",
}


def newest_at_or_before(stamps: list[int], t: int) -> int:
    i = int(np.searchsorted(stamps, t, side="right")) - 1
    assert i >= 0
    return i


# ---------------------------------------------------------------------------------------------
# semantics on synthetic streams


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fb")
    bag = synthetic_bag(root / "demo_001", metadata=META)
    report = convert_bag(bag, root / "out", TMAP)
    return bag, root / "out", report


def test_frames_follow_the_documented_semantics(converted):
    _, out, report = converted
    assert report["status"] == "written", report["reason"]
    assert report["frames"]["dropped"] == {}
    a_stamps = cam_stamps(1.0, 30.0)
    b_stamps = cam_stamps(1.0, 30.0, 3 * MS)
    with EpisodeReader(report["episode"]) as ep:
        assert ep.num_frames == report["frames"]["written"] == 51  # 0 .. 1 s at 50 Hz
        for k in range(ep.num_frames):
            f = ep.frame(k)
            t = T0 + k * 20 * MS
            assert f["stamp_ns"] == t
            ts = (t - T0) * 1e-9
            # the newest synchronised set at or before the frame: the sync pairs cam_b's frame
            # (3 ms later) with cam_a's, so a set is complete only with cam_a's stamp <= t
            i = newest_at_or_before(a_stamps, t)
            assert int(f["depth_mm"]["cam_a"][0, 0]) == depth_value(0, i)
            assert int(f["depth_mm"]["cam_b"][0, 0]) == depth_value(1, i)
            assert int(f["images"]["cam_a"][0, 0, 0]) == i and f["images"]["cam_b"][0, 0, 1] == 1
            # camera poses at each image's own stamp, not at the frame's
            np.testing.assert_allclose(f["extrinsics"]["cam_a"], CAM_A_POSE, atol=1e-6)
            # (tf ends at 1 s: the last image, 3 ms later, holds the last sample, as documented)
            tb = min((b_stamps[i] - T0) * 1e-9, 1.0)
            np.testing.assert_allclose(f["extrinsics"]["cam_b"], cam_b_pose(tb), atol=1e-6)
            # joint states interpolated at the frame stamp; action = leader mapped
            np.testing.assert_allclose(f["qpos"], q_true(ts), atol=1e-6)
            np.testing.assert_allclose(f["action"], lead_true(ts), atol=1e-6)
            np.testing.assert_allclose(f["qvel"], 0.5)
            np.testing.assert_allclose(f["effort"], -1.0)


def test_metadata_comes_from_the_bag_and_the_episode_passes_the_checker(converted):
    bag, out, report = converted
    summary, problems = check_dataset(out)
    assert problems == [] and summary["episodes"] == 1
    with EpisodeReader(report["episode"]) as ep:
        m = ep.meta
        assert (m.task, m.instruction, m.sim, m.fps) == ("pick_cube", "pick up the cube", False, 50)
        assert ep.success is False and m.camera_names == list(CAMS)
        assert m.extra["operator"] == "ada" and m.extra["notes"] == "second try"
        assert m.extra["source_bag"] == "demo_001" and m.extra["software_version"] == "0.1.0"
        assert m.writer == "clamp data from-bag" and m.object_names == []
        np.testing.assert_allclose(ep.cameras["cam_a"].K[0, 0], INTR.fx)
    assert report["episode"].endswith("out/pick_cube/demo_001.hdf5")


def test_report_measures_every_stream_and_the_speed(converted):
    _, _, report = converted
    s = report["streams"]
    assert s["/cam_a/depth/image_raw"]["rate_hz"] == pytest.approx(30.0, rel=0.01)
    assert s["/cam_a/depth/image_raw"]["expected_hz"] == 30.0
    assert s["/follower_left/joint_states"]["rate_hz"] == pytest.approx(50.0, rel=0.01)
    assert s["/follower_left/joint_states"]["messages"] == 51
    assert s["/tf_static"]["messages"] == 1
    assert report["rate_problems"] == [] and report["action_source"] == {
        "left": "leader",
        "right": "leader",
    }
    assert report["frames_per_s"] > 0 and report["real_time_factor"] > 0
    assert report["bag_duration_s"] == pytest.approx(1.0, abs=0.02)


def test_an_existing_episode_is_skipped_unless_overwritten(converted, tmp_path):
    bag, out, report = converted
    again = convert_bag(bag, out, TMAP)
    assert again["status"] == "skipped"
    redo = convert_bag(bag, out, TMAP, FromBagConfig(overwrite=True))
    assert redo["status"] == "written" and redo["frames"]["written"] == 51


def test_recorded_commands_are_the_actions_of_a_bag_without_leader(tmp_path):
    bag = synthetic_bag(tmp_path / "b", leader=False, commands=True, metadata=META)
    report = convert_bag(bag, tmp_path / "out", TMAP)
    assert report["status"] == "written", report["reason"]
    assert report["action_source"] == {"left": "command", "right": "command"}
    with EpisodeReader(report["episode"]) as ep:
        action = ep.lowdim()["action"]
        # frame 0: before the first command's first point there is nothing to come from: held
        np.testing.assert_allclose(action[0], lead_true(0.02), atol=1e-6)
        for k in range(1, ep.num_frames):
            np.testing.assert_allclose(action[k], lead_true(k * 0.02), atol=1e-6)


def test_a_recording_clock_apart_from_the_stamps_is_taken_into_the_stamps_time_base(
    converted, tmp_path
):
    """A simulation stamps with its own time but the bag was recorded on wall-clock time: tf's
    clock checks and the lateness rule work in the stamps' time base all the same."""
    _, _, reference = converted
    bag = synthetic_bag(tmp_path / "b", metadata=META, log_offset_ns=-3600 * 10**9)
    report = convert_bag(bag, tmp_path / "out", TMAP)
    assert report["status"] == "written", report["reason"]
    assert report["frames"] == reference["frames"] and report["tf_rejected"] == 0
    assert any("from the recording clock" in n for n in report["notes"])
    with EpisodeReader(report["episode"]) as ep, EpisodeReader(reference["episode"]) as ref:
        np.testing.assert_array_equal(ep.lowdim()["qpos"], ref.lowdim()["qpos"])
        np.testing.assert_array_equal(
            ep.frame(30)["extrinsics"]["cam_b"], ref.frame(30)["extrinsics"]["cam_b"]
        )


def test_a_stalled_camera_drops_frames_and_the_report_names_the_gap(tmp_path):
    """cam_b sends nothing between 0.4 s and 0.5 s: frames there have no image set newer than
    max_image_age_s (0.1 s) once the last set is too old."""
    bag = synthetic_bag(tmp_path / "b", metadata=META)
    # rewrite without cam_b frames 0.4 .. 0.55 s (a stall)
    builder = BagBuilder()
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as r:
        for c, log, raw in r.messages():
            msg = r.deserialize(raw, c.msgtype)
            if c.topic.startswith("/cam_b/") and 0.4e9 < log - T0 < 0.55e9:
                continue
            builder.add(c.topic, c.msgtype, log, msg)
    builder.custom[EPISODE_KEY] = json.dumps(META)
    stalled = builder.write(tmp_path / "stalled")
    report = convert_bag(stalled, tmp_path / "out", TMAP, FromBagConfig(max_dropped_fraction=0.5))
    assert report["status"] == "written", report["reason"]
    # cam_b frames 12 .. 16 are gone (logged 8-9 ms after their stamps), so cam_a's frames
    # 12 .. 16 find no partner: sets exist for frames 0 .. 11 and 17 .. 30
    sets = [t for i, t in enumerate(cam_stamps(1.0, 30.0)) if not 12 <= i <= 16]
    expected = sum(
        1
        for k in range(51)
        if T0 + k * 20 * MS - sets[newest_at_or_before(sets, T0 + k * 20 * MS)] > 100 * MS
    )
    assert report["frames"]["dropped"] == {"stale_images": expected} and expected == 5
    assert report["frames"]["written"] == 51 - expected
    gaps = report["streams"]["/cam_b/depth/image_raw"]["gaps"]
    assert gaps and gaps[0][1] == pytest.approx(6 / 30, abs=1e-3)
    assert any("/cam_b/depth/image_raw" in p for p in report["rate_problems"])


# ---------------------------------------------------------------------------------------------
# oracle: a MuJoCo rollout written directly vs the same rollout as a bag


@pytest.fixture(scope="module")
def rollout():
    pytest.importorskip("mujoco")
    pytest.importorskip("gym_aloha")
    from clamp_core.sim.tasks import make_task

    task = make_task("transfer_cube")
    sim = task.make_sim(width=64, height=48)
    seed, steps = 3, 40
    task.reset(sim, seed)
    expert = task.expert(sim, np.random.default_rng(seed))
    frames, actions = [], []
    for _ in range(steps):  # what clamp generate records (sim/generate.py _rollout)
        action = expert.act(sim)
        frames.append(sim.observe(render=True))
        actions.append(np.asarray(action, float))
        sim.step(action)
    return task, sim, frames, actions


def test_oracle_bag_of_a_mujoco_rollout_converts_to_the_directly_written_episode(rollout, tmp_path):
    """Differences allowed: float32 storage of qpos/action/extrinsics (1e-6), the leader
    gripper's round trip through its angle (1e-9); depth and colour are identical."""
    task, sim, frames, actions = rollout
    tmap = TopicsMap.load(topics_map_path("clamp"))
    b = BagBuilder()
    cams = [c.name for c in sim.cameras]
    static = {"cam_high", "cam_low"}
    b.add(
        "/tf_static",
        TF,
        T0,
        tf_message(
            [("world", f"{c}_color_optical_frame", T0, frames[0].extrinsics[c]) for c in static]
        ),
    )
    for k, (f, a) in enumerate(zip(frames, actions, strict=True)):
        t = T0 + k * 20 * MS
        lead = leader_positions(a, LEADER)
        for i, side in enumerate(SIDES):
            sl = slice(7 * i, 7 * i + 7)
            js = joint_state(t, ARM_JOINT_NAMES, f.qpos[sl], f.qvel[sl], f.effort[sl])
            b.add(f"/follower_{side}/joint_states", JOINTS, t + MS, js)
            b.add(
                f"/leader_{side}/joint_states",
                JOINTS,
                t + MS,
                joint_state(t, ARM_JOINT_NAMES, lead[side]),
            )
        moving = [
            ("world", f"{c}_color_optical_frame", t, f.extrinsics[c])
            for c in cams
            if c not in static
        ]
        b.add("/tf", TF, t + MS, tf_message(moving))
        for c in cams:
            frame = f"{c}_color_optical_frame"
            b.add(
                f"/{c}/color/camera_info",
                INFO,
                t + 4 * MS,
                camera_info(sim.intrinsics[c], t, frame),
            )
            b.add(f"/{c}/color/image_raw", IMAGE, t + 5 * MS, image(f.images[c], "rgb8", t, frame))
            depth = encode_depth_mm(f.depth_m[c])
            b.add(f"/{c}/depth/image_raw", IMAGE, t + 6 * MS, image(depth, "16UC1", t, frame))
    b.custom[EPISODE_KEY] = json.dumps(
        {
            "task": task.name,
            "instruction": task.instruction,
            "success": True,
            "sim": True,
            "seed": 3,
        }
    )
    bag = b.write(tmp_path / "sim_demo")
    report = convert_bag(bag, tmp_path / "out", tmap)
    assert report["status"] == "written", report["reason"]
    assert report["frames"] == {
        "grid": len(frames),
        "written": len(frames),
        "dropped": {},
        "drop_examples": {},
    }
    with EpisodeReader(report["episode"]) as ep:
        assert ep.meta.sim and ep.meta.seed == 3 and ep.meta.camera_names == cams
        low = ep.lowdim()
        np.testing.assert_allclose(low["qpos"], np.array([f.qpos for f in frames]), atol=1e-6)
        np.testing.assert_allclose(low["action"], np.array(actions), atol=1e-6)
        for k in (0, len(frames) // 2, len(frames) - 1):
            got = ep.frame(k)
            for c in cams:
                np.testing.assert_allclose(got["extrinsics"][c], frames[k].extrinsics[c], atol=1e-6)
                np.testing.assert_array_equal(
                    got["depth_mm"][c], encode_depth_mm(frames[k].depth_m[c])
                )
                np.testing.assert_array_equal(got["images"][c], frames[k].images[c])
        for c in cams:
            cal = ep.cameras[c]
            intr = sim.intrinsics[c]
            np.testing.assert_allclose(
                cal.K, [[intr.fx, 0, intr.cx], [0, intr.fy, intr.cy], [0, 0, 1]]
            )
    assert check_dataset(tmp_path / "out")[1] == []


# ---------------------------------------------------------------------------------------------
# another team's bag: sqlite3, Trossen/RealSense names, compressed images, 32FC1 depth


def test_trossen_realsense_sqlite3_bag_with_compressed_images_converts_and_checks(tmp_path, rng):
    base = TopicsMap.load(topics_map_path("trossen_realsense"))
    d = yaml.safe_load(topics_map_path("trossen_realsense").read_text())
    # cam_low's driver sends float depth in metres, uncompressed
    d["cameras"]["cam_low"]["depth"] = "/cam_low/camera/aligned_depth_to_color/image_raw"
    map_path = tmp_path / "our_lab.yaml"
    map_path.write_text(yaml.safe_dump(d))
    tmap = TopicsMap.load(map_path)
    closed, open_ = base.follower_gripper_range
    b = BagBuilder()
    truth = {c.name: [] for c in tmap.cameras}
    stamps = cam_stamps(0.6, 30.0)
    statics = []
    for ci, cam in enumerate(tmap.cameras):
        frame = cam.frame_id
        T = np.eye(4)
        T[:3, 3] = [0.1 * ci, 0.2, 0.6]
        statics.append(("world", frame, T0, T))
        for i, t in enumerate(stamps):
            rgb = np.zeros((H, W, 3), np.uint8)
            rgb[..., 0] = 40 * ci + i
            rgb[..., 2] = 255 - 40 * ci
            mm = rng.integers(300, 2000, size=(H, W)).astype(np.uint16)
            mm[0, :3] = 0  # no reading
            truth[cam.name].append((rgb, mm))
            # the drivers stamp every camera with the same frame: the map names the real one
            hdr_frame = "camera_color_optical_frame"
            b.add(
                cam.color,
                COMPRESSED,
                t + 9 * MS,
                compressed("rgb8; jpeg compressed bgr8", jpeg(rgb), t, hdr_frame),
            )
            if cam.name == "cam_low":
                depth = image(mm.astype(np.float32) / 1000.0, "32FC1", t, hdr_frame)
                b.add(cam.depth, IMAGE, t + 10 * MS, depth)
            else:
                payload = compressed_depth_16(mm)
                b.add(
                    cam.depth,
                    COMPRESSED,
                    t + 10 * MS,
                    compressed("16UC1; compressedDepth png", payload, t, hdr_frame),
                )
            b.add(cam.camera_info, INFO, t + 9 * MS, camera_info(INTR, t, hdr_frame))
    b.add("/tf_static", TF, T0, tf_message(statics))
    finger_names = [*ARM_JOINT_NAMES, "left_finger", "right_finger"]
    for k in range(31):
        t = T0 + k * 20 * MS
        ts = k * 0.02
        q, a = q_true(ts), lead_true(ts)
        lead = leader_positions(a, LEADER)
        for i, side in enumerate(SIDES):
            sl = slice(7 * i, 7 * i + 7)
            f = q[sl].copy()
            f[6] = closed + f[6] * (open_ - closed)  # the gripper motor's angle
            pos = [*f, 0.03, -0.03]
            b.add(
                f"/follower_{side}/joint_states",
                JOINTS,
                t + MS,
                joint_state(t, finger_names, pos, np.zeros(9), np.zeros(9)),
            )
            b.add(
                f"/leader_{side}/joint_states",
                JOINTS,
                t + MS,
                joint_state(t, ARM_JOINT_NAMES, lead[side]),
            )
    bag = b.write(tmp_path / "trossen_demo", "sqlite3")
    report = convert_bag(
        bag, tmp_path / "out", tmap, FromBagConfig(task="sort", instruction="sort them")
    )
    assert report["status"] == "written", report["reason"]
    assert report["storage"] == "sqlite3" and report["frames"]["written"] == 31
    summary, problems = check_dataset(tmp_path / "out")
    assert problems == [] and summary["valid"] == 1
    with EpisodeReader(report["episode"]) as ep:
        for k in (0, 13, 30):
            f = ep.frame(k)
            t = T0 + k * 20 * MS
            i = newest_at_or_before(stamps, t)
            np.testing.assert_allclose(f["qpos"], q_true(k * 0.02), atol=1e-5)  # gripper normalised
            np.testing.assert_allclose(f["action"], lead_true(k * 0.02), atol=1e-6)
            for ci, cam in enumerate(tmap.cameras):
                rgb, mm = truth[cam.name][i]
                np.testing.assert_array_equal(
                    f["depth_mm"][cam.name], mm
                )  # PNG and 32FC1 exact to the mm
                err = np.abs(f["images"][cam.name].astype(int) - rgb.astype(int))
                assert err.max() <= 6  # JPEG
                assert f["extrinsics"][cam.name][0, 3] == pytest.approx(0.1 * ci)


# ---------------------------------------------------------------------------------------------
# bad bags: refused with the reason (or reported), nothing left behind


@pytest.fixture(scope="module")
def good_bag(tmp_path_factory):
    return synthetic_bag(tmp_path_factory.mktemp("good") / "demo", metadata=META)


def _refused(bag, tmp_path, cfg=None, tmap=TMAP) -> str:
    out = tmp_path / "refused_out"
    report = convert_bag(bag, out, tmap, cfg)
    assert report["status"] == "refused", report
    assert leftover_files(out) == []
    assert "\n" not in report["reason"]
    return report["reason"]


def test_truncated_mcap_is_converted_up_to_where_it_stops(tmp_path):
    # 320x240 images: the bag spans several of the writer's 1 MiB chunks
    full = synthetic_bag(tmp_path / "full", size=(320, 240), metadata=META)
    crashed = tmp_path / "crashed"  # killed recorder: no metadata.yaml, no MCAP footer
    crashed.mkdir()
    data = storage_file(full).read_bytes()
    (crashed / "crashed.mcap").write_bytes(data[: int(len(data) * 0.7)])
    reason = _refused(crashed, tmp_path)  # no metadata.yaml: the task is unknown
    assert "no task or instruction" in reason and "--task" in reason
    cfg = FromBagConfig(task="pick_cube", instruction="pick up the cube")
    report = convert_bag(crashed, tmp_path / "out", TMAP, cfg)
    assert report["status"] == "written", report["reason"]
    assert report["truncated"]["readable_bytes"] < report["truncated"]["total_bytes"]
    assert 10 < report["frames"]["written"] < 50 and report["frames"]["dropped"] == {}
    with EpisodeReader(report["episode"]) as ep:
        last = ep.num_frames - 1
        np.testing.assert_allclose(ep.frame(last)["qpos"], q_true(last * 0.02), atol=1e-6)


@pytest.mark.parametrize(
    "skip, match",
    [
        (
            "/cam_b/depth/image_raw",
            "camera 'cam_b': mapped depth topic /cam_b/depth/image_raw is not in the bag",
        ),
        ("/follower_right/joint_states", "arm 'right': mapped follower topic"),
        (
            "/cam_a/color/camera_info",
            "camera 'cam_a': mapped camera_info topic .* \\(images without camera_info\\)",
        ),
    ],
)
def test_a_missing_mapped_topic_is_refused_naming_it(tmp_path, skip, match):
    bag = synthetic_bag(tmp_path / "b", skip=(skip,), metadata=META)
    assert re.search(match, _refused(bag, tmp_path))


def test_one_camera_info_serves_the_whole_bag_and_may_not_change(tmp_path):
    """camera_info starting after the first images: the calibration is the camera's for the
    whole bag, so those images are used; a camera_info that changes refuses the bag."""
    bag = synthetic_bag(tmp_path / "late", info_from_s=0.5, metadata=META)
    report = convert_bag(bag, tmp_path / "out", TMAP)
    assert report["status"] == "written" and report["frames"]["written"] == 51
    b = BagBuilder()
    other = camera_info(PinholeCamera.from_fov(W, H, 50.0), T0 + 10**9, "f")  # a new lens
    b.add("/cam_a/color/camera_info", INFO, T0 + 10**9, other)
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as r:
        for c, log, raw in r.messages():
            b.add(c.topic, c.msgtype, log, r.deserialize(raw, c.msgtype))
    b.custom[EPISODE_KEY] = json.dumps(META)
    reason = _refused(b.write(tmp_path / "changed"), tmp_path)
    assert "camera 'cam_a': camera_info changed during the recording" in reason


def test_an_unknown_type_on_a_mapped_topic_is_refused(tmp_path):
    bag = synthetic_bag(tmp_path / "b", wrong_type="/cam_a/color/image_raw", metadata=META)
    reason = _refused(bag, tmp_path)
    assert "/cam_a/color/image_raw" in reason and "sensor_msgs/msg/JointState" in reason


def test_tf_gaps_longer_than_the_sync_tolerance_drop_frames_then_refuse(tmp_path):
    bag = synthetic_bag(tmp_path / "b", tf_gap_s=(0.3, 0.6), metadata=META)
    reason = _refused(bag, tmp_path)  # default max_dropped_fraction 0.05
    assert "tf_gap" in reason and "max_dropped_fraction" in reason
    report = convert_bag(bag, tmp_path / "out", TMAP, FromBagConfig(max_dropped_fraction=0.5))
    assert report["status"] == "written", report["reason"]
    stamps = [T0 + k * 20 * MS for k in range(51)]
    tf_stamps = [t for t in stamps if not 0.3 < (t - T0) * 1e-9 < 0.6]  # as the bag has them
    a_stamps, b_stamps = cam_stamps(1.0, 30.0), cam_stamps(1.0, 30.0, 3 * MS)
    expected = 0
    for k in range(51):
        s = b_stamps[newest_at_or_before(a_stamps, T0 + k * 20 * MS)]
        if min(abs(s - x) for x in tf_stamps) > 20 * MS:
            expected += 1
    assert report["frames"]["dropped"] == {"tf_gap": expected} and expected >= 10
    assert report["frames"]["written"] == 51 - expected
    assert "cam_b" in report["frames"]["drop_examples"]["tf_gap"]


def test_a_bag_with_no_leader_and_no_commands_is_refused(tmp_path):
    bag = synthetic_bag(tmp_path / "b", leader=False, metadata=META)
    assert "no leader and no commands" in _refused(bag, tmp_path)


def test_time_going_backwards_is_refused(tmp_path):
    bag = synthetic_bag(tmp_path / "b", backwards_at=20, metadata=META)
    reason = _refused(bag, tmp_path)
    assert "/follower_left/joint_states: header stamps go backwards" in reason


def test_a_bag_without_metadata_needs_task_and_instruction(tmp_path):
    bag = synthetic_bag(tmp_path / "b")
    assert "the bag has no clamp.episode metadata; pass --task and --instruction" in _refused(
        bag, tmp_path
    )
    report = convert_bag(bag, tmp_path / "out", TMAP, FromBagConfig(task="t", instruction="do it"))
    assert report["status"] == "written"
    with EpisodeReader(report["episode"]) as ep:
        assert ep.success and ep.meta.task == "t"


def test_an_earlier_episode_is_not_touched_by_a_refused_bag(good_bag, tmp_path):
    out = tmp_path / "out"
    ok = convert_bag(good_bag, out, TMAP)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = synthetic_bag(tmp_path / "demo", backwards_at=5, metadata=META)  # same name, same task
    report = convert_bag(bad, out, TMAP, FromBagConfig(overwrite=True))
    assert report["status"] == "refused" and ok["status"] == "written"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_converts_reports_json_and_fails_on_refusal(good_bag, tmp_path, capsys):
    map_path = tmp_path / "map.yaml"
    map_path.write_text(yaml.safe_dump(map_dict()))
    bad = synthetic_bag(tmp_path / "bad", leader=False, metadata=META)
    out = tmp_path / "out"
    rc = main(
        [
            "data",
            "from-bag",
            str(good_bag),
            str(bad),
            "--out",
            str(out),
            "--topics-map",
            str(map_path),
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert rc == 1 and (result["written"], result["refused"]) == (1, 1)
    good, refused = result["bags"]
    assert good["frames"]["written"] == 51 and "no leader" in refused["reason"]
    rc = main(["data", "from-bag", str(good_bag), "--out", str(out), "--topics-map", str(map_path)])
    text = capsys.readouterr().out
    assert rc == 0 and "skipped" in text and "1 skipped" in text
    rc = main(
        [
            "data",
            "from-bag",
            str(good_bag),
            "--out",
            str(tmp_path / "o2"),
            "--topics-map",
            str(map_path),
            "--overwrite",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "51 written of 51" in text and "real-time factor" in text
    assert main(["data", "check", str(tmp_path / "o2")]) == 0


def test_cli_wrong_topics_map_is_one_error_naming_the_key(good_bag, tmp_path, capsys):
    d = map_dict()
    d["arms"]["left"]["folower"] = "/x"
    map_path = tmp_path / "map.yaml"
    map_path.write_text(yaml.safe_dump(d))
    rc = main(
        [
            "data",
            "from-bag",
            str(good_bag),
            "--out",
            str(tmp_path / "o"),
            "--topics-map",
            str(map_path),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "arms.left.folower: unknown key" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_bags_convert_in_parallel_and_same_named_bags_are_refused(good_bag, tmp_path):
    second = synthetic_bag(tmp_path / "other" / "demo_002", metadata=META, size=(8, 6))
    twin = shutil.copytree(good_bag, tmp_path / "twin" / good_bag.name)
    paths = [good_bag, second, twin]
    parallel = convert_bags(paths, tmp_path / "par", TMAP, workers=2)
    serial = convert_bags(paths[:2], tmp_path / "ser", TMAP)
    assert [r["status"] for r in parallel["bags"]] == ["written", "written", "refused"]
    assert "has the same name 'demo'" in parallel["bags"][2]["reason"]
    for a, b in zip(parallel["bags"][:2], serial["bags"], strict=True):
        assert a["frames"] == b["frames"]
        with EpisodeReader(a["episode"]) as ea, EpisodeReader(b["episode"]) as eb:
            np.testing.assert_array_equal(ea.lowdim()["action"], eb.lowdim()["action"])
            np.testing.assert_array_equal(
                ea.frame(7)["images"]["cam_b"], eb.frame(7)["images"]["cam_b"]
            )
