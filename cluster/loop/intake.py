"""Intake: everything that turns ideas into queued candidates.

Proposals come from the proposer actor (asked whenever the queue is short), from humans through
the run's inbox (`autoresearch-farm submit --patch/--idea`), and as repairs of crashed LLM or
agent candidates. Every one is validated the same way before any GPU time is spent: it compiles,
it differs from its base, its git change touches the editable file only, and (from an LLM, an agent
or a human: the offline search dedupes itself) it is no near-duplicate of a candidate admitted
before (:meth:`Intake._twin`); a refused one is recorded as an `invalid` candidate with its reason,
so it shows in `status` and the results.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from cluster.config import FarmConfig
from cluster.errors import PatchError, RepoError, StoreError
from cluster.loop.fleet import ProposerCalls
from cluster.loop.ledger import Measurements, OpenJobs
from cluster.loop.metrics import FarmMetrics
from cluster.records import PENDING_STATES, Candidate, Origin, Purpose, RunStatus, State, experiment_count, values
from cluster.repo import FarmRepo, RebaseStatus, candidate_branch
from cluster.store import Store
from proposer.base import History, Outcome, Proposal, fingerprint
from proposer.mutate import constant_changes
from proposer.prompts import derive_description
from worker import tripwire

log = logging.getLogger(__name__)

IDEA_ATTEMPTS = 3  # invalid implementations of a human idea before it is dropped
DRY_ROUNDS = 3  # rounds in a row without a sound proposal, after which the proposer is not asked again
                # (until a merge or a human idea gives it something new)
INBOX_S = 1.0  # seconds between reads of the run's inbox (submitted patches and ideas)
CHECKED_ORIGINS = frozenset({Origin.LLM.value, Origin.AGENT.value, Origin.HUMAN.value})  # refused as near-duplicates
_Twins = tuple[dict[str, str], dict[frozenset[tuple[str, str, str]], str]]  # Intake._twins: (fingerprints, moves)


class Intake:
    """Turns proposals into queued candidates on the main line ``main`` (the controller tells it
    when that moves, :meth:`main_moved`); queues their jobs through the controller's ledger."""

    def __init__(self, cfg: FarmConfig, tag: str, store: Store, repo: FarmRepo, proposer: ProposerCalls,
                 jobs: OpenJobs, measured: Measurements, metrics: FarmMetrics, report: Callable[[str], None],
                 workers: int, main: str = ""):
        self.cfg, self.tag, self.store, self.repo = cfg, tag, store, repo
        self.proposer, self.jobs, self.measured, self.metrics, self.report = proposer, jobs, measured, metrics, report
        self.workers = workers
        self.main = main
        self.front = main  # where proposals go: the frontier while the controller speculates, else the main line
        self._asked_on = ""  # the base of the round in flight: its proposals are full files written on it
        self.dry = 0
        self._inbox_read = 0.0
        self._budget_spent = False  # max_experiments candidates proposed: the proposer is not asked again
        self._last_error: tuple[Any, Any] = (None, None)  # the proposer's last error, as last reported
        # the proposer's history, kept up to date incrementally (see history())
        self._seen: dict[str, Candidate] = {}  # every candidate, as last read
        self._seq = 0.0  # creation sequence of the last candidate read
        self._reread: set[str] = set()  # candidates the controller moved onto another base since
        self._outcomes: dict[str, Outcome] = {}  # judged candidates' outcomes, by id
        self._pending: set[str] = set()  # ids in a pending state at the last ask
        self._state_of: dict[str, str] = {}  # the pending ones' states, as last read (_refresh)
        self._fps: dict[str, str] = {}  # fingerprint -> the first admitted candidate (any state but invalid) with it
        self._effects: dict[str, tuple[str, list[dict[str, Any]], bool]] = {}  # id -> (commit, its constant
        # changes, whether they are all it changes): see _effect
        self._files: dict[str, str] = {}  # the editable file of a few base commits, for _effect

    @property
    def exhausted(self) -> bool:
        return self.dry >= DRY_ROUNDS and not self.proposer.asking and not self.proposer.repairs

    # ------------------------------------------------------------------ one step

    def step(self, stopping: bool = False) -> None:
        self._read_inbox()
        self._collect_repairs()
        self._collect_proposals()
        self._proposer_status()
        if not stopping:
            self.ask()

    def ask(self) -> None:
        """Ask the proposer for a round when the queue is short of one candidate per worker plus
        the margin, within the experiment budget."""
        if self.proposer.asking or self.dry >= DRY_ROUNDS:
            return
        limit = self.cfg.run.max_experiments
        if limit and self._budget_spent:
            return
        want = self.workers + self.cfg.proposer.queue_margin - self.store.queue_depth()
        if want <= 0:
            return
        room = (limit - experiment_count(self.store.count_by_state())) if limit else 10**9
        self._budget_spent = room <= 0  # candidates are never deleted: once spent, spent for good
        n = min(want, room)
        if n > 0:
            self._asked_on = self.front
            self.proposer.ask(n, self.history(self.front))

    def _collect_proposals(self) -> None:
        came, proposals, error = self.proposer.answer()
        if not came:
            return
        if error:
            self.report(f"the proposer failed: {error}")
        for p in proposals:
            t = p.meta.get("tokens") or {}
            self.metrics.llm_usage(int(t.get("prompt", 0)), int(t.get("completion", 0)),
                                   float(p.meta.get("cost_usd", 0.0)))
        admitted = self.admit_round(proposals, base=self._asked_on or None)
        # rounds without one sound proposal (none, or all refused) mean a proposer out of ideas, or
        # one that keeps failing validation: after DRY_ROUNDS of them it is no longer asked
        self.dry = 0 if admitted else self.dry + 1

    def _proposer_status(self) -> None:
        """The proposer's latest error (an endpoint down, an agent that failed) into the run's record,
        where `autoresearch-farm status` shows it, and said once when it is new."""
        st = self.proposer.status()
        if not st:
            return
        error, at = st.get("last_error"), st.get("last_error_at")
        if not error or (error, at) == self._last_error:
            return
        self._last_error = (error, at)
        self.report(f"the proposer reports: {error}")
        self.store.update_run(proposer={"last_error": error, "last_error_at": at, "usage": st.get("usage") or {}})

    # ------------------------------------------------------------------ admission

    def admit_round(self, proposals: list[Proposal], base: str | None = None) -> int:
        """admit() a proposer's round on ``base`` (the commit it was asked on; default the main line),
        with the git work done once for all of it (FarmRepo.commit_candidates: two git processes per
        round instead of a dozen per proposal). Its proposals are whole files written on that base, so
        they are committed there even when the line or the frontier moved meanwhile: a worker taking
        one rebases it (Controller.take). Returns how many were queued."""
        if not proposals:
            return 0
        main = base or self.main
        base_source = self.repo.read_file(main, self.cfg.run.editable)
        base_seeding = tripwire.seeding_calls(base_source)
        twins = self._twins(main, base_source) if any(p.origin in CHECKED_ORIGINS for p in proposals) else None
        todo: list[tuple[Proposal, str, str | None]] = []  # (proposal, candidate id, why refused)
        for p, cid in zip(proposals, self.store.next_ids("c", len(proposals), 4)):
            reason = p.meta.get("invalid") or self._refusal(p.source, base_seeding)
            todo.append((p, cid, reason or self._twin(p, cid, base_source, twins)))
        sound = [(p, cid) for p, cid, reason in todo if not reason]
        made = iter(self.repo.commit_candidates(main, [(p.source, candidate_branch(self.tag, cid), _message(p, cid))
                                                    for p, cid in sound]))
        outcomes: list[tuple[Proposal, str, Any]] = []  # (proposal, id, its CandidateCommit or why refused)
        for p, cid, reason in todo:
            got = reason or next(made)
            outcomes.append((p, cid, str(got) if isinstance(got, PatchError) else got))
            derived = self._effects.pop(cid, None)  # by _twin: it holds for the commit made of it
            if derived is not None and not isinstance(got, (str, PatchError)):
                self._effects[cid] = (got.sha, *derived[1:])
        # every candidate and job of the round in one Redis round trip
        jobs = iter(self.store.next_ids("j", sum(not isinstance(got, str) for _, _, got in outcomes), 6))
        pipe = self.store.pipeline()
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
        meta = dict(p.meta, fingerprint=fingerprint(p.source)) if p.source else dict(p.meta)
        parent = p.meta.get("parent")
        self._idea_outcome(p.meta.get("idea"), accepted=not reason)
        if reason:
            self.store.add_candidate(Candidate(
                id=cid, commit="", base=main, branch="", description=p.description, origin=p.origin,
                state=State.INVALID.value, parent=parent, created_at=time.time(), meta=meta,
                decision={"action": "invalid", "reason": reason}), pipeline=pipe)
            self.report(f"{cid} refused before running: {reason}")
            return False
        cand = Candidate(id=cid, commit=made.sha, base=main, branch=candidate_branch(self.tag, cid),
                         description=p.description, origin=p.origin, state=State.QUEUED.value, parent=parent,
                         lines_added=made.lines_added, lines_removed=made.lines_removed, created_at=time.time(),
                         meta=meta)
        self.store.add_candidate(cand, pipeline=pipe)
        self.jobs.enqueue(cand, Purpose.MEASURE, job_id=job_id, pipeline=pipe)
        return True

    def admit(self, p: Proposal, base: str | None = None) -> bool:
        """Validate a proposal and, if sound, commit it on `base` (default: the main line), move it
        onto the main line if that has moved since, and queue it. Returns whether it was queued."""
        main = self.main
        base = base or main
        cid = self.store.next_id("c", 4)
        branch = candidate_branch(self.tag, cid)
        base_source = self.repo.read_file(base, self.cfg.run.editable)
        reason = p.meta.get("invalid") or self._refusal(p.source, tripwire.seeding_calls(base_source))
        if not reason and p.origin in CHECKED_ORIGINS:
            reason = self._twin(p, cid, base_source, self._twins(base, base_source))
        made = None
        if not reason:
            try:
                made = self.repo.commit_candidate(base, p.source, branch, _message(p, cid))
                if base != main:
                    moved = self.repo.rebase_candidate(made.sha, main, branch)
                    if moved.status != RebaseStatus.REBASED:
                        raise PatchError(f"it conflicts with the main line, which moved since {base[:8]}")
                    made = moved.commit
                problem = self.repo.check_change(main, made.sha)
                if problem:
                    raise PatchError(problem)
            except PatchError as e:
                reason = str(e)
        derived = self._effects.pop(cid, None)  # by _twin, against ``base``: the made commit's when on it
        if derived is not None and made is not None and not reason and base == main:
            self._effects[cid] = (made.sha, *derived[1:])
        return self._queue(p, cid, main, made, reason)

    def _refusal(self, source: str, base_seeding: list[str]) -> str | None:
        """Why a proposed editable file is refused before any GPU time is spent on it (None: it may run)."""
        try:
            compile(source, self.cfg.run.editable, "exec")
        except SyntaxError as e:
            return str(e)
        if tripwire.seeding_calls(source) != base_seeding:
            return (f"it changes how {self.cfg.run.editable} seeds its random numbers: the farm hands every "
                    "measurement its own seed (prepare.seed()), and a seed of the candidate's choosing would "
                    "only mine the noise")
        return None

    # ------------------------------------------------------------------ near-duplicates

    def _twins(self, base: str, base_source: str) -> _Twins:
        """What a proposal on ``base`` must not repeat, each naming the first candidate that did: (a) the
        fingerprints of every candidate admitted so far (any base, any state but invalid) and of
        ``base_source`` itself (named ""), (b) the constant moves (see :func:`_moves`) of those on
        ``base`` that change nothing else, and of the queued ones on any base (they move onto the main
        line before they run)."""
        self._refresh()
        label = {cid: f"{cid}, {self._state_of.get(cid, cand.state)}" for cid, cand in self._seen.items()}
        moves: dict[frozenset[tuple[str, str, str]], str] = {}
        for cid, cand in self._seen.items():
            if cand.state != State.INVALID.value and cand.origin != Origin.BASELINE.value and (
                    cand.base == base or self._state_of.get(cid) == State.QUEUED.value):
                changes, only = self._effect(cand)
                if only and changes:
                    moves.setdefault(_moves(changes), label[cid])
        return {fp: label[cid] for fp, cid in self._fps.items()} | {fingerprint(base_source): ""}, moves

    def _twin(self, p: Proposal, cid: str, base_source: str, twins: _Twins | None) -> str | None:
        """Why proposal ``p`` (to be candidate ``cid``) is a near-duplicate, or None; an LLM's, agent's or
        human's only. A sound one joins ``twins``, so the rest of its round cannot repeat it either."""
        if twins is None or p.origin not in CHECKED_ORIGINS:
            return None
        fps, moves = twins
        fp = fingerprint(p.source)
        if fps.get(fp) == "":
            return (f"near-duplicate of its base: only comments or layout of {self.cfg.run.editable} differ, "
                    "so it trains what the base trains")
        if fp in fps:
            return f"near-duplicate of {fps[fp]} (the same {self.cfg.run.editable} up to comments and layout)"
        changes, only = constant_changes(base_source, p.source)
        key = _moves(changes) if only and changes else None
        if key is not None and key in moves:
            return f"near-duplicate of {moves[key]} (same constants to the same values: {_show(changes)})"
        fps[fp] = f"{cid}, proposed with it"
        if key is not None:
            moves[key] = f"{cid}, proposed with it"
        self._effects[cid] = ("", changes, only)  # its commit is filled in once it is made
        return None

    def _effect(self, cand: Candidate) -> tuple[list[dict[str, Any]], bool]:
        """The constants candidate ``cand`` moves from its base's values, as MutateProposer's meta["changes"]
        records them, and whether that is all it changes: the search's own record, else read off its
        editable file and its base's (:func:`proposer.mutate.constant_changes`), once per commit."""
        got = self._effects.get(cand.id)
        if got is not None and got[0] == cand.commit:
            return got[1], got[2]
        changes = cand.meta.get("changes")
        if cand.origin == Origin.MUTATE.value and _well_formed(changes):
            effect: tuple[list[dict[str, Any]], bool] = (changes, True)
        elif not cand.commit or cand.commit == cand.base:  # a main line's own record: it moves nothing
            effect = ([], True)
        else:
            try:
                editable = self.cfg.run.editable
                if cand.base not in self._files:
                    if len(self._files) >= 8:
                        self._files.clear()
                    self._files[cand.base] = self.repo.read_file(cand.base, editable)
                effect = constant_changes(self._files[cand.base], self.repo.read_file(cand.commit, editable))
            except RepoError:  # a commit git no longer has, a file that is not text
                effect = ([], False)
        self._effects[cand.id] = (cand.commit, *effect)
        return effect

    # ------------------------------------------------------------------ humans

    def _read_inbox(self) -> None:
        if time.time() - self._inbox_read < INBOX_S:
            return
        self._inbox_read = time.time()
        for entry in self.store.receive():
            if entry["kind"] == "idea":
                ideas = self.store.ideas()
                ideas.append({"text": entry["text"], "at": entry["at"], "attempts": 0})
                self.store.set_ideas(ideas)
                self.report(f"idea received, for the proposer's next round: {entry['text'][:100]}")
                self.dry = 0  # a proposer out of ideas may have one now
                continue
            main = self.main
            base_source = self.repo.read_file(main, self.cfg.run.editable)
            try:
                source = self.repo.apply_diff(main, entry["text"])
            except PatchError as e:
                source, meta = "", {"invalid": f"the submitted patch does not apply to the main line: {e}"}
            else:
                meta = {}
            description = entry.get("description") or _describe(base_source, source)
            self.admit(Proposal(description=description, source=source, origin=Origin.HUMAN.value, meta=meta))

    def _idea_outcome(self, idea: str | None, accepted: bool) -> None:
        if not idea:
            return
        kept = []
        for i in self.store.ideas():
            if i["text"] != idea:
                kept.append(i)
            elif not accepted and i["attempts"] + 1 < IDEA_ATTEMPTS:
                kept.append(dict(i, attempts=i["attempts"] + 1))
            elif not accepted:
                self.report(f"dropping the idea after {IDEA_ATTEMPTS} failed attempts: {idea[:100]}")
        self.store.set_ideas(kept)

    # ------------------------------------------------------------------ crash repair

    def crashed(self, cand: Candidate, log_tail: str) -> None:
        """A discarded candidate that crashed: ask for one fix, if its proposer marked it repairable."""
        if not (self.cfg.proposer.crash_repair and cand.meta.get("repairable")) or cand.parent:
            return
        if cand.meta.get("repair_requested"):
            return
        self.store.update_candidate(cand.id, meta=dict(cand.meta, repair_requested=True))
        source = self.repo.read_file(cand.commit, self.cfg.run.editable)
        tried = {x.meta.get("fingerprint") for x in self.store.candidates() if x.meta.get("fingerprint")}
        self.proposer.repair(cand.id, dict(cand.meta, candidate=cand.id, description=cand.description,
                                           origin=cand.origin), source, log_tail, tried)
        self.report(f"{cand.id} crashed; asking the proposer for one fix")

    def _collect_repairs(self) -> None:
        for cid, fix, error in self.proposer.repaired():
            if error:
                self.report(f"the repair of {cid} failed: {error}")
            if fix is None:
                continue
            crashed = self.store.get_candidate(cid)
            fix.meta = dict(fix.meta, parent=cid)
            self.admit(fix, base=crashed.base)

    # ------------------------------------------------------------------ history for the proposer

    def main_moved(self, main: str) -> None:
        """A merge: the proposer, out of ideas on the old main line, has new neighbours to try."""
        self.main = self.front = main
        self.dry = 0

    def front_moved(self, front: str) -> None:
        """Proposals go to ``front`` from now on (a new frontier, or back to the main line): new neighbours."""
        if front != self.front:
            self.front, self.dry = front, 0

    def moved(self, cid: str) -> None:
        """The controller moved candidate ``cid`` onto another base: read it again for the history."""
        self._reread.add(cid)

    def _refresh(self) -> dict[str, list[str]]:
        """The candidates as seen brought up to date, incrementally, so it costs Redis a few commands
        plus one read per candidate that changed since, not a read of every candidate so far: new
        candidates (by creation sequence), the ones that left the pending states (judged, stale,
        failed) and the ones the controller moved onto another base are read; the rest are as seen.
        Returns the pending ids by state."""
        new, self._seq = self.store.candidates_after(self._seq)
        fresh = {x.id for x in new}
        self._seen.update((x.id, x) for x in new)
        for x in new:
            if x.state != State.INVALID.value and x.meta.get("fingerprint"):
                self._fps.setdefault(x.meta["fingerprint"], x.id)
        by_state = self.store.ids_by_state(values(PENDING_STATES))
        pending_now = {i for ids in by_state.values() for i in ids}
        left = {i for i in self._pending if i not in pending_now}
        for cand in self.store.get_candidates(sorted((left | self._reread) - fresh)):
            self._seen[cand.id] = cand
        self._reread.clear()
        self._pending = pending_now
        self._state_of = {i: s for s, ids in by_state.items() for i in ids}
        for cid in left | fresh:
            cand = self._seen.get(cid)
            if cand is not None and cid not in self._outcomes:
                outcome = self._outcome(cand)
                if outcome is not None:
                    self._outcomes[cid] = outcome
        return by_state

    def history(self, main: str) -> History:
        """What the proposer sees, kept incrementally (:meth:`_refresh`). ``pending_changes`` lists, in
        the order of ``pending_descriptions``, the constants each pending candidate moves (:meth:`_effect`)."""
        by_state = self._refresh()
        tried = {x.meta.get("fingerprint") for x in self._seen.values() if x.base == main and x.meta.get("fingerprint")}
        meta = self.store.run_meta()
        best = self.measured.line_values(main)
        base = self.measured.line_values(meta.get("baseline", ""))
        described = [i for s in (State.QUEUED.value, State.RUNNING.value, State.FINISHED.value) for i in by_state[s]]
        pending = [self._seen[i] for i in sorted(described, key=_creation) if i in self._seen]
        return History(base_commit=main, base_source=self.repo.read_file(main, self.cfg.run.editable),
                       tried={t for t in tried if t},
                       outcomes=[self._outcomes[i] for i in sorted(self._outcomes, key=_creation)],
                       pending_descriptions=[c.description for c in pending],
                       pending_changes=[self._effect(c)[0] for c in pending],
                       best_bpb=sum(best) / len(best) if best else None,
                       baseline_bpb=sum(base) / len(base) if base else None,
                       ideas=[i["text"] for i in self.store.ideas()])

    def _outcome(self, cand: Candidate) -> Outcome | None:
        """A judged candidate's outcome for the proposer; None for the others."""
        # stale ones are left out: they could not be rebased, which says nothing about their idea
        # (scored as a failure, they punished the very constant a merge had just improved)
        if cand.origin == Origin.BASELINE.value or not cand.decision or cand.state not in (
                State.MERGED.value, State.DISCARDED.value):
            return None
        runs = self.measured.of_candidate(cand)
        status = RunStatus.OK.value if any(r.status == RunStatus.OK.value for r in runs) else (
            runs[-1].status if runs else cand.state)
        tail = next((r.log_tail for r in reversed(runs) if r.status != RunStatus.OK.value), "")
        numbers = cand.decision.get("numbers") or {}
        return Outcome(meta=dict(cand.meta, description=cand.description, candidate=cand.id, log_tail=tail),
                       status=status, delta=numbers.get("delta"), merged=cand.state == State.MERGED.value)


