"""The simulated tasks, by command-line id."""

from __future__ import annotations

from ..aloha import SimError
from .articulated import DrawerOpen, Insertion, PlateOnRack
from .base import Task
from .pick_place import CanOpenerInCaddy, MugOnPlate, PenInContainer, ScrewdriverInCaddy
from .transfer_cube import TransferCube

TASKS: dict[str, type[Task]] = {
    t.name: t
    for t in (
        DrawerOpen,
        MugOnPlate,
        PenInContainer,
        CanOpenerInCaddy,
        ScrewdriverInCaddy,
        PlateOnRack,
        TransferCube,
        Insertion,
    )
}


def make_task(name: str) -> Task:
    if name not in TASKS:
        raise SimError(f"unknown task '{name}' (known: {', '.join(sorted(TASKS))})")
    return TASKS[name]()


__all__ = ["TASKS", "Task", "make_task"]
