"""The fleet: the loop's handles on its Ray actors (the workers and the proposer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class WorkerSlot:
    name: str  # where it runs, `<node-ip>:gpu<k>`; its actor is `<tag>:<name>`
    handle: Any  # ray.actor.ActorHandle
    info: dict[str, Any]
