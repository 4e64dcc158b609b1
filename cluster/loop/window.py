"""The window of a merge: what is in confirmation, the combinations, the near misses and the
frontier, kept for the controller (the rules are :mod:`cluster.loop.plan`'s; this is their
bookkeeping with git and the store).

A candidate enters the window when the judge sends it to confirmation (or when it is made as a
combination) and leaves it when it is judged. Its expected delta is written into its record's meta
(``window``) so a resumed controller rebuilds the window from Redis; combinations name their
members in meta (``combination``), and the near misses of the main line are read back from their
recorded decisions.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from cluster.config import FarmConfig
from cluster.loop import plan
from cluster.loop.judge import Decision, Line
from cluster.loop.ledger import Measurements, OpenJobs
from cluster.loop.metrics import FarmMetrics
from cluster.records import PENDING_STATES, Candidate, Job, Purpose, State, values
from cluster.repo import FarmRepo, RebaseStatus, candidate_branch
from cluster.repo.merge import merge_lines
from cluster.store import Store

PENDING = values(PENDING_STATES)


class Window:
    def __init__(self, cfg: FarmConfig, tag: str, store: Store, repo: FarmRepo, jobs: OpenJobs,
                 measured: Measurements, workers: int, report: Callable[[str], None], metrics: FarmMetrics,
                 moved: Callable[[str], None]):
        self.cfg, self.tag, self.store, self.repo, self.jobs, self.measured = cfg, tag, store, repo, jobs, measured
        self.metrics, self.moved = metrics, moved  # moved(id): a candidate is on another base now
        self.search = cfg.search
        self.parallel = plan.parallel(cfg.search, workers)
        self.report = report
        self.confirming: dict[str, Candidate] = {}  # in confirmation (or a combination being measured), by id
        self.expected: dict[str, float] = {}  # their expected deltas
        self.combined: set[frozenset[str]] = set()  # member sets combined so far
        self.near: dict[str, dict[str, float]] = {}  # main-line commit -> near misses' ids and deltas

    def rebuild(self, main: str) -> None:
        """The window as the store has it (on start and resume)."""
        self.confirming.clear()
        self.expected.clear()
        self.combined.clear()
        self.near.clear()
        everyone = self.store.candidates()
        failed_members: set[str] = set()
        for c in everyone:
            parts = plan.members(c)
            if parts:
                self.combined.update({frozenset(parts), frozenset(c.meta.get("tried") or parts)})
                if c.state not in PENDING:
                    failed_members.update(parts)
            confirming = (c.decision or {}).get("action") == "confirm" or (parts and not c.decision)
            if c.state in PENDING and "window" in c.meta and c.base == main and confirming:
                self.confirming[c.id], self.expected[c.id] = c, float(c.meta["window"])
        for c in everyone:
            if c.state == State.DISCARDED.value and c.id not in failed_members and c.decision:
                d = Decision(c.decision.get("action", ""), "", c.decision.get("numbers") or {})
                if plan.near_miss(c, d, main, self.search):
                    self.near.setdefault(main, {})[c.id] = float(d.numbers["delta"])

    # ------------------------------------------------------------------ what the controller asks

    def busy(self) -> set[str]:
        """Members of a combination still being measured: they wait for its verdict."""
        return {m for c in self.confirming.values() for m in plan.members(c)}

    def waiting_on(self) -> set[str]:
        """Commits work may be speculated on: a candidate measured there waits for their verdict."""
        return {c.commit for c in self.confirming.values()}

    def front(self, main: str) -> str:
        """Where new work goes: the frontier when speculating (plan.frontier), else the main line."""
        if not (self.search.speculate and self.parallel):
            return main
        busy = self.busy()
        best = plan.frontier((c, self.expected[c.id]) for c in self.confirming.values()
                             if c.base == main and c.id not in busy)
        return best.commit if best is not None else main

    def line_behind(self, cand: Candidate, main: str) -> bool:
        """Whether ``cand``'s confirmation still waits for the line runs queued beside it."""
        wait = cand.meta.get("line_wait")
        return bool(wait) and wait[0] == main and len(self.measured.line_runs(main)) < int(wait[1])

    def held(self, cand: Candidate, d: Decision, judged_now: set[str]) -> bool:
        """Whether a merge of ``cand`` waits for a candidate still measured that promises more."""
        busy = self.busy()
        others = [(c, self.expected[c.id]) for c in self.confirming.values()
                  if c.id not in busy and c.id not in judged_now]
        return plan.hold_merge(cand, float(d.numbers.get("delta", 0.0)), others)

    # ------------------------------------------------------------------ what the controller tells

    def judged(self, decisions: list[tuple[Candidate, Decision]], line: Line) -> None:
        """Note this pass's near misses on the main line."""
        for c, d in decisions:
            if plan.near_miss(c, d, line.commit, self.search):
                self.near.setdefault(line.commit, {})[c.id] = float(d.numbers["delta"])

    def confirmed(self, cand: Candidate, d: Decision | None, deltas: dict[str, float] | None = None,
                  line_wait: list[Any] | None = None) -> None:
        """``cand`` (on the main line) goes to confirmation: it joins the window, with its expected delta
        (``deltas``: its members' for a combination) and the line runs its verdict waits for."""
        expected = plan.expected_delta(cand, d, deltas or {})
        meta = dict(cand.meta, window=expected, **({"line_wait": line_wait} if line_wait else {}))
        self.store.update_candidate(cand.id, meta=meta)
        cand = Candidate.from_dict(cand.to_dict() | {"meta": meta})
        self.confirming[cand.id], self.expected[cand.id] = cand, expected

    def beside(self, cand: Candidate, line: Line, main: str, main_cand: Callable[[str], Candidate],
               d: Decision | None, deltas: dict[str, float] | None = None) -> list[tuple[Candidate, Purpose]]:
        """What runs beside a confirmation on the main line, to be queued right behind it: the line once
        more, on a new seed (an apparent win is most often a line measured high by luck: the
        confirmation is judged once that run is in), and, with workers to spare, the candidate's own
        line runs, so that if it merges nothing waits; it joins the window."""
        if not (cand.base == line.commit == main):
            return []  # (a merge of this pass moved the line)
        items = [(main_cand(line.commit), Purpose.BASELINE)]
        if self.parallel and self.search.early_line_runs:
            items += [(cand, Purpose.BASELINE)] * max(1, self.cfg.judge.baseline_runs)
        queued = len(self.measured.line_runs(line.commit)) + self.jobs.by_commit[line.commit] + 1
        self.confirmed(cand, d, deltas, line_wait=[line.commit, queued])
        return items

    def merged_with(self, cand: Candidate) -> None:
        """A combination merged: its members are in the main line with it (their open jobs are dropped)."""
        deltas = cand.meta.get("member_deltas") or {}
        for m in plan.members(cand):
            self.jobs.unqueue(m)
            self.store.transition(m, {*PENDING, State.DISCARDED.value}, State.MERGED.value, decision={
                "action": "combined", "reason": f"merged as part of {cand.id}", "at": time.time(),
                "numbers": {"delta": deltas.get(m), "combination": cand.id}})
            self.near.get(cand.base, {}).pop(m, None)

    def settled(self, cand: Candidate, merged: bool = False) -> bool:
        """``cand`` is judged: it leaves the window; a combination that did not merge frees its members
        (its near misses had their one combination). Returns whether it was in the window (then what
        waited on its verdict is to be judged)."""
        was = self.confirming.pop(cand.id, None) is not None
        self.expected.pop(cand.id, None)
        if not merged:
            for m in plan.members(cand):
                self.near.get(cand.base, {}).pop(m, None)
        return was

    def line_moved(self, main: str) -> None:
        """A merge: candidates in confirmation on the old line are judged as any old-base candidate."""
        for cid in [c for c, cand in self.confirming.items() if cand.base != main]:
            self.confirming.pop(cid)
            self.expected.pop(cid, None)

    def pool(self, won: list[tuple[Candidate, Decision]], line: str) -> list[tuple[Candidate, float]]:
        """What may be combined now: this pass's winners, the singles in confirmation on ``line`` and
        its near misses, none already waiting on a combination."""
        busy = self.busy()
        out = [(c, float(d.numbers["delta"])) for c, d in won]
        seen = {c.id for c, _ in out}
        for c in self.confirming.values():
            if c.base == line and c.id not in busy and c.id not in seen and not plan.members(c):
                out.append((c, self.expected[c.id]))
                seen.add(c.id)
        near = [cid for cid in self.near.get(line, {}) if cid not in busy and cid not in seen]
        for c in self.store.get_candidates(near):
            out.append((c, self.near[line][c.id]))
        return out

    def pending_combination(self, line: str) -> bool:
        return any(plan.members(c) and c.base == line for c in self.confirming.values())

    # ------------------------------------------------------------------ combinations

    def combine(self, parts: list[Candidate], deltas: dict[str, float], line: Line) -> Candidate | None:
        """One candidate carrying the changes of ``parts`` on the main line (3-way merged in order; a
        part that conflicts, or adds nothing, is left out), recorded (the controller queues it twice at
        the front: a measurement and its replication); None when fewer than two parts combine."""
        self.combined.add(frozenset(c.id for c in parts))
        editable = self.cfg.run.editable
        base = self.repo.read_file(line.commit, editable).encode()
        merged, used = self.repo.read_file(parts[0].commit, editable).encode(), [parts[0]]
        for c in parts[1:]:
            got = merge_lines(base, merged, self.repo.read_file(c.commit, editable).encode())
            if got is not None and got != merged:
                merged, used = got, used + [c]
        if len(used) < 2:
            return None
        ids = [c.id for c in used]
        self.combined.add(frozenset(ids))
        cid = self.store.next_id("c", 4)
        description = " + ".join(c.description for c in used)
        message = f"combination of {', '.join(ids)}: {description}\n\nFarm-Candidate: {cid}\nFarm-Origin: {plan.COMBINE}\n"
        made = self.repo.commit_candidate(line.commit, merged.decode(), candidate_branch(self.tag, cid), message)
        changes = [ch for c in used for ch in (c.meta.get("changes") or [])]
        meta: dict[str, Any] = {"combination": ids, "member_deltas": {i: deltas.get(i) for i in ids},
                                "tried": [c.id for c in parts]}
        if changes:
            meta["changes"] = changes
        cand = Candidate(id=cid, commit=made.sha, base=line.commit, branch=candidate_branch(self.tag, cid),
                         description=description, origin=plan.COMBINE, state=State.QUEUED.value,
                         lines_added=made.lines_added, lines_removed=made.lines_removed, created_at=time.time(),
                         meta=meta)
        self.store.add_candidate(cand)
        self.store.add_event("combination", cand=cid, members=ids)
        self.report(f"{cid} combines {', '.join(ids)}: {description}")
        return cand

    # ------------------------------------------------------------------ moving candidates between bases

    def main_candidate(self, commit: str) -> Candidate:
        """The merged candidate holding the main-line commit ``commit`` (its line runs are queued as its)."""
        for c in self.store.candidates({State.MERGED.value}):
            if c.commit == commit:
                return c
        raise RuntimeError(f"no merged candidate holds the main-line commit {commit}")

    def retest(self, cand: Candidate, new_base: str, decision: dict[str, Any]) -> None:
        """A finished candidate that beat its old base is moved onto ``new_base`` and measured again."""
        if self.move(cand, new_base, State.FINISHED.value, decision=decision, retest=True) is not None:
            self.jobs.enqueue(self.store.get_candidate(cand.id), Purpose.MEASURE)
            self.report(f"{cand.id} beat its base; re-testing it on the new main line")

    def move(self, cand: Candidate, target: str, from_state: str, *, job: Job | None = None,
             decision: dict[str, Any] | None = None, retest: bool = False, stale_ok: bool = True,
             frontier: bool = False) -> str | None:
        """Rebase ``cand`` (in ``from_state``) onto ``target`` (3-way) and record it there, queued; ``job``
        (leased a moment ago) is pointed at the new commit first, so a controller killed in between
        re-queues a job that names a commit of the candidate, rebased again when taken. Returns the new
        commit, or None: its change is already in ``target`` (stale) or conflicts there (stale only with
        ``stale_ok``; else it is left as it was, for another base). ``frontier``: ``target`` is the frontier."""
        outcome = self.repo.rebase_candidate(cand.commit, target, cand.branch)
        if outcome.status != RebaseStatus.REBASED:
            if stale_ok or outcome.status != RebaseStatus.CONFLICT:
                self.stale(cand, outcome.status, from_state, frontier)
            return None
        new = outcome.commit
        if job is not None and not self.store.retarget(job.id, job.attempt, new.sha):
            return None  # (not reached: the job was leased a moment ago)
        meta = {k: v for k, v in cand.meta.items() if k not in ("window", "line_wait")}  # (it left any window)
        meta.update(rebased_from=cand.commit, **({"rebased_after_win": True} if retest else {}))
        fields: dict[str, Any] = dict(commit=new.sha, base=target, meta=meta, lines_added=new.lines_added,
                                      lines_removed=new.lines_removed)
        if decision is not None:
            fields["decision"] = decision
        self.store.transition(cand.id, {from_state}, State.QUEUED.value, **fields)
        self.jobs.bases[cand.id] = target
        self.moved(cand.id)
        return new.sha

    def stale(self, cand: Candidate, status: RebaseStatus, from_state: str, frontier: bool = False) -> None:
        if frontier:
            why = "conflicts with the frontier" if status == RebaseStatus.CONFLICT else "already in the frontier"
        else:
            why = "conflicts with the new main line" if status == RebaseStatus.CONFLICT else "already in the main line"
        self.store.transition(cand.id, {from_state}, State.STALE.value,
                              decision={"action": "stale", "reason": why, "at": time.time()})
        self.store.add_event("stale", cand=cand.id, reason=why)
        self.metrics.decision("stale")
        self.report(f"{cand.id} is stale: {why}")
