"""Proposers: policies that turn the run's history into candidate patches of train.py.

A proposer suggests and never executes (`propose(n, history) -> [Proposal]`); the controller
validates, commits and queues what it suggests. `make_proposer` builds one by its config name:
`mutate` (the offline search), `llm` (any OpenAI-compatible API) or `agent` (a coding-agent CLI),
the last two backed by the offline search when they cannot deliver.
"""

from __future__ import annotations

from typing import Any

KINDS = ("mutate", "llm", "agent")


def make_proposer(kind: str, settings: dict[str, Any]):
    """The proposer `kind` names; with settings["mix"] ({kind: weight}), a weighted mix of kinds."""
    mix = settings.get("mix") or {}
    if mix:
        from .mix import MixProposer

        unknown = [k for k in mix if k not in KINDS]
        if unknown:
            raise ValueError(f"proposer.mix names unknown kinds {unknown}; known: {', '.join(KINDS)}")
        plain = dict(settings, mix={})
        return MixProposer([(make_proposer(k, plain), float(w)) for k, w in mix.items()])
    if kind == "mutate":
        from .mutate import MutateProposer

        return MutateProposer(seed=settings.get("seed", 0), profile=settings.get("profile", "gpu"),
                              exclude=tuple(settings.get("exclude", ("SEED",))),
                              two_change_prob=settings.get("two_change_prob", 0.2))
    if kind == "llm":
        from .llm import from_settings

        return from_settings(settings)
    if kind == "agent":
        from .agent import from_settings

        return from_settings(settings)
    raise ValueError(f"unknown proposer kind {kind!r}; known: {', '.join(KINDS)}")
