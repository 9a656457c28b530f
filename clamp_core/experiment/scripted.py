"""Scripted policies with known outcomes, run through `clamp eval sim`'s closed loop
(``clamp_core.eval.sim_eval.evaluate(..., policy=...)``) so that the study's success counting and
confidence intervals can be checked end to end: the task's closed-loop expert (succeeds) and a
policy that holds the start pose (never succeeds)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

SCRIPTED = ("expert", "hold")


class ScriptedPolicy:
    """OnnxPolicy's interface (``metadata``, ``schedule``, ``predict``) for ``kind``:

    - ``expert``: each ``predict`` returns the action the task's scripted expert takes in the
      simulator's current state (run with ``ExecutionConfig(mode="receding_horizon",
      execute_steps=1)`` so that it is asked every control step, as in `clamp generate`);
    - ``hold``: the joint positions of the episode's first observation, forever (do nothing).

    ``cameras`` / ``view_size``: what the evaluation renders for each observation (the views
    are not used; small is cheap; the wrist views need the wrist cameras' frames)."""

    def __init__(
        self, kind: str, cameras=("cam_left_wrist", "cam_right_wrist"), view_size: int = 32
    ):
        if kind not in SCRIPTED:
            raise ValueError(f"kind: '{kind}' is not a scripted policy; choose from {SCRIPTED}")
        from ..aloha import ALOHA_JOINT_NAMES
        from ..policy.metadata import PolicyMetadata
        from ..training.data import perception_for_episodes

        self.kind = kind
        unit = {"min": [-1.0] * 14, "max": [1.0] * 14}
        self.metadata = PolicyMetadata(
            name=f"scripted-{kind}",
            preset="scripted",
            joint_names=list(ALOHA_JOINT_NAMES),
            action_dim=14,
            action_horizon=1,
            action_history=1,
            control_rate_hz=50.0,
            cameras=list(cameras),
            perception=perception_for_episodes(list(cameras), view_size).to_dict(),
            normalization={"qpos": unit, "action": unit},
            cond_tokens=1,
            cond_dim=1,
        )
        self.schedule = SimpleNamespace(cfg=SimpleNamespace(inference_steps=0))
        self._sim = self._expert = self._hold = None
        self.calls = 0

    def start_episode(self, task, sim, seed: int) -> None:
        self._sim, self._hold = sim, None
        self._expert = None
        if self.kind == "expert":
            self._expert = task.expert(sim, np.random.default_rng(int(seed)))

    def predict(self, obs):
        from ..policy.runtime import ActionChunk

        if self._sim is None:
            raise RuntimeError("ScriptedPolicy: start_episode was not called (old sim_eval?)")
        self.calls += 1
        if self.kind == "expert":
            action = np.asarray(self._expert.act(self._sim), np.float64)
        else:
            if self._hold is None:
                self._hold = np.array(obs.qpos, np.float64)
            action = self._hold
        return ActionChunk(
            int(obs.stamp_ns), self.metadata.dt_s, action[None].copy(), self.metadata.joint_names
        )


def evaluate_scripted(kind: str, task: str, seeds, width: int = 64, height: int = 48, **kw):
    """`clamp eval sim`'s ``evaluate`` with a scripted policy, asked every control step."""
    from ..eval.sim_eval import evaluate
    from ..policy.execution import ExecutionConfig

    kw.setdefault("execution", ExecutionConfig(mode="receding_horizon", execute_steps=1))
    return evaluate(
        f"<scripted {kind}>",
        task,
        seeds,
        width,
        height,
        progress=False,
        policy=ScriptedPolicy(kind),
        **kw,
    )
