"""The target repository, seen through git plumbing: the farm never touches the working tree."""

from cluster.repo.view import (CandidateCommit, FarmRepo, RebaseOutcome, RebaseStatus, candidate_branch, main_branch,
                               merge_lines)

__all__ = ["CandidateCommit", "FarmRepo", "RebaseOutcome", "RebaseStatus", "candidate_branch", "main_branch",
           "merge_lines"]
