"""The recorder node over real DDS: a publisher process (small cameras, tf, tf_static sent once
before the recorder exists, follower and leader joint states), the recorder node in another
process, services called from the test's rclpy node. Bags are read with the ``mcap`` and
``mcap-ros2-support`` packages, which share no code with the writer (rosbags)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clamp_ros.graph import GRAPHS, node_command
from test.ros.conftest import VENV, spin_until, start_process, stop_process, wait_for_log

pytestmark = pytest.mark.ros
mcap_reader = pytest.importorskip("mcap.reader")
mcap_ros2_decoder = pytest.importorskip("mcap_ros2.decoder")
from mcap.records import Metadata  # noqa: E402
from mcap.stream_reader import StreamReader  # noqa: E402

CAMERAS = ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]
ARMS = ["follower_left", "follower_right", "leader_left", "leader_right"]
RATE_HZ = 20.0


# ---------------------------------------------------------------------------------- helpers
def start_publisher(env, tmp_path: Path, name: str = "publisher", *extra: str):
    cmd = [
        sys.executable, "-m", "clamp_ros.record_bench",
        "--width", "32", "--height", "24", "--rate", str(RATE_HZ), *extra,
    ]  # fmt: skip
    proc = start_process(cmd, env, tmp_path / f"{name}.log")
    wait_for_log(proc, "publishing")
    return proc


def start_recorder(env, tmp_path: Path, out: Path, name: str = "recorder"):
    (spec,) = GRAPHS["aloha_record"]
    params = {
        "recorder.output_dir": str(out),
        "recorder.min_free_gb": 0.0,
        "recorder.camera_min_rate_hz": RATE_HZ,
        "recorder.joint_states_min_rate_hz": 25.0,
        "task": "drawer_open",
        "instruction": "open the drawer",
    }
    proc = start_process(node_command(spec, params), env, tmp_path / f"{name}.log")
    wait_for_log(proc, "recorder ready")
    return proc


class Services:
    def __init__(self, node):
        from rcl_interfaces.srv import SetParameters
        from std_srvs.srv import SetBool, Trigger

        self.node = node
        self.Trigger, self.SetBool = Trigger, SetBool
        self.start_c = node.create_client(Trigger, "/recorder/start")
        self.stop_c = node.create_client(SetBool, "/recorder/stop")
        self.discard_c = node.create_client(Trigger, "/recorder/discard")
        self.params_c = node.create_client(SetParameters, "/recorder/set_parameters")
        for c in (self.start_c, self.stop_c, self.discard_c, self.params_c):
            spin_until(node, c.service_is_ready, what=f"service {c.srv_name}")

    def call(self, client, request, resend_after_s: float | None = None):
        """One request, or (``resend_after_s``, idempotent requests only) the same request again
        whenever no answer came for that long: a reply can be lost while the service's
        endpoints are still matching after discovery."""
        deadline = time.monotonic() + 120.0
        while True:
            future = client.call_async(request)
            limit = deadline if resend_after_s is None else time.monotonic() + resend_after_s
            while not future.done() and time.monotonic() < min(limit, deadline):
                self.node.executor.spin_once(timeout_sec=0.05)
            if future.done():
                return future.result()
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after 120s waiting for an answer from {client.srv_name}")

    def start(self):
        return self.call(self.start_c, self.Trigger.Request())

    def start_when_live(self):
        """Start; while the recorder refuses because topics are not live yet (discovery),
        keep spinning and asking."""
        answers = []

        def attempt():
            answers.append(self.start())
            if not answers[-1].success:
                assert "silent" in answers[-1].message, answers[-1].message
                time.sleep(0.3)
            return answers[-1].success

        spin_until(self.node, attempt, what="a start the recorder accepts")
        return answers[-1]

    def stop(self, success: bool):
        return self.call(self.stop_c, self.SetBool.Request(data=success))

    def discard(self):
        return self.call(self.discard_c, self.Trigger.Request())

    def set_param(self, name: str, value: str):
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        req = SetParameters.Request(
            parameters=[
                Parameter(
                    name=name,
                    value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value),
                )
            ]
        )
        result = self.call(self.params_c, req, resend_after_s=10.0)
        assert all(r.successful for r in result.results), result


def spin_for(node, seconds: float) -> None:
    end = time.monotonic() + seconds
    spin_until(node, lambda: time.monotonic() > end, timeout_s=seconds + 60)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_bag(mcap_path: Path) -> dict:
    """Topics, per-topic log times and decoded /tf_static of a bag, with the independent
    reader (indexed when the file is complete)."""
    out: dict = {"times": {}, "static": [], "types": {}}
    with open(mcap_path, "rb") as f:
        reader = mcap_reader.make_reader(f, decoder_factories=[mcap_ros2_decoder.DecoderFactory()])
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            out["times"].setdefault(channel.topic, []).append(message.log_time)
            out["types"][channel.topic] = schema.name
            if channel.topic == "/tf_static":
                out["static"] += [t.child_frame_id for t in decoded.transforms]
            if channel.topic == "/leader_left/joint_states":
                assert list(decoded.name)[0] == "waist"
    with open(mcap_path, "rb") as f:
        out["episode_records"] = [
            json.loads(r.metadata["json"])
            for r in StreamReader(f).records
            if isinstance(r, Metadata) and r.name == "clamp.episode"
        ]
    return out


def bag_metadata(bag: Path) -> dict:
    return yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]


# ---------------------------------------------------------------------------------- tests
def test_episode_bag_opens_in_an_independent_reader(ros_env, rclpy_node, tmp_path: Path):
    out = tmp_path / "bags"
    pub = start_publisher(ros_env, tmp_path)  # /tf_static is sent before the recorder exists
    rec = start_recorder(ros_env, tmp_path, out)
    try:
        srv = Services(rclpy_node)
        srv.set_param("operator", "ana")  # what `ros2 param set /recorder operator ana` does
        srv.set_param("notes", "first try")
        answer = srv.start_when_live()
        assert "recording" in answer.message
        again = srv.start()
        assert not again.success and "already recording" in again.message
        spin_for(rclpy_node, 3.0)
        stopped = srv.stop(True)
        assert stopped.success, stopped.message
        assert "no drops" in stopped.message
        after = srv.stop(True)
        assert not after.success and "not recording" in after.message
    finally:
        stop_process(rec)
        stop_process(pub)
    (bag,) = [p for p in out.iterdir()]
    assert bag.name.startswith("drawer_open_") and not bag.name.endswith(".partial")
    data = read_bag(bag / f"{bag.name}.mcap")
    expected = {f"/{c}/{s}" for c in CAMERAS for s in ("color/image_raw", "depth/image_raw")}
    expected |= {f"/{c}/color/camera_info" for c in CAMERAS}
    expected |= {f"/{a}/joint_states" for a in ARMS} | {"/tf", "/tf_static"}
    assert set(data["times"]) == expected
    assert data["types"]["/cam_high/depth/image_raw"] == "sensor_msgs/msg/Image"
    assert data["types"]["/tf_static"] == "tf2_msgs/msg/TFMessage"
    assert sorted(data["static"]) == sorted(f"{c}_color_optical_frame" for c in CAMERAS)

    info = bag_metadata(bag)
    meta = json.loads(info["custom_data"]["clamp.episode"])
    duration_s = (meta["stop_ns"] - meta["start_ns"]) / 1e9
    assert duration_s >= 3.0
    for topic, times in data["times"].items():
        if topic == "/tf_static":
            continue
        hz = RATE_HZ if topic.startswith("/cam") else 50.0
        # plausible: a loaded machine may deliver fewer, never many more than were sent
        assert 0.3 * hz * duration_s <= len(times) <= hz * (duration_s + 1.0), (topic, len(times))
    counts = {
        t["topic_metadata"]["name"]: t["message_count"] for t in info["topics_with_message_count"]
    }
    assert counts == {t: len(v) for t, v in data["times"].items()}
    assert meta["task"] == "drawer_open" and meta["instruction"] == "open the drawer"
    assert meta["operator"] == "ana" and meta["notes"] == "first try"
    assert meta["success"] is True and meta["camera_names"] == CAMERAS
    assert len(meta["joint_names"]) == 14 and meta["robot"] == "aloha"
    assert meta["software_version"] and meta["drops"] == {}
    (at_start,) = data["episode_records"]
    assert at_start["task"] == "drawer_open" and at_start["start_ns"] == meta["start_ns"]


def test_refusals_and_discard(ros_env, rclpy_node, tmp_path: Path):
    out = tmp_path / "bags"
    pub = start_publisher(ros_env, tmp_path, "no_leader", "--no-leader")
    rec = start_recorder(ros_env, tmp_path, out)
    try:
        srv = Services(rclpy_node)
        stop = srv.stop(True)
        assert not stop.success and "not recording" in stop.message
        discard = srv.discard()
        assert not discard.success and "not recording" in discard.message
        # wait until the followers are live, so that only the leader is missing
        spin_until(
            rclpy_node,
            lambda: rclpy_node.count_publishers("/follower_left/joint_states") > 0,
            what="follower publisher",
        )
        answers = []

        def refused_for_the_leader_only():
            # every start is refused (no leader); wait until the recorder has heard the
            # followers, so that the refusal names only what is really missing
            answers.append(srv.start())
            assert not answers[-1].success, answers[-1].message
            if "/follower_left/joint_states" in answers[-1].message:
                time.sleep(0.3)
                return False
            return True

        spin_until(rclpy_node, refused_for_the_leader_only, what="a refusal naming the leader")
        refused = answers[-1]
        assert not refused.success
        assert "/leader_left/joint_states" in refused.message
        assert "/leader_right/joint_states" in refused.message
        assert "/follower_left/joint_states" not in refused.message
        assert not out.exists() or not any(out.iterdir())
        stop_process(pub)
        pub = start_publisher(ros_env, tmp_path, "full")
        srv.start_when_live()
        spin_for(rclpy_node, 1.0)
        discarded = srv.discard()
        assert discarded.success, discarded.message
        assert not any(out.iterdir())
        assert not srv.stop(True).success  # nothing left to stop
    finally:
        stop_process(rec)
        stop_process(pub)


def test_camera_stopping_mid_episode_is_reported(ros_env, rclpy_node, tmp_path: Path):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from std_msgs.msg import String

    out = tmp_path / "bags"
    pub = start_publisher(ros_env, tmp_path)
    rec = start_recorder(ros_env, tmp_path, out)
    seen: list = []
    rclpy_node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: seen.append(m), 50)
    control = rclpy_node.create_publisher(String, "/record_bench/control", 10)
    try:
        srv = Services(rclpy_node)
        srv.start_when_live()
        spin_until(rclpy_node, lambda: control.get_subscription_count() > 0, what="control sub")
        control.publish(String(data="stop cam_low"))

        def warned():
            for msg in seen:
                for st in msg.status:
                    if (
                        st.name.endswith("topic /cam_low/color/image_raw")
                        and st.level == DiagnosticStatus.WARN
                        and "silent" in st.message
                    ):
                        return msg
            return None

        msg = spin_until(rclpy_node, warned, what="a WARN naming /cam_low/color/image_raw")
        top = [st for st in msg.status if st.name.endswith("recorder")][0]
        assert top.level == DiagnosticStatus.WARN and "/cam_low/color/image_raw" in top.message
        others = {st.name: st.level for st in msg.status if "topic /cam_high/" in st.name}
        assert others and set(others.values()) == {DiagnosticStatus.OK}
        assert srv.stop(False).success
    finally:
        stop_process(rec)
        stop_process(pub)
    assert "/cam_low/color/image_raw" in (tmp_path / "recorder.log").read_text()


def test_sigkill_mid_episode_then_recover(ros_env, rclpy_node, tmp_path: Path):
    out = tmp_path / "bags"
    pub = start_publisher(ros_env, tmp_path)
    rec = start_recorder(ros_env, tmp_path, out)
    try:
        srv = Services(rclpy_node)
        srv.start_when_live()
        spin_for(rclpy_node, 1.0)
        assert srv.stop(True).success
        (first,) = list(out.iterdir())
        before = digest(first)
        srv.set_param("episode_name", "killed")
        srv.start_when_live()
        spin_for(rclpy_node, 3.0)
        kill_ns = time.time_ns()
        rec.send_signal(signal.SIGKILL)
        rec.wait(timeout=60)
        stop_process(rec)
        assert (out / "killed.partial").is_dir() and not (out / "killed").exists()

        clamp = str(VENV / "bin" / "clamp")
        done = subprocess.run(
            [clamp, "data", "recover", str(out / "killed.partial"), "--json"],
            env=ros_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        bag = out / "killed"
        assert summary["bag"] == str(bag)
        data = read_bag(bag / "killed.mcap")
        assert sorted(data["static"]) == sorted(f"{c}_color_optical_frame" for c in CAMERAS)
        for topic in ("/follower_left/joint_states", "/leader_right/joint_states"):
            # readable up to at most the last second before the kill
            assert max(data["times"][topic]) >= kill_ns - 1_000_000_000, topic
        assert max(max(t) for t in data["times"].values()) <= kill_ns
        meta = json.loads(bag_metadata(bag)["custom_data"]["clamp.episode"])
        assert meta["task"] == "drawer_open" and meta["recovered"] is True
        assert digest(first) == before  # the earlier episode is untouched

        # SIGTERM (and SIGINT) finalise the running episode
        rec = start_recorder(ros_env, tmp_path, out, "recorder2")
        srv2 = Services(rclpy_node)
        srv2.set_param("episode_name", "terminated")
        srv2.start_when_live()
        spin_for(rclpy_node, 1.0)
        assert stop_process(rec, sig=signal.SIGTERM) in (0, -signal.SIGTERM)
        meta = json.loads(bag_metadata(out / "terminated")["custom_data"]["clamp.episode"])
        assert meta["stopped_by"] == "shutdown" and meta["success"] is None
        assert not (out / "terminated.partial").exists()
        assert digest(first) == before
    finally:
        stop_process(rec)
        stop_process(pub)
