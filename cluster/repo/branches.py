"""The branch names of a run, built only here.

* ``autoresearch/<tag>`` (:func:`main_branch`): the main line of run ``<tag>``; it starts at the
  repository's current commit and only ever fast-forwards to a winning candidate.
* ``candidates/<tag>/<id>`` (:func:`candidate_branch`, e.g. ``candidates/nov25/c0007``): one
  candidate, a single commit on top of a main-line commit that changes only the editable file.
  :func:`candidate_prefix` is the folder of a run's candidate branches, ``candidates/<tag>/``.
"""

from __future__ import annotations

MAIN_PREFIX = "autoresearch"
CANDIDATE_PREFIX = "candidates"


def main_branch(tag: str) -> str:
    """Branch name of run ``tag``'s main line."""
    return f"{MAIN_PREFIX}/{tag}"


def candidate_prefix(tag: str) -> str:
    """The folder of run ``tag``'s candidate branches, ``candidates/<tag>/`` (trailing slash)."""
    return f"{CANDIDATE_PREFIX}/{tag}/"


def candidate_branch(tag: str, cid: str) -> str:
    """Branch name of candidate ``cid`` of run ``tag``."""
    return f"{CANDIDATE_PREFIX}/{tag}/{cid}"
