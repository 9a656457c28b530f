"""`clamp eval replay`: scores are right on a scripted policy with known errors, replays are
reproducible, an HDF5 episode and its bag give the same numbers, the shipped model replays a
recorded sim bag, and bad input is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clamp_core.aloha import ARM_JOINT_NAMES, SIDES
from clamp_core.cli import main
from clamp_core.data.bags import EPISODE_KEY
from clamp_core.data.episode import CameraCalib, EpisodeMeta, EpisodeReader, EpisodeWriter
from clamp_core.eval.replay import ReplayConfig, ReplayError, gripper_events, replay
from clamp_core.geometry.image import encode_depth_mm
from clamp_core.policy.metadata import PolicyMetadata
from clamp_core.policy.runtime import ActionChunk
from clamp_core.teleop import GripperMap, leader_positions

from ..data.test_bags import (
    IMAGE,
    INFO,
    JOINTS,
    TF,
    BagBuilder,
    camera_info,
    image,
    joint_state,
    storage_file,
    tf_message,
)

MODEL = Path(__file__).resolve().parents[3] / "models" / "drawer_open"
STEPS = 80  # 1.6 s at 50 Hz: the right gripper closes on the handle after about 1.2 s
DT_NS = 20_000_000
T0 = 1_000 * DT_NS
LEADER = GripperMap()


def optical(cam: str) -> str:
    return f"{cam}_color_optical_frame"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A drawer_open expert rollout (64x48 cameras) as an HDF5 episode, and a bag written from
    what that episode stores: joint states, tf, camera_info and depth at each frame's stamp."""
    pytest.importorskip("mujoco")
    pytest.importorskip("gym_aloha")
    from clamp_core.sim.tasks import make_task

    out = tmp_path_factory.mktemp("replay")
    task = make_task("drawer_open")
    sim = task.make_sim(width=64, height=48)
    task.reset(sim, 0)
    expert = task.expert(sim, np.random.default_rng(0))
    cams = [c.name for c in sim.cameras]
    meta = EpisodeMeta(
        task=task.name, instruction=task.instruction, sim=True, fps=50.0, seed=0, camera_names=cams
    )
    path = out / "episode.hdf5"
    calib = [CameraCalib.from_pinhole(c, sim.intrinsics[c]) for c in cams]
    with EpisodeWriter(path, meta, calib, compression=None, depth_compression=None) as w:
        for k in range(STEPS):
            action = expert.act(sim)
            f = sim.observe(render=True)
            w.add_frame(
                stamp_ns=T0 + k * DT_NS,
                qpos=f.qpos,
                qvel=f.qvel,
                effort=f.effort,
                action=action,
                images=f.images,
                depth_mm={c: encode_depth_mm(d) for c, d in f.depth_m.items()},
                extrinsics=f.extrinsics,
            )
            sim.step(action)
        w.close(success=True)
    sim.close()
    b = BagBuilder()
    with EpisodeReader(path) as ep:
        for k in range(ep.num_frames):
            f = ep.frame(k)
            t = int(f["stamp_ns"])
            q = np.asarray(f["qpos"], np.float64)
            lead = leader_positions(np.asarray(f["action"], np.float64), LEADER)
            for i, side in enumerate(SIDES):
                sl = slice(7 * i, 7 * i + 7)
                b.add(
                    f"/follower_{side}/joint_states",
                    JOINTS,
                    t,
                    joint_state(t, ARM_JOINT_NAMES, q[sl], np.zeros(7), np.zeros(7)),
                )
                b.add(
                    f"/leader_{side}/joint_states",
                    JOINTS,
                    t,
                    joint_state(t, ARM_JOINT_NAMES, lead[side]),
                )
            b.add(
                "/tf",
                TF,
                t,
                tf_message(
                    [
                        ("world", optical(c), t, np.asarray(f["extrinsics"][c], np.float64))
                        for c in cams
                    ]
                ),
            )
            for c in cams:
                b.add(
                    f"/{c}/color/camera_info",
                    INFO,
                    t,
                    camera_info(sim.intrinsics[c], t, optical(c)),
                )
                b.add(
                    f"/{c}/color/image_raw",
                    IMAGE,
                    t,
                    image(f["images"][c], "rgb8", t, optical(c)),
                )
                b.add(
                    f"/{c}/depth/image_raw",
                    IMAGE,
                    t,
                    image(f["depth_mm"][c], "16UC1", t, optical(c)),
                )
        actions = np.asarray(ep.lowdim()["action"], np.float64)
    b.custom[EPISODE_KEY] = json.dumps(
        {"task": task.name, "instruction": task.instruction, "success": True, "sim": True}
    )
    bag = b.write(out / "bag")
    return {"episode": path, "bag": bag, "builder": b, "actions": actions, "dir": out}


def without_wall(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "wall"}


