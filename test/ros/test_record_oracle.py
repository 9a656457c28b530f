"""The recording path end to end, checked against an independent oracle: `clamp demo --record`
runs the sim node (the expert at the leader arms, the follower tracking them over DDS) and the
recorder node as separate processes and records seed S through the recorder's services; the bag
is read by an independent MCAP reader and converted by `clamp data from-bag`.

The oracle is `clamp generate`'s path in one process: the task reset with seed S, the arms at
rest, then the same expert. Over DDS the follower applies each leader state when it arrives,
so on a loaded machine some arrive a control period late; the oracle therefore steps in lockstep
with the bag and, at each control step, finds which recorded leader state (the newest, or one a
few periods older) reproduces the recorded follower state exactly. Every follower state, every
leader state (= the oracle's expert on the oracle's state), every camera pose and every depth
pixel must then match to floating-point precision; the delays are counted, not tolerated.

Documented differences: joint states report the gripper clipped to 0..1; the converter drops
frames the cameras skipped (reported) and a frame shows each camera's newest image at or
before it, so frames are compared by stamp, never by index.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import mujoco
import numpy as np
import pytest

from clamp_core.data.episode import EpisodeReader
from clamp_core.geometry.image import encode_depth_mm
from clamp_core.sim.tasks import make_task
from clamp_core.teleop import GripperMap, follower_command, leader_positions
from test.ros.conftest import child_env, log_tail, start_process, wait_for

pytestmark = pytest.mark.ros

TASK, SEED, W, H = "drawer_open", 3, 64, 48
TICK_NS = 20_000_000


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _independent_read(bag: Path) -> dict[str, list]:
    """Every message of the bag's .mcap through the `mcap` package's ROS 2 decoder (no code
    shared with the writer): topic -> [(log_time_ns, decoded message)]."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    (path,) = bag.glob("*.mcap")
    out: dict[str, list] = {}
    with path.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for _, channel, message, decoded in reader.iter_decoded_messages():
            out.setdefault(channel.topic, []).append((message.log_time, decoded))
    return out


