"""Intake: everything that turns ideas into queued candidates.

Proposals come from the proposer actor (asked whenever the queue is short), from humans through
the run's inbox (`autoresearch-farm submit --patch/--idea`), and as repairs of crashed LLM or
agent candidates. Every one is validated the same way before any GPU time is spent: it compiles,
it differs from its base, its git change touches the editable file only; a refused one is
recorded as an `invalid` candidate with its reason, so it shows in `status` and the results.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import ray

from proposer.base import History, Outcome, Proposal, fingerprint

from cluster.errors import PatchError, StoreError
from cluster.records import PENDING_STATES, Candidate, Purpose, RunStatus, State, values
from cluster.repo import RebaseStatus, candidate_branch

if TYPE_CHECKING:
    from cluster.loop.controller import Controller

log = logging.getLogger(__name__)

IDEA_ATTEMPTS = 3  # invalid implementations of a human idea before it is dropped
DRY_ROUNDS = 3  # rounds in a row without a sound proposal, after which the proposer is not asked again
                # (until a merge or a human idea gives it something new)
INBOX_S = 1.0  # seconds between reads of the run's inbox (submitted patches and ideas)


class Intake:
    def __init__(self, ctrl: Controller):
        self.ctrl = ctrl
        self.proposal_ref: Any = None
        self.repairs: dict[Any, str] = {}  # pending repair ref -> crashed candidate id
        self.dry = 0
        self._inbox_read = 0.0
        self._budget_spent = False  # max_experiments candidates proposed: the proposer is not asked again
        # the proposer's history, kept up to date incrementally (see history())
        self._seen: dict[str, Candidate] = {}  # every candidate, as last read
        self._seq = 0.0  # creation sequence of the last candidate read
        self._reread: set[str] = set()  # candidates the controller moved onto another base since
        self._outcomes: dict[str, Outcome] = {}  # judged candidates' outcomes, by id
        self._pending: set[str] = set()  # ids in a pending state at the last ask

    @property
    def exhausted(self) -> bool:
        return self.dry >= DRY_ROUNDS and self.proposal_ref is None and not self.repairs

    # ------------------------------------------------------------------ one step

    def step(self) -> None:
        self._read_inbox()
        self._collect_repairs()
        self._collect_proposals()
        self._ask()

    def _ask(self) -> None:
        c = self.ctrl
        if self.proposal_ref is not None or self.dry >= DRY_ROUNDS or c.stop_requested:
            return
        limit = c.cfg.run.max_experiments
        if limit and self._budget_spent:
            return
        want = len(c.workers) + c.cfg.proposer.queue_margin - c.store.queue_depth()
        if want <= 0:
            return
        room = (limit - c._experiments()) if limit else 10**9
        self._budget_spent = room <= 0  # candidates are never deleted: once spent, spent for good
        n = min(want, room)
        if n > 0:
            self.proposal_ref = c.proposer.propose.remote(n, self.history(c.main))

    def _collect_proposals(self) -> None:
        if self.proposal_ref is None or not ray.wait([self.proposal_ref], timeout=0)[0]:
            return
        ref, self.proposal_ref = self.proposal_ref, None
        try:
            proposals = ray.get(ref)
        except ray.exceptions.RayError as e:
            self.ctrl.report(f"the proposer failed: {str(e)[:300]}")
            proposals = []
        for p in proposals:
            t = p.meta.get("tokens") or {}
            self.ctrl.metrics.llm_usage(int(t.get("prompt", 0)), int(t.get("completion", 0)),
                                        float(p.meta.get("cost_usd", 0.0)))
        admitted = self.admit_round(proposals)
        # rounds without one sound proposal (none, or all refused) mean a proposer out of ideas, or
        # one that keeps failing validation: after DRY_ROUNDS of them it is no longer asked
        self.dry = 0 if admitted else self.dry + 1

    # ------------------------------------------------------------------ admission

    def admit_round(self, proposals: list[Proposal]) -> int:
        """admit() a proposer's round on the main line, with the git work done once for all of it
        (FarmRepo.commit_candidates: two git processes per round instead of a dozen per proposal).
        Returns how many were queued."""
        if not proposals:
            return 0
        c = self.ctrl
        main = c.main
        todo: list[tuple[Proposal, str, str | None]] = []  # (proposal, candidate id, why refused)
        for p, cid in zip(proposals, c.store.next_ids("c", len(proposals), 4)):
            reason = p.meta.get("invalid")
            if not reason:
                try:
                    compile(p.source, c.cfg.run.editable, "exec")
                except SyntaxError as e:
                    reason = str(e)
            todo.append((p, cid, reason))
        sound = [(p, cid) for p, cid, reason in todo if not reason]
        made = iter(c.repo.commit_candidates(main, [(p.source, candidate_branch(c.tag, cid), _message(p, cid))
                                                    for p, cid in sound]))
        outcomes: list[tuple[Proposal, str, Any]] = []  # (proposal, id, its CandidateCommit or why refused)
        for p, cid, reason in todo:
            got = reason or next(made)
            outcomes.append((p, cid, str(got) if isinstance(got, PatchError) else got))
        # every candidate and job of the round in one Redis round trip
        jobs = iter(c.store.next_ids("j", sum(not isinstance(got, str) for _, _, got in outcomes), 6))
        pipe = c.store.r.pipeline(transaction=False)
        admitted = 0
        for p, cid, got in outcomes:
            if isinstance(got, str):
                admitted += self._queue(p, cid, main, None, got, pipe=pipe)
            else:
                admitted += self._queue(p, cid, main, got, None, pipe=pipe, job_id=next(jobs))
        if not all(pipe.execute()):
            raise StoreError("a candidate id of this round was taken: is another controller running this run?")
        return admitted

    def _queue(self, p: Proposal, cid: str, main: str, made: Any, reason: str | None, *, pipe: Any = None,
               job_id: str | None = None) -> bool:
        """Record a proposal as a queued candidate (``made``: its CandidateCommit on the main line),
        or as an invalid one when there is a ``reason``; on ``pipe`` when the caller batches the
        writes. Returns whether it was queued."""
        c = self.ctrl
        meta = dict(p.meta, fingerprint=fingerprint(p.source)) if p.source else dict(p.meta)
        parent = p.meta.get("parent")
        self._idea_outcome(p.meta.get("idea"), accepted=not reason)
        if reason:
            c.store.add_candidate(Candidate(
                id=cid, commit="", base=main, branch="", description=p.description, origin=p.origin,
                state=State.INVALID.value, parent=parent, created_at=time.time(), meta=meta,
                decision={"action": "invalid", "reason": reason}), pipeline=pipe)
            c.report(f"{cid} refused before running: {reason}")
            return False
        cand = Candidate(id=cid, commit=made.sha, base=main, branch=candidate_branch(c.tag, cid),
                         description=p.description, origin=p.origin, state=State.QUEUED.value, parent=parent,
                         lines_added=made.lines_added, lines_removed=made.lines_removed, created_at=time.time(),
                         meta=meta)
        c.store.add_candidate(cand, pipeline=pipe)
        c._enqueue(cand, Purpose.MEASURE, job_id=job_id, pipeline=pipe)
        return True

    def admit(self, p: Proposal, base: str | None = None) -> bool:
        """Validate a proposal and, if sound, commit it on `base` (default: the main line), move it
        onto the main line if that has moved since, and queue it. Returns whether it was queued."""
        c = self.ctrl
        main = c.main
        base = base or main
        cid = c.store.next_id("c", 4)
        branch = candidate_branch(c.tag, cid)
        reason = p.meta.get("invalid")
        made = None
        if not reason:
            try:
                compile(p.source, c.cfg.run.editable, "exec")
                made = c.repo.commit_candidate(base, p.source, branch, _message(p, cid))
                if base != main:
                    moved = c.repo.rebase_candidate(made.sha, main, branch)
                    if moved.status != RebaseStatus.REBASED:
                        raise PatchError(f"it conflicts with the main line, which moved since {base[:8]}")
                    made = moved.commit
                problem = c.repo.check_change(main, made.sha)
                if problem:
                    raise PatchError(problem)
            except (SyntaxError, PatchError) as e:
                reason = str(e)
        return self._queue(p, cid, main, made, reason)

    # ------------------------------------------------------------------ humans

    def _read_inbox(self) -> None:
        c = self.ctrl
        if time.time() - self._inbox_read < INBOX_S:
            return
        self._inbox_read = time.time()
        for entry in c.store.receive():
            if entry["kind"] == "idea":
                ideas = c.store.ideas()
                ideas.append({"text": entry["text"], "at": entry["at"], "attempts": 0})
                c.store.set_ideas(ideas)
                c.report(f"idea received, for the proposer's next round: {entry['text'][:100]}")
                self.dry = 0  # a proposer out of ideas may have one now
                continue
            main = c.main
            base_source = c.repo.read_file(main, c.cfg.run.editable)
            try:
                source = c.repo.apply_diff(main, entry["text"])
            except PatchError as e:
                source, meta = "", {"invalid": f"the submitted patch does not apply to the main line: {e}"}
            else:
                meta = {}
            description = entry.get("description") or _describe(base_source, source)
            self.admit(Proposal(description=description, source=source, origin="human", meta=meta))

    def _idea_outcome(self, idea: str | None, accepted: bool) -> None:
        if not idea:
            return
        store, kept = self.ctrl.store, []
        for i in self.ctrl.store.ideas():
            if i["text"] != idea:
                kept.append(i)
            elif not accepted and i["attempts"] + 1 < IDEA_ATTEMPTS:
                kept.append(dict(i, attempts=i["attempts"] + 1))
            elif not accepted:
                self.ctrl.report(f"dropping the idea after {IDEA_ATTEMPTS} failed attempts: {idea[:100]}")
        store.set_ideas(kept)

    # ------------------------------------------------------------------ crash repair

    def crashed(self, cand: Candidate, log_tail: str) -> None:
        """A discarded candidate that crashed: ask for one fix, if its proposer marked it repairable."""
        c = self.ctrl
        if not (c.cfg.proposer.crash_repair and cand.meta.get("repairable")) or cand.parent:
            return
        if cand.meta.get("repair_requested"):
            return
        c.store.update_candidate(cand.id, meta=dict(cand.meta, repair_requested=True))
        source = c.repo.read_file(cand.commit, c.cfg.run.editable)
        tried = {x.meta.get("fingerprint") for x in c.store.candidates() if x.meta.get("fingerprint")}
        ref = c.proposer.repair.remote(dict(cand.meta, candidate=cand.id, description=cand.description,
                                            origin=cand.origin),
                                       source, log_tail, tried)
        self.repairs[ref] = cand.id
        c.report(f"{cand.id} crashed; asking the proposer for one fix")

    def _collect_repairs(self) -> None:
        if not self.repairs:
            return
        ready, _ = ray.wait(list(self.repairs), num_returns=len(self.repairs), timeout=0)
        for ref in ready:
            cid = self.repairs.pop(ref)
            try:
                fix = ray.get(ref)
            except ray.exceptions.RayError as e:
                self.ctrl.report(f"the repair of {cid} failed: {str(e)[:300]}")
                continue
            if fix is None:
                continue
            crashed = self.ctrl.store.get_candidate(cid)
            fix.meta = dict(fix.meta, parent=cid)
            self.admit(fix, base=crashed.base)

    # ------------------------------------------------------------------ history for the proposer

    def main_moved(self) -> None:
        """A merge: the proposer, out of ideas on the old main line, has new neighbours to try."""
        self.dry = 0

    def moved(self, cid: str) -> None:
        """The controller moved candidate ``cid`` onto another base: read it again for the history."""
        self._reread.add(cid)

    def history(self, main: str) -> History:
        """What the proposer sees. Kept incrementally, so asking costs Redis a few commands plus one
        read per candidate that changed since the last ask, not a read of every candidate so far:
        new candidates (by creation sequence), the ones that left the pending states (judged, stale,
        failed) and the ones the controller moved onto another base are read; the rest are as seen."""
        c = self.ctrl
        new, self._seq = c.store.candidates_after(self._seq)
        fresh = {x.id for x in new}
        self._seen.update((x.id, x) for x in new)
        by_state = c.store.ids_by_state(values(PENDING_STATES))
        pending_now = {i for ids in by_state.values() for i in ids}
        left = {i for i in self._pending if i not in pending_now}
        for cand in c.store.get_candidates(sorted((left | self._reread) - fresh)):
            self._seen[cand.id] = cand
        self._reread.clear()
        self._pending = pending_now
        for cid in left | fresh:
            cand = self._seen.get(cid)
            if cand is not None and cid not in self._outcomes:
                outcome = self._outcome(cand)
                if outcome is not None:
                    self._outcomes[cid] = outcome
        tried = {x.meta.get("fingerprint") for x in self._seen.values() if x.base == main and x.meta.get("fingerprint")}
        meta = c.store.run_meta()
        best = [r.val_bpb for r in c.measured(main) if r.val_bpb is not None]
        base = [r.val_bpb for r in c.measured(meta.get("baseline", "")) if r.val_bpb is not None]
        described = [i for s in (State.QUEUED.value, State.RUNNING.value, State.FINISHED.value) for i in by_state[s]]
        return History(base_commit=main, base_source=c.repo.read_file(main, c.cfg.run.editable),
                       tried={t for t in tried if t},
                       outcomes=[self._outcomes[i] for i in sorted(self._outcomes, key=_creation)],
                       pending_descriptions=[self._seen[i].description for i in sorted(described, key=_creation)
                                             if i in self._seen],
                       best_bpb=sum(best) / len(best) if best else None,
                       baseline_bpb=sum(base) / len(base) if base else None,
                       ideas=[i["text"] for i in c.store.ideas()])

    def _outcome(self, cand: Candidate) -> Outcome | None:
        """A judged candidate's outcome for the proposer; None for the others."""
        # stale ones are left out: they could not be rebased, which says nothing about their idea
        # (scored as a failure, they punished the very constant a merge had just improved)
        if cand.origin == "baseline" or not cand.decision or cand.state not in (
                State.MERGED.value, State.DISCARDED.value):
            return None
        runs = [r for r in self.ctrl.measured(cand.commit) if r.cand == cand.id]
        status = RunStatus.OK.value if any(r.status == RunStatus.OK.value for r in runs) else (
            runs[-1].status if runs else cand.state)
        tail = next((r.log_tail for r in reversed(runs) if r.status != RunStatus.OK.value), "")
        numbers = cand.decision.get("numbers") or {}
        return Outcome(meta=dict(cand.meta, description=cand.description, candidate=cand.id, log_tail=tail),
                       status=status, delta=numbers.get("delta"), merged=cand.state == State.MERGED.value)


def _message(p: Proposal, cid: str) -> str:
    """The commit message of candidate ``cid`` made from proposal ``p``."""
    return f"{p.description}\n\nFarm-Candidate: {cid}\nFarm-Origin: {p.origin}\n"




def _creation(cid: str) -> tuple[int, str]:
    """Sort key of candidate ids in creation order (c0009 < c0010 < c10000)."""
    return len(cid), cid


def _describe(base: str, new: str) -> str:
    from proposer.prompts import derive_description

    return derive_description(base, new) if new else "submitted patch"
