"""The articulated and multi-part tasks (drawer, plate rack, insertion): they build, seeds are
deterministic, doing nothing does not succeed, and the scripted experts succeed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gym_aloha")

from clamp_core.sim.aloha import START_POSE  # noqa: E402
from clamp_core.sim.tasks.articulated import DrawerOpen, Insertion, PlateOnRack  # noqa: E402
from clamp_core.sim.tasks.base import Task  # noqa: E402

TASKS = (DrawerOpen, PlateOnRack, Insertion)


@pytest.fixture(scope="module", params=TASKS, ids=lambda t: t.name)
def task_and_sim(request):
    task = request.param()
    sim = task.make_sim(render=False)
    yield task, sim
    sim.close()


def _scene(task: Task, sim) -> np.ndarray:
    """Everything the seed decides: object poses and joint positions."""
    poses = [sim.body_pose(n) for n in task.object_names]
    return np.concatenate([np.ravel(poses), sim.data.qpos])


def test_task_declares_itself(task_and_sim):
    task, _ = task_and_sim
    assert task.name and task.instruction
    assert task.object_names
    assert 0 < task.max_steps <= 700
    assert isinstance(task, Task)


def test_builds_with_its_objects(task_and_sim):
    task, sim = task_and_sim
    task.reset(sim, 0)
    for name in task.object_names:
        assert sim.model.body(name).id > 0
    pos = task.object_positions(sim)
    assert pos.shape == (len(task.object_names), 3)
    # on the table, within the arms' reach
    assert np.all(np.abs(pos[:, 0]) < 0.3) and np.all(np.abs(pos[:, 1]) < 0.3)
    assert np.all(pos[:, 2] > -1e-6)


def test_randomisation_is_deterministic_per_seed(task_and_sim):
    task, sim = task_and_sim
    task.reset(sim, 5)
    first = _scene(task, sim)
    task.reset(sim, 6)
    other = _scene(task, sim)
    task.reset(sim, 5)
    np.testing.assert_allclose(_scene(task, sim), first)
    assert not np.allclose(other, first)


def test_doing_nothing_does_not_succeed(task_and_sim):
    task, sim = task_and_sim
    for seed in (1, 2):
        task.reset(sim, seed)
        for _ in range(100):
            sim.step(START_POSE)
            assert not task.success(sim)
        assert task.progress(sim) == 0


def test_drawer_success_is_the_opening():
    task = DrawerOpen()
    sim = task.make_sim(render=False)
    task.reset(sim, 0)
    joint = sim.model.joint("drawer_slide").qposadr[0]
    sim.data.qpos[joint] = 0.05
    sim.mj.mj_forward(sim.model, sim.data)
    assert not task.success(sim) and task.progress(sim) == 2
    sim.data.qpos[joint] = 0.09
    sim.mj.mj_forward(sim.model, sim.data)
    assert task.success(sim)


def test_insertion_needs_the_peg_in_the_hole_and_both_lifted():
    from clamp_core.sim.tasks.base import set_free_body

    task = Insertion()
    sim = task.make_sim(render=False)
    task.reset(sim, 0)
    # peg end 2 cm inside the hole, both in the air
    set_free_body(sim, "socket", [0.0, 0.0, 0.2])
    set_free_body(sim, "peg", [0.04 + 0.05 - 0.02, 0.0, 0.2])
    sim.mj.mj_forward(sim.model, sim.data)
    assert task.peg_depth(sim) == pytest.approx(0.02, abs=1e-6)
    assert task.success(sim)
    # beside the hole: not inserted
    set_free_body(sim, "peg", [0.07, 0.03, 0.2])
    sim.mj.mj_forward(sim.model, sim.data)
    assert not task.success(sim)
    # inserted but resting on the table: not lifted
    set_free_body(sim, "socket", [0.0, 0.0, 0.025])
    set_free_body(sim, "peg", [0.07, 0.0, 0.025])
    sim.mj.mj_forward(sim.model, sim.data)
    assert task.peg_depth(sim) > 0.01 and not task.success(sim)


def test_plate_lying_in_the_rack_is_not_upright():
    from clamp_core.sim.tasks.base import set_free_body

    task = PlateOnRack()
    sim = task.make_sim(render=False)
    task.reset(sim, 0)
    slot = task.slot_centres(sim)[1]
    set_free_body(sim, "plate", [slot[0], slot[1], 0.12])  # flat, above the bars
    for _ in range(50):
        sim.step(START_POSE)
    assert not task.success(sim)