def test_recorded_demo_matches_generate(ros_domain_id, tmp_path):
    env = child_env(ros_domain_id, tmp_path / "ros_log", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    out = tmp_path / "rec"
    cmd = [
        sys.executable, "-m", "clamp_ros.cli", "demo", "--record", "1", "--task", TASK,
        "--seed", str(SEED), "--camera-size", f"{W}x{H}", "--camera-rate", "50",
        "--real-time-factor", "0.5", "--out", str(out), "--json",
    ]  # fmt: skip
    proc = start_process(cmd, env, tmp_path / "record.log")
    wait_for(lambda: proc.poll() is not None, 600.0, what="clamp demo --record to finish")
    assert proc.returncode == 0, log_tail(tmp_path / "record.log")
    summary = json.loads(log_tail(tmp_path / "record.log", 1))
    (episode,) = summary["episodes"]
    assert episode["success"] and episode["saved"], episode
    bag = Path(episode["bag"])

    # the bag, read independently: every topic, plausible counts, the metadata
    msgs = _independent_read(bag)
    cams = ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]
    for cam in cams:
        for t in (
            f"/{cam}/color/image_raw",
            f"/{cam}/depth/image_raw",
            f"/{cam}/color/camera_info",
        ):
            assert len(msgs.get(t, [])) > 20, t
    for t in ("/follower_left/joint_states", "/leader_right/joint_states", "/tf"):
        assert len(msgs[t]) > 50, t
    assert msgs["/tf_static"], "static transforms sent before the start are in the bag"
    meta = json.loads(
        __import__("yaml").safe_load((bag / "metadata.yaml").read_text())[
            "rosbag2_bagfile_information"
        ]["custom_data"]["clamp.episode"]
    )
    assert meta["task"] == TASK and meta["success"] is True
    assert meta["instruction"] == make_task(TASK).instruction

    # bag -> episode
    from clamp_core.data.bags import TopicsMap, topics_map_path
    from clamp_core.data.from_bag import convert_bag

    result = convert_bag(bag, tmp_path / "episodes", TopicsMap.load(topics_map_path("clamp")))
    assert result["status"] == "written", result
    (path,) = list((tmp_path / "episodes").rglob("*.hdf5"))
    ep = EpisodeReader(path)
    assert ep.meta.task == TASK
    with h5py.File(path) as f:
        stamps = f["observations/stamp_ns"][:]
        act, qpos = f["action"][:], f["observations/qpos"][:]
        depth = {c: f[f"observations/depth/{c}"][:] for c in cams}
        extr = {c: f[f"cameras/{c}/extrinsics"][:] for c in cams}
    assert np.all(stamps % TICK_NS == 0) and np.all(np.diff(stamps) > 0)

    # the oracle, stepping in lockstep with the recording
    follower = {
        side: {
            _ns(m.header.stamp): np.array(m.position)
            for _, m in msgs[f"/follower_{side}/joint_states"]
        }
        for side in ("left", "right")
    }
    leader = {
        side: {_ns(m.header.stamp): m for _, m in msgs[f"/leader_{side}/joint_states"]}
        for side in ("left", "right")
    }
    ticks = sorted(set(follower["left"]) & set(follower["right"]))
    t_first, t_last = ticks[0] // TICK_NS, ticks[-1] // TICK_NS
    g = GripperMap()
    task = make_task(TASK)
    sim = task.make_sim(width=W, height=H)
    task.reset(sim, SEED)  # the sim node's first episode: seed S at tick 0, no reset since
    lo, hi = sim.joint_low, sim.joint_high
    low = {s_: np.append(lo[6 * i : 6 * i + 6], 0.0) for i, s_ in enumerate(("left", "right"))}
    high = {s_: np.append(hi[6 * i : 6 * i + 6], 1.0) for i, s_ in enumerate(("left", "right"))}
    hold = np.concatenate(
        [
            np.clip(sim.qpos14()[7 * i : 7 * i + 7], low[s_], high[s_])
            for i, s_ in enumerate(("left", "right"))
        ]
    )

    def measured() -> np.ndarray:
        q = sim.qpos14().copy()
        q[[6, 13]] = np.clip(q[[6, 13]], 0.0, 1.0)  # as the joint states report it
        return q

    def recorded(t) -> np.ndarray:
        return np.concatenate([follower["left"][t], follower["right"][t]])

    def command(j_ns) -> np.ndarray:
        return np.concatenate(
            [
                follower_command(
                    leader[s_][j_ns].name, leader[s_][j_ns].position, g, low[s_], high[s_]
                )
                for s_ in ("left", "right")
            ]
        )

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(sim.model, spec))
    for _ in range(t_first):  # the rest before the recording started: the follower holds
        sim.step(hold)
    np.testing.assert_allclose(measured(), recorded(ticks[0]), atol=1e-9)
    # the first leader state that is not the held pose: the expert started just before it
    first_move = min(
        t
        for t in leader["left"]
        if np.abs(np.array(leader["left"][t].position) - leader_positions(hold, g)["left"]).max()
        > 1e-9
        or np.abs(np.array(leader["right"][t].position) - leader_positions(hold, g)["right"]).max()
        > 1e-9
    )
    expert, cmd, delays, checked_leader = None, hold, [], 0
    depth_at: dict[int, dict] = {}
    for k in range(t_first, t_last):
        t = k * TICK_NS
        if t + TICK_NS == first_move:
            expert = task.expert(sim, np.random.default_rng(SEED))  # ~/start_demo came here
        if expert is not None and t in leader["left"] and t >= first_move:
            arms = leader_positions(expert.act(sim), g)  # the oracle's expert on its own state
            for s_ in ("left", "right"):
                np.testing.assert_allclose(leader[s_][t].position, arms[s_], atol=1e-9)
            checked_leader += 1
        depth_at[t] = sim.observe(render=True, color=False)
        # which leader state did the follower apply for this step? the newest that reproduces it
        mujoco.mj_getState(sim.model, sim.data, state, spec)
        for d in range(0, 6):
            j = t - d * TICK_NS
            trial = command(j) if j in leader["left"] and j in leader["right"] else cmd
            mujoco.mj_setState(sim.model, sim.data, state, spec)
            sim.step(trial)
            if np.abs(measured() - recorded(t + TICK_NS)).max() < 1e-9:
                cmd = trial
                delays.append(d)
                break
        else:
            pytest.fail(f"no leader state within 5 periods explains the follower at tick {k + 1}")
    assert checked_leader > 50 and len(delays) == t_last - t_first
    assert np.mean(np.array(delays) > 0) < 0.5, f"most leader states arrived late: {delays}"
    print("leader states applied late:", int(np.sum(np.array(delays) > 0)), "of", len(delays))

    # the camera images in the bag are the oracle's renders, pixel for pixel
    cams_checked = 0
    for c in cams:
        for _, m in msgs[f"/{c}/depth/image_raw"]:
            t = _ns(m.header.stamp)
            if t in depth_at:
                mm = np.frombuffer(bytes(m.data), np.uint16).reshape(m.height, m.width)
                np.testing.assert_array_equal(mm, encode_depth_mm(depth_at[t].depth_m[c]))
                cams_checked += 1
    assert cams_checked > 40

    # the converted episode is the bag, at the frame stamps
    for r, t in enumerate(stamps):
        if t in follower["left"] and t in leader["left"] and t >= ticks[0]:
            np.testing.assert_allclose(qpos[r], recorded(t), atol=1e-6)
            np.testing.assert_allclose(act[r], command(t), atol=1e-6)
    image_stamps = {
        c: np.array(sorted(_ns(m.header.stamp) for _, m in msgs[f"/{c}/depth/image_raw"]))
        for c in cams
    }
    for r, t in enumerate(stamps):
        for c in cams:
            shown = int(image_stamps[c][np.searchsorted(image_stamps[c], t, "right") - 1])
            if shown in depth_at:
                np.testing.assert_allclose(extr[c][r], depth_at[shown].extrinsics[c], atol=1e-5)
                np.testing.assert_array_equal(
                    depth[c][r], encode_depth_mm(depth_at[shown].depth_m[c])
                )