def _message(p: Proposal, cid: str) -> str:
    """The commit message of candidate ``cid`` made from proposal ``p``."""
    return f"{p.description}\n\nFarm-Candidate: {cid}\nFarm-Origin: {p.origin}\n"




def _moves(changes: list[dict[str, Any]]) -> frozenset[tuple[str, str, str]]:
    """The constant moves of a change record, whatever their order: (name, old value, new value)."""
    return frozenset((ch["name"], _value(ch["old"]), _value(ch["new"])) for ch in changes)


def _value(v: Any) -> str:  # a constant's value as it compares: 0.05 and 5e-2 alike, 8 and 8.0 not
    return repr(tuple(v) if isinstance(v, list) else v)


def _show(changes: list[dict[str, Any]]) -> str:
    """``MATRIX_LR 0.04 -> 0.05, ADAM_BETAS (0.8, 0.95) -> (0.9, 0.95)`` (a tuple once, however many
    of its elements moved)."""
    moved = {ch["name"]: f"{ch['name']} {_value(ch['old'])} -> {_value(ch['new'])}" for ch in changes}
    return ", ".join(moved.values())


def _well_formed(changes: Any) -> bool:
    """Whether a meta["changes"] is a list of change records (a test's or a human's may be anything)."""
    return isinstance(changes, list) and all(
        isinstance(ch, dict) and isinstance(ch.get("name"), str) and "old" in ch and "new" in ch
        and isinstance(ch.get("direction", "?"), str) and isinstance(ch.get("index", 0), (int, type(None)))
        for ch in changes)


def _creation(cid: str) -> tuple[int, str]:
    """Sort key of candidate ids in creation order (c0009 < c0010 < c10000)."""
    return len(cid), cid


def _describe(base: str, new: str) -> str:
    return derive_description(base, new) if new else "submitted patch"