class ShiftedPolicy:
    """Returns the recorded actions k steps ahead of each action's time (the last one past the
    end of the recording): every chunk is off by exactly k steps."""

    def __init__(self, actions: np.ndarray, k: int):
        self.metadata = PolicyMetadata.load(MODEL)
        self.actions, self.k = actions, k
        self.calls = []

    def predict(self, obs) -> ActionChunk:
        meta = self.metadata
        i = (obs.stamp_ns - T0) // DT_NS
        self.calls.append(obs.stamp_ns)
        idx = np.minimum(i + self.k + np.arange(meta.action_horizon), len(self.actions) - 1)
        return ActionChunk(obs.stamp_ns, DT_NS * 1e-9, self.actions[idx], list(meta.joint_names))


# ---------------------------------------------------------------------------------------------
# metrics


@pytest.mark.parametrize("source", ["bag", "episode"])
def test_a_policy_k_steps_ahead_has_the_expected_errors_and_gripper_timing(recorded, source):
    a, k = recorded["actions"], 4
    policy = ShiftedPolicy(a, k)
    r = replay([recorded[source]], cfg=ReplayConfig(every_frame=True), policy=policy)
    ep = r["episodes"][0]
    T = len(a)
    assert ep["inferences"] == T and len(policy.calls) == T
    names = list(policy.metadata.joint_names)
    assert policy.metadata.action_horizon == 50 and ep["offsets"] == [0, 10, 25, 49]
    for n, off in enumerate(ep["offsets"]):
        i = np.arange(T - off)  # frames whose action at this offset lies in the recording
        truth = a[i + off]
        pred = a[np.minimum(i + off + k, T - 1)]
        np.testing.assert_allclose(
            [ep["mae"][j][n] for j in names], np.abs(pred - truth).mean(axis=0), atol=1e-9
        )
        np.testing.assert_allclose(
            [ep["rmse"][j][n] for j in names],
            np.sqrt(((pred - truth) ** 2).mean(axis=0)),
            atol=1e-9,
        )
        assert ep["samples"][n] == T - off
    timing = ep["gripper_timing"]
    # the recorded gripper closes once in this clip (independently: where it crosses half-way)
    g = a[:, 13]
    crossings = np.flatnonzero(np.diff(g > 0.5 * (g.min() + g.max())))
    assert len(crossings) >= 1 and timing["events"] == len(crossings)
    assert timing["matched"] == timing["events"]
    assert timing["mean_error_s"] == pytest.approx(-k * DT_NS * 1e-9, abs=1e-9)


def test_a_perfect_policy_scores_zero_and_consistent_chunks(recorded):
    policy = ShiftedPolicy(recorded["actions"], 0)
    r = replay([recorded["bag"]], policy=policy)
    ep = r["episodes"][0]
    assert ep["inferences"] >= 2 and ep["executed_chunks"] == ep["inferences"]
    # offsets past the end of the recording repeat its last action: zero error everywhere
    assert max(max(v) for v in ep["mae"].values()) < 1e-9
    assert ep["consistency"]["pairs"] == ep["inferences"] - 1
    assert ep["consistency"]["arm_mean_rad"] < 1e-9
    assert ep["gripper_timing"]["mean_abs_error_s"] == pytest.approx(0.0, abs=1e-9)


class RestartingPolicy:
    """Every chunk starts from the recording's first action and ramps the arm joints away from
    it: whatever was executed, each new chunk starts back where the previous one started (the
    sawtooth of a missed grasp)."""

    def __init__(self, actions: np.ndarray):
        self.metadata = PolicyMetadata.load(MODEL)
        self.base = actions[0]

    def predict(self, obs) -> ActionChunk:
        meta = self.metadata
        F = meta.action_horizon
        ramp = np.zeros((F, len(self.base)))
        ramp[:, [0, 2, 4, 7, 9, 11]] = 0.01 * np.arange(F)[:, None]
        return ActionChunk(obs.stamp_ns, DT_NS * 1e-9, self.base + ramp, list(meta.joint_names))


