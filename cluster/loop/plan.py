"""What the farm runs beside the critical path of a merge: pure policies for many workers.

With one worker a merge takes its turn: measure a candidate, confirm it, measure the new main
line. With sixteen or sixty-four that serial path, not the number of GPUs, sets the pace, and
candidates proposed on one base explore overlapping directions. Four rules shorten it; each is a
switch of ``[search]`` (:class:`cluster.config.SearchSettings`), and bench/search.py measures
each one's effect (docs/BENCHMARKS.md):

- **Combinations.** When several candidates beat the main line in one window (the winners waiting
  for a verdict, and the near misses: discarded, but better than the line by at least
  ``near_miss`` of their margin), the best ``combine_max`` of them are combined (the 3-way merge
  rebases already use) into one candidate, measured twice at once (a measurement and its
  replication) while the members wait. It is judged like any candidate, and merges when it beats
  the main line and every member (``pick_merge`` takes the lowest delta; a member that would merge
  meanwhile waits for it, ``hold_merge``); its members are then recorded as merged with it. When it
  does not, the members go on alone. One combination per main line is pending at a time.
- **Speculation.** While an apparent winner (or a combination) is being confirmed, the workers
  run new candidates on top of it: the *frontier*. Candidates measured there are judged only once
  the frontier's fate is known. If it merges they were measured on the main line and count at
  once; if not they are measured on a base that never became the main line, and go back through
  the old-base rule (rebased and measured again if they beat that base, else discarded): no result
  measured off the main line merges without a measurement on it.
- **A shorter path.** A candidate going to confirmation gets its own main-line measurements
  (``baseline_runs`` runs, purpose baseline) queued beside the confirmation, so if it merges the
  judge need not wait a round for them. They take no part in its own verdict (they are not its
  candidate runs, and the judge reads those only), so they carry no selection bias.
- **Diversity** lives in the proposers (the offline search spreads concurrent candidates over
  constants and directions; near-duplicates are refused at intake).

Speculation and the early line runs spend GPU time on work that a rejected winner throws away:
they pay only when workers would otherwise wait on the critical path, so they apply from
``min_workers`` workers on. Everything here is a function of its arguments: no store, git or clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from cluster.config import SearchSettings
from cluster.loop.judge import Decision
from cluster.records import Candidate

COMBINE = "combine"  # the origin of a combination candidate
WINNING = ("confirm", "merge")  # the judge's actions for a candidate that beat the main line


def members(cand: Candidate) -> list[str]:
    """The ids a combination candidate combines ([] for any other candidate)."""
    return list(cand.meta.get("combination") or [])


def parallel(cfg: SearchSettings, workers: int) -> bool:
    """Whether speculation and early line runs apply to a farm of ``workers`` workers."""
    return workers >= max(1, cfg.min_workers)


def winners(judged: Iterable[tuple[Candidate, Decision]], line: str) -> list[tuple[Candidate, Decision]]:
    """The candidates that beat the main line ``line`` in this pass (to be confirmed or merged), not
    combinations themselves, best (lowest delta) first."""
    won = [(c, d) for c, d in judged if d.action in WINNING and c.base == line and not members(c)]
    return sorted(won, key=lambda cd: (cd[1].numbers.get("delta", math.inf), cd[0].id))


def combination(pool: Sequence[tuple[Candidate, float]], pending: bool, tried: set[frozenset[str]],
                cfg: SearchSettings) -> list[Candidate]:
    """The winners to combine now, from ``pool``: the candidates that beat the main line and wait for
    a verdict (this pass's winners and those in confirmation, none already in a combination), with
    their deltas. The best ``combine_max`` of them, at least two, unless a combination on this line
    is still ``pending`` (one at a time: the next one is formed when it is judged) or the same set
    was combined before (``tried``); [] for none."""
    if not cfg.combine or pending:
        return []
    best = [c for c, _ in sorted(pool, key=lambda cd: (cd[1], cd[0].id))][: max(0, cfg.combine_max)]
    if len(best) < 2 or frozenset(c.id for c in best) in tried:
        return []
    return best


def verdict(cand: Candidate, d: Decision) -> Decision:
    """The judge's decision on a combination, checked against its members: it merges only if it also
    beats its best member, as that member was measured (the lowest of ``member_deltas``, a first look
    that was selected for looking good, so the bar is, if anything, high). A combination that carries
    a real gain and a passenger of no effect gains what the real one does, and no more: it is
    discarded, and the members go on alone. Other decisions pass through."""
    deltas = [v for v in (cand.meta.get("member_deltas") or {}).values() if v is not None]
    if d.action != "merge" or not members(cand) or not deltas or d.numbers.get("delta", math.inf) < min(deltas):
        return d
    best = min(deltas)
    return Decision("discard", f"{d.reason.removesuffix(' -> merge')}, but not better than its best member "
                    f"({d.numbers['delta']:+.4f} against {best:+.4f}): its members go on alone -> discard",
                    d.numbers)


def hold_merge(cand: Candidate, delta: float, confirming: Iterable[tuple[Candidate, float]]) -> bool:
    """Whether a candidate the judge would merge should wait: another candidate in confirmation on
    the same base, still being measured (``confirming``: not judged in this pass; those judged with
    it are compared by ``pick_merge``), is expected to gain more (a combination, most often). Its
    verdict comes within about one run, since both were queued on this line; merging now would send
    that one, and everything speculated on it, back through a rebase and a second measurement."""
    return any(other.id != cand.id and other.base == cand.base and expected < delta
               for other, expected in confirming)


def near_miss(cand: Candidate, decision: Decision, line: str, cfg: SearchSettings) -> bool:
    """Whether a discarded candidate still counts for combinations: judged on the main line ``line``,
    better than it by at least ``near_miss`` of the margin it had to clear, just not by enough. At a
    plateau every single step gains less than the margin; two or three of them together may not."""
    nums = decision.numbers
    if cfg.near_miss <= 0 or decision.action != "discard" or cand.base != line or members(cand):
        return False
    delta, margin = nums.get("delta"), nums.get("margin")
    return delta is not None and margin is not None and delta < 0 and -delta >= cfg.near_miss * margin


def expected_delta(cand: Candidate, decision: Decision | None, member_deltas: dict[str, float]) -> float:
    """What a candidate in confirmation is expected to gain: its first look's delta, or for a
    combination not yet measured the sum of its members' deltas (their gains add where independent)."""
    if decision is not None and "delta" in decision.numbers:
        return float(decision.numbers["delta"])
    parts = [member_deltas[m] for m in members(cand) if m in member_deltas]
    return sum(parts) if parts else math.inf


def frontier(options: Iterable[tuple[Candidate, float]]) -> Candidate | None:
    """The speculative base among the candidates in confirmation (with their expected deltas): the
    one expected to gain most, so the work done on top of it most likely counts; None if none."""
    best = min(options, key=lambda co: (co[1], co[0].id), default=None)
    return None if best is None or not math.isfinite(best[1]) else best[0]


def preemptions(young: Sequence[tuple[float, str, str]], need: int, front: str) -> list[str]:
    """Which young first looks to stop (``young``: (start time, slot, the base it measures), each
    younger than ``preempt_seconds``): every one measuring another base than the front (the work moved
    on from it; a caller passes the front for one that cannot go there, a change that conflicts with
    the frontier), and the most recently started others while ``need`` jobs of the critical path wait
    for a worker. Returns their slots, newest first."""
    out = []
    for _, slot, base in sorted(young, reverse=True):
        if base != front or need > 0:
            out.append(slot)
            need -= 1
    return out
