"""What the policy node publishes about each chunk it computes (its ``publish_chunks`` topics),
so `clamp eval replay --follow-node` can recompute that chunk from a recording and compare it
bit for bit.

Two trajectory_msgs/JointTrajectory messages per inference, both stamped with the observation's
stamp and naming the model's joints (A columns):

- ``~/chunks``: the chunk, F points; point k: ``positions`` = action k, ``time_from_start`` =
  k * dt (the action's time minus the stamp).
- ``~/chunk_inputs``: the model inputs the node's thread timing decided (when each control tick
  ran, when chunks arrived, which plan the controller was following): first the H commands of
  the action history, ``time_from_start`` = -(H - i) * dt (before the stamp; negative); then,
  when the sampler was guided (seam_guided execution), the F points of the plan followed at
  the chunk's action times, ``time_from_start`` = k * dt, ``effort`` = [prefix weight k,
  guidance weight].

Every number is float64 in the message, so nothing is rounded on the way. Decoding takes any
message object with the standard field names (rclpy or rosbags).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .runtime import ActionChunk, PolicyObservation


class InferenceLogError(ValueError):
    """A ``~/chunks`` / ``~/chunk_inputs`` pair that does not decode; one line naming why."""


@dataclass
class InferenceRecord:
    """One inference of the node: the chunk and the timing-decided inputs it came from."""

    stamp_ns: int
    """The observation's stamp (the chunk's first action time), ns."""
    dt_ns: int
    """Time between consecutive actions, ns."""
    joint_names: list[str]
    """The A action columns."""
    actions: np.ndarray
    """(F, A) float64: the chunk."""
    action_history: np.ndarray
    """(H, A) float64: the commands the model saw, oldest first."""
    prefix: np.ndarray | None = None
    """(F, A) float64: the plan followed, at the chunk's action times (guided sampling)."""
    prefix_weights: np.ndarray | None = None
    """(F,) float64: each prefix action's weight."""
    guidance_weight: float = 1.0
    """The sampler's guidance scale."""

    @classmethod
    def of(cls, obs: PolicyObservation, chunk: ActionChunk) -> InferenceRecord:
        """The record of ``chunk``, computed from ``obs``."""
        return cls(
            stamp_ns=int(obs.stamp_ns),
            dt_ns=int(round(chunk.dt_s * 1e9)),
            joint_names=list(chunk.joint_names),
            actions=np.asarray(chunk.actions, np.float64),
            action_history=np.asarray(obs.action_history, np.float64),
            prefix=None if obs.prefix is None else np.asarray(obs.prefix, np.float64),
            prefix_weights=(
                None if obs.prefix_weights is None else np.asarray(obs.prefix_weights, np.float64)
            ),
            guidance_weight=float(obs.guidance_weight),
        )

    def chunk_points(self) -> list[tuple[int, list[float], list[float]]]:
        """``~/chunks`` points: (time_from_start ns, positions, effort)."""
        return [(k * self.dt_ns, row.tolist(), []) for k, row in enumerate(self.actions)]

    def input_points(self) -> list[tuple[int, list[float], list[float]]]:
        """``~/chunk_inputs`` points: (time_from_start ns, positions, effort)."""
        H = len(self.action_history)
        pts = [
            ((i - H) * self.dt_ns, row.tolist(), []) for i, row in enumerate(self.action_history)
        ]
        if self.prefix is not None:
            for k, (row, w) in enumerate(zip(self.prefix, self.prefix_weights, strict=True)):
                pts.append((k * self.dt_ns, row.tolist(), [float(w), self.guidance_weight]))
        return pts

    def apply(self, obs: PolicyObservation) -> None:
        """Give ``obs`` the inputs the node's timing decided (history, guidance)."""
        obs.action_history = self.action_history.copy()
        obs.prefix = None if self.prefix is None else self.prefix.copy()
        obs.prefix_weights = None if self.prefix_weights is None else self.prefix_weights.copy()
        obs.guidance_weight = self.guidance_weight

    @classmethod
    def from_messages(cls, chunk_msg, inputs_msg) -> InferenceRecord:
        """Decode a ``~/chunks`` message and the ``~/chunk_inputs`` message of the same stamp."""
        stamp = _ns(chunk_msg.header.stamp)
        if _ns(inputs_msg.header.stamp) != stamp:
            raise InferenceLogError(
                f"chunk stamped {stamp} paired with inputs stamped {_ns(inputs_msg.header.stamp)}"
            )
        pts = chunk_msg.points
        if len(pts) < 2:
            raise InferenceLogError(f"chunk at {stamp}: {len(pts)} points, need at least 2")
        actions = np.array([list(p.positions) for p in pts], np.float64)
        dt = _ns(pts[1].time_from_start)
        hist, prefix, weights, g = [], [], [], 1.0
        for p in inputs_msg.points:
            if _ns(p.time_from_start) < 0:
                hist.append(list(p.positions))
            else:
                prefix.append(list(p.positions))
                if len(p.effort) != 2:
                    raise InferenceLogError(
                        f"chunk inputs at {stamp}: a prefix point needs effort [weight, guidance]"
                    )
                weights.append(float(p.effort[0]))
                g = float(p.effort[1])
        A = actions.shape[1]
        if prefix and len(prefix) != len(actions):
            raise InferenceLogError(
                f"chunk inputs at {stamp}: {len(prefix)} prefix points for {len(actions)} actions"
            )
        return cls(
            stamp_ns=stamp,
            dt_ns=dt,
            joint_names=list(chunk_msg.joint_names),
            actions=actions,
            action_history=np.array(hist, np.float64).reshape(-1, A),
            prefix=np.array(prefix, np.float64) if prefix else None,
            prefix_weights=np.array(weights, np.float64) if prefix else None,
            guidance_weight=g,
        )


def _ns(t) -> int:
    """A builtin_interfaces Time or Duration (sec may be negative) in ns."""
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)
