"""The target repository, seen through git plumbing: the farm never touches the working tree.

:mod:`.view` is the FarmRepo; :mod:`.branches` names a run's branches, :mod:`.merge` is the 3-way
line merge, :mod:`.objects` and :mod:`.changes` read and write git objects and output without a
repository.
"""

from cluster.repo.branches import CANDIDATE_PREFIX, MAIN_PREFIX, candidate_branch, candidate_prefix, main_branch
from cluster.repo.merge import merge_lines
from cluster.repo.view import CandidateCommit, FarmRepo, RebaseOutcome, RebaseStatus

__all__ = ["CANDIDATE_PREFIX", "MAIN_PREFIX", "CandidateCommit", "FarmRepo", "RebaseOutcome", "RebaseStatus",
           "candidate_branch", "candidate_prefix", "main_branch", "merge_lines"]
