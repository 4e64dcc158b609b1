"""The proposer actor, `<tag>:proposer`: a proposer policy in a process of its own."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import ray

from cluster.actors.placement import NAMESPACE
from cluster.config import FarmConfig


class ProposerActor:
    """Holds a proposer policy in its own process, so slow proposers (LLMs) never stall the loop."""

    def __init__(self, kind: str, settings: dict[str, Any], secrets: dict[str, str] | None = None):
        from proposer import make_proposer

        # an API key arrives as an argument, not in the runtime_env, which the dashboard displays
        os.environ.update(secrets or {})
        self.policy = make_proposer(kind, settings)

    def propose(self, n: int, history: Any) -> list[Any]:
        return self.policy.propose(n, history)

    def repair(self, meta: dict[str, Any], source: str, log_tail: str, tried: set[str]) -> Any:
        """A fix for a crashed candidate, from proposers that can make one (else None)."""
        return self.policy.repair(meta, source, log_tail, tried)

    def status(self) -> dict[str, Any]:
        return self.policy.status()


def start_proposer(cfg: FarmConfig, tag: str, profile: str, program: str = "",
                   files: dict[str, str] | None = None, watch: Sequence[str] = ()) -> Any:
    """The proposer actor. The LLM's API key goes to it alone (never to workers, never into a
    record), from the driver's environment, since an actor on another node does not inherit it.
    ``watch``: the user's directories (the target repository, where the farm was started) an agent
    must leave alone; the agent proposer fingerprints them around every run, where they exist."""
    settings = dataclasses.asdict(cfg.proposer)
    settings.update(profile=profile, editable=cfg.run.editable, program=program, files=files or {},
                    near_miss_bpb=cfg.judge.default_noise, watch=list(watch))
    options: dict[str, Any] = {"name": f"{tag}:proposer", "num_cpus": 0, "namespace": NAMESPACE, "max_restarts": -1}
    key = os.environ.get(cfg.proposer.api_key_env, "")
    secrets = {cfg.proposer.api_key_env: key} if key else {}
    return ray.remote(ProposerActor).options(**options).remote(cfg.proposer.kind, settings, secrets)
