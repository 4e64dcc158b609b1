"""Mixing proposers by weight: e.g. 70 % of the candidates from an LLM, 30 % from the offline search.

Each call splits its n slots by weight, carrying the remainders over between calls so the long-run
shares match the weights even when n is 1. Each part sees what the earlier parts of the same call
proposed (in `tried` and the pending descriptions), so the proposers do not duplicate each other.
Every candidate still records the origin of the proposer that wrote it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from proposer.base import History, Proposal, Proposer, ProposerBase, fingerprint


class MixProposer(ProposerBase):
    name = "mix"

    def __init__(self, parts: list[tuple[Proposer, float]]):
        if not parts or any(w < 0 for _, w in parts) or sum(w for _, w in parts) <= 0:
            raise ValueError("proposer.mix needs at least one kind with a positive weight")
        total = sum(w for _, w in parts)
        self.parts = [(p, w / total) for p, w in parts]
        self.credit = [0.0] * len(parts)  # slots owed to each part

    def shares(self, n: int) -> list[int]:
        """n slots by weight, remainders carried to the next call (largest credit first)."""
        for i, (_, w) in enumerate(self.parts):
            self.credit[i] += n * w
        out = [int(c) for c in self.credit]
        order = sorted(range(len(out)), key=lambda i: self.credit[i] - out[i], reverse=True)
        for i in order[: n - sum(out)]:
            out[i] += 1
        for i, k in enumerate(out):
            self.credit[i] -= k
        return out

    def propose(self, n: int, history: History) -> list[Proposal]:
        out: list[Proposal] = []
        for (part, _), k in zip(self.parts, self.shares(n)):
            if k <= 0:
                continue
            seen = dataclasses.replace(
                history, tried=history.tried | {fingerprint(p.source) for p in out if p.source},
                pending_descriptions=history.pending_descriptions + [p.description for p in out])
            out += part.propose(k, seen)
        return out

    def repair(self, meta: dict[str, Any], source: str, log_tail: str, tried: set[str] | None = None
               ) -> Proposal | None:
        """Sent to the part that wrote the crashed candidate (the first one that can repair)."""
        for part, _ in self.parts:
            if part.name == meta.get("origin", part.name):
                result = part.repair(meta, source, log_tail, tried)
                if result is not None:
                    return result
        return None

    @property
    def last_error(self) -> str | None:
        return next((e for p, _ in self.parts if (e := getattr(p, "last_error", None))), None)