def test_replay_finds_a_returning_loop_and_none_in_the_recorded_motion(recorded, tmp_path):
    """A new chunk every 5 steps (async, replan 45): the restarting policy's executed plan is a
    sawtooth with that period (a returning loop, shaded in its plot and named in the report);
    the recorded actions replayed through the same execution are no loop."""
    from clamp_core.eval.replay import write_report
    from clamp_core.policy.execution import ExecutionConfig

    cfg = ReplayConfig(
        execution=ExecutionConfig(mode="async", replan_remaining_steps=45, blend_steps=1),
        safety=False,
    )
    r = replay([recorded["bag"]], policy=RestartingPolicy(recorded["actions"]), cfg=cfg, trace=True)
    loops = r["episodes"][0]["loops"]
    assert loops["period_steps"] == 5
    assert loops["loop"] and loops["returning"] and loops["progress"] < 0.2, loops
    summary = r["overall"]["loops"]
    assert summary["inputs"] == 1 and summary["returning"] == 1
    assert summary["loop_s"] == pytest.approx(loops["loop_s"], abs=0.01)
    # the windows lie within the executed plan (from the first command to the last tick)
    tr = r["episodes"][0]["trace"]
    span = tr["recorded_t_s"][-1] - tr["command_t_s"][0]
    assert all(0 <= a < b <= span + 0.02 for a, b in loops["windows"])
    report = write_report(r, tmp_path / "rep").read_text()
    assert "returning loop with the inference period" in report
    assert "1 input(s) with motion repeating every inference period, 1 of them returning" in report
    fine = replay([recorded["bag"]], policy=ShiftedPolicy(recorded["actions"], 0), cfg=cfg)
    assert fine["episodes"][0]["loops"]["period_steps"] == 5
    assert not fine["episodes"][0]["loops"]["loop"]
    assert fine["overall"]["loops"]["inputs"] == 0


def test_the_loop_track_holds_the_last_command_through_ticks_without_one():
    """Ticks without a command (a plan run out, a stale input) keep the track evenly spaced:
    the arm holds the last command; nothing before the first command counts."""
    from clamp_core.eval.replay import _Episode, _held_track

    ep = _Episode("x", "bag")
    a, b = np.full(14, 0.1), np.full(14, 0.3)
    ep.ticks = [(0, None), (20, a), (40, None), (60, None), (80, b)]
    t, q = _held_track(ep)
    assert t.tolist() == [20, 40, 60, 80]
    assert np.array_equal(q, np.stack([a, a, a, b]))
    ep.ticks = [(0, None)]
    assert len(_held_track(ep)[0]) == 0


def test_gripper_events_are_interpolated_between_samples():
    t = np.array([0, 10, 20, 30]) * 10**9
    x = np.array([1.0, 1.0, 0.0, 0.0])
    assert gripper_events(t, x, 0.25) == [(17.5, -1)]
    assert gripper_events(t, x[::-1], 0.5) == [(15.0, 1)]


# ---------------------------------------------------------------------------------------------
# the shipped model


def test_the_shipped_model_replays_a_recorded_sim_bag_reproducibly(recorded, tmp_path):
    a = replay([recorded["bag"]], MODEL)
    b = replay([recorded["bag"]], MODEL)
    assert json.dumps(without_wall(a)) == json.dumps(without_wall(b))
    ep = a["episodes"][0]
    assert ep["inferences"] >= 2 and ep["drops"] == {}
    assert a["wall"]["inference_ms"]["n"] == ep["inferences"]
    # a trained model predicts the demonstrated motion far better than a policy that stands
    # still at the first recorded action
    still = np.abs(recorded["actions"] - recorded["actions"][0]).mean()
    assert np.mean(ep["by_offset"]["arm_mae_rad"][:10]) < still


def test_an_episode_and_its_bag_give_the_same_numbers(recorded):
    cfg = ReplayConfig(latency_s=0.04)
    from_bag = replay([recorded["bag"]], MODEL, cfg)["episodes"][0]
    from_h5 = replay([recorded["episode"]], MODEL, cfg)["episodes"][0]
    assert from_bag["inferences"] == from_h5["inferences"] >= 2
    for key in ("mae", "rmse"):
        for j, v in from_bag[key].items():
            np.testing.assert_allclose(v, from_h5[key][j], atol=1e-5)
    np.testing.assert_allclose(
        from_bag["consistency"]["arm_mean_rad"], from_h5["consistency"]["arm_mean_rad"], atol=1e-5
    )


