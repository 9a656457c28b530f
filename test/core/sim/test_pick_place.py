"""The pick-and-place tasks: they build, their scenes are seeded, nothing succeeds by itself, and
the closed-loop expert puts the object where it belongs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gym_aloha")

from clamp_core.sim.aloha import START_POSE  # noqa: E402
from clamp_core.sim.tasks.pick_place import (  # noqa: E402
    CanOpenerInCaddy,
    MugOnPlate,
    PenInContainer,
    ScrewdriverInCaddy,
)

TASKS = [MugOnPlate, PenInContainer, CanOpenerInCaddy, ScrewdriverInCaddy]


@pytest.fixture(scope="module", params=TASKS, ids=lambda c: c.name)
def task_and_sim(request):
    task = request.param()
    sim = task.make_sim(render=False)
    yield task, sim
    sim.close()


def _scene(task, sim) -> np.ndarray:
    """Positions and orientations of the task's bodies."""
    return np.concatenate([sim.body_pose(n)[:3, :].ravel() for n in task.object_names], dtype=float)


def test_task_builds_with_its_named_bodies(task_and_sim):
    task, sim = task_and_sim
    assert task.name and task.instruction and task.max_steps <= 700
    assert len(task.object_names) == 2
    for name in task.object_names:
        sim.model.body(name)  # raises KeyError if missing
    body = sim.model.body(task.obj)
    assert 0.02 <= body.mass[0] <= 0.15
    np.testing.assert_allclose(body.ipos, 0.0, atol=1e-9)  # centre of mass at the body origin
    assert np.all(body.inertia > 0)


def test_randomisation_is_seeded(task_and_sim):
    task, sim = task_and_sim
    task.reset(sim, 5)
    first = _scene(task, sim)
    task.reset(sim, 5)
    np.testing.assert_allclose(_scene(task, sim), first)
    task.reset(sim, 6)
    assert not np.allclose(_scene(task, sim), first)
    for seed in range(20):  # everything on the table, in the arms' reach
        task.reset(sim, seed)
        xyz = task.object_positions(sim)
        assert np.all(np.abs(xyz[:, 0]) <= 0.3) and np.all(xyz[:, 1] >= -0.25)
        assert np.all(xyz[:, 1] <= 0.15) and np.all(xyz[:, 2] >= 0.0)


def test_doing_nothing_does_not_succeed(task_and_sim):
    task, sim = task_and_sim
    for seed in (3, 4):
        task.reset(sim, seed)
        start = task.object_positions(sim)
        for _ in range(100):
            sim.step(START_POSE)
        assert not task.success(sim)
        assert task.progress(sim) == 0
        # the object lies still where it was put
        np.testing.assert_allclose(task.object_positions(sim), start, atol=5e-3)
