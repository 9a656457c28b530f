"""Synthetic RGB-D scene publisher: four RealSense-style cameras (two on moving wrists) and tf.

Stands in for real cameras in demos and tests. Depth is exact ray casting (see
``clamp_core.sim.synthetic_scene``), so downstream output can be checked against geometry.
Publishes per camera ``<cam>/color/image_raw`` (rgb8), ``<cam>/depth/image_raw`` (16UC1 mm or
32FC1 m), ``<cam>/color/camera_info`` and ``<cam>/depth/camera_info``; wrist motion on ``/tf``,
camera mounts on ``/tf_static``.
"""

from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from clamp_core.geometry.image import encode_depth_mm
from clamp_core.sim.synthetic_scene import SyntheticScene

from .conversions import image_msg, info_from_camera, ns_to_stamp, transform_msg
from .params import declare
from .perception_node import TF_QOS, TF_STATIC_QOS
from .util import run_node


class SyntheticSceneNode(Node):
    def __init__(self, **kwargs):
        super().__init__("synthetic_scene", **kwargs)
        width = declare(self, "width", 640, "Image width of every camera (px).")
        height = declare(self, "height", 480, "Image height of every camera (px).")
        rate = declare(self, "rate_hz", 10.0, "Camera frame rate.")
        tf_rate = declare(self, "tf_rate_hz", 50.0, "Rate of the wrists' /tf updates.")
        period = declare(self, "wrist_period_s", 8.0, "Duration of one wrist circle.")
        self.depth_encoding = declare(self, "depth_encoding", "16UC1", "16UC1 (mm) or 32FC1 (m).")
        reliable = declare(self, "reliable", True, "Publish images reliably (else best effort).")
        if self.depth_encoding not in ("16UC1", "32FC1"):
            raise ValueError(f"depth_encoding '{self.depth_encoding}' must be 16UC1 or 32FC1")
        self.scene = SyntheticScene(width=width, height=height, wrist_period_s=period)
        qos = QoSProfile(
            depth=5,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        )
        self.pubs = {}
        for cam in self.scene.cameras:
            n = cam.name
            self.pubs[n] = (
                self.create_publisher(Image, f"{n}/color/image_raw", qos),
                self.create_publisher(Image, f"{n}/depth/image_raw", qos),
                self.create_publisher(CameraInfo, f"{n}/color/camera_info", qos),
                self.create_publisher(CameraInfo, f"{n}/depth/camera_info", qos),
            )
        self.tf_pub = self.create_publisher(TFMessage, "/tf", TF_QOS)
        self.tf_static_pub = self.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        self.tf_static_pub.publish(
            TFMessage(
                transforms=[
                    transform_msg(c.parent_frame, c.optical_frame, 0, c.T_parent_cam)
                    for c in self.scene.cameras
                ]
            )
        )
        self._static_images = {}  # fixed cameras see a static scene: render once
        self.create_timer(1.0 / tf_rate, lambda: self.publish_tf())  # no TimerInfo arg
        self.create_timer(1.0 / rate, self.publish_images)
        self.frames = 0

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def publish_tf(self, now: int | None = None) -> None:
        now = self._now_ns() if now is None else now
        self.tf_pub.publish(
            TFMessage(
                transforms=[
                    transform_msg(
                        "world", f"{side}_wrist", now, self.scene.wrist_pose(side, now * 1e-9)
                    )
                    for side in ("left", "right")
                ]
            )
        )

    def publish_images(self) -> None:
        now = self._now_ns()
        self.publish_tf(now)  # the exact wrist poses at the image stamp
        for cam in self.scene.cameras:
            if cam.parent_frame == "world":
                if cam.name not in self._static_images:
                    self._static_images[cam.name] = self.scene.render(cam.name, 0.0)
                depth_m, color = self._static_images[cam.name]
            else:
                depth_m, color = self.scene.render(cam.name, now * 1e-9)
            header = Header(stamp=ns_to_stamp(now), frame_id=cam.optical_frame)
            color_pub, depth_pub, info_pub, depth_info_pub = self.pubs[cam.name]
            info = info_from_camera(self.scene.intrinsics, header)
            info_pub.publish(info)
            depth_info_pub.publish(info)
            color_pub.publish(image_msg(color, "rgb8", header))
            if self.depth_encoding == "16UC1":
                depth_pub.publish(image_msg(encode_depth_mm(depth_m), "16UC1", header))
            else:
                depth_pub.publish(image_msg(depth_m, "32FC1", header))
        self.frames += 1


def main(args=None) -> None:
    run_node(SyntheticSceneNode, args, "synthetic_scene")


if __name__ == "__main__":
    main()