def test_latency_delays_each_chunk_in_bag_time_and_chunks_keep_their_own_times(recorded):
    """With latency L the first command runs L after the first observation; a chunk still acts
    at its own action times, so a policy k steps ahead stays k steps early whatever L is."""
    a, k = recorded["actions"], 3
    for latency_s in (0.0, 0.1):
        r = replay(
            [recorded["bag"]],
            cfg=ReplayConfig(latency_s=latency_s),
            policy=ShiftedPolicy(a, k),
            trace=True,
        )
        ep = r["episodes"][0]
        first = ep["trace"]["command_t_s"][0]
        assert first == pytest.approx(T0 * 1e-9 + latency_s, abs=1e-9)
        assert ep["gripper_timing"]["mean_error_s"] == pytest.approx(-k * DT_NS * 1e-9, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# bad input: each refused in one line


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["eval", "replay", *map(str, args), "--json"])
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_json_and_report(recorded, tmp_path, capsys):
    code = main(
        [
            "eval",
            "replay",
            str(recorded["bag"]),
            "--model",
            str(MODEL),
            "--json",
            "--report",
            str(tmp_path / "rep"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    r = json.loads(out)
    assert r["episodes"][0]["inferences"] >= 2
    report = (tmp_path / "rep" / "report.md").read_text()
    for png in sorted((tmp_path / "rep").glob("*.png")):
        assert png.name in report
    assert len(list((tmp_path / "rep").glob("*.png"))) >= 2


def test_a_bag_without_a_mapped_topic(recorded, tmp_path, capsys):
    b = BagBuilder()
    b.items = [x for x in recorded["builder"].items if x[2] != "/follower_right/joint_states"]
    bag = b.write(tmp_path / "no_follower")
    code, err = run_cli(capsys, bag, "--model", MODEL)
    assert code == 2 and len(err.splitlines()) == 1
    assert "/follower_right/joint_states" in err and "not in the bag" in err


def test_a_model_that_does_not_fit_is_refused_naming_every_mismatch(recorded, tmp_path, capsys):
    meta = json.loads((MODEL / "metadata.json").read_text())
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    # a model for another rig: a camera called cam_top instead of cam_low, a renamed joint
    meta["cameras"] = [c.replace("cam_low", "cam_top") for c in meta["cameras"]]
    meta["rgb_cameras"] = [c.replace("cam_low", "cam_top") for c in meta["rgb_cameras"]]
    p = meta["perception"]
    p["camera_names"] = [c.replace("cam_low", "cam_top") for c in p["camera_names"]]
    p["cameras"] = {c.replace("cam_low", "cam_top"): v for c, v in p["cameras"].items()}
    meta["joint_names"] = [*meta["joint_names"][:13], "right_claw"]
    (model / "metadata.json").write_text(json.dumps(meta))
    code, err = run_cli(capsys, recorded["bag"], "--model", model)
    assert code == 2 and len(err.splitlines()) == 1
    assert "cam_top" in err and "right_claw" in err


def test_a_truncated_bag_is_evaluated_up_to_where_it_stops(recorded, tmp_path):
    bag = tmp_path / "cut"
    shutil.copytree(recorded["bag"], bag)
    f = storage_file(bag)
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * 0.6)])
    (bag / "metadata.yaml").unlink()
    r = replay([bag], MODEL)
    ep = r["episodes"][0]
    assert ep["truncated"] is not None
    full = (STEPS - 1) * DT_NS * 1e-9
    assert 0 < ep["truncated"]["stopped_at_s"] < full
    assert ep["recorded_frames"] < STEPS and ep["inferences"] >= 1
    assert any("truncated MCAP: evaluated up to" in n for n in ep["notes"])


def test_time_going_backwards_is_refused(recorded, tmp_path, capsys):
    b = BagBuilder()
    items = list(recorded["builder"].items)
    topic = "/follower_left/joint_states"
    k = [i for i, x in enumerate(items) if x[2] == topic][30]
    log, seq, _, typ, _msg = items[k]
    items[k] = (log, seq, topic, typ, joint_state(T0, ARM_JOINT_NAMES, np.zeros(7)))
    b.items = items
    bag = b.write(tmp_path / "backwards")
    code, err = run_cli(capsys, bag, "--model", MODEL)
    assert code == 2 and len(err.splitlines()) == 1
    assert "backwards" in err and topic in err


def test_tf_missing_for_a_camera(recorded, tmp_path, capsys):
    b = BagBuilder()
    for log, seq, topic, typ, msg in recorded["builder"].items:
        if topic == "/tf":
            msg.transforms = [
                t for t in msg.transforms if t.child_frame_id != optical("cam_left_wrist")
            ]
        b.items.append((log, seq, topic, typ, msg))
    bag = b.write(tmp_path / "no_tf")
    code, err = run_cli(capsys, bag, "--model", MODEL)
    assert code == 2 and len(err.splitlines()) == 1
    assert "cam_left_wrist" in err and "no pose" in err


def test_config_is_validated():
    with pytest.raises(ValueError, match="latency_s"):
        ReplayConfig(latency_s=-1)
    with pytest.raises(ReplayError, match="no input"):
        replay([], MODEL)


def test_the_replay_path_imports_no_torch(recorded):
    import subprocess
    import sys

    code = (
        "import sys; from clamp_core.eval.replay import replay; "
        f"replay([{str(recorded['bag'])!r}, {str(recorded['episode'])!r}], {str(MODEL)!r}); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_replay_defaults_to_the_robot_configs_execution():
    import yaml

    from clamp_core.aloha import NODE_EXECUTION

    root = Path(__file__).resolve().parents[3]
    for name in ("aloha_bimanual.yaml", "sim_demo.yaml"):
        doc = yaml.safe_load((root / "config" / name).read_text())
        ex = doc["policy"]["ros__parameters"]["execution"]
        assert {k: ex[k] for k in NODE_EXECUTION} == NODE_EXECUTION, name
