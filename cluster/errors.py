"""The farm's small error hierarchy. Every message says what the user can do about it.

Two errors live with the layer that raises them, below the control plane: a patch that does not
apply (:class:`proposer.patching.PatchError`, re-exported here: the proposers and the repository
raise the same one) and a sandbox layer that is unavailable (:class:`worker.sandbox.SandboxError`).
"""

import shlex
import textwrap
from typing import Any

from proposer.patching import PatchError

__all__ = ["FarmError", "ConfigError", "RepoError", "StoreError", "PatchError", "FencedWrite", "RunFailed"]


class FarmError(Exception):
    """Base class: an error the CLI reports as one clear line (no traceback)."""


class ConfigError(FarmError):
    """A config file or flag is wrong; the message names the key."""


class RepoError(FarmError):
    """The target git repository is missing, dirty in a way that matters, or lacks a file."""


class StoreError(FarmError):
    """Redis is unreachable or holds state this run cannot use."""


class FencedWrite(StoreError):
    """A write from an attempt that is no longer current (a lost worker came back late)."""


class RunFailed(FarmError):
    """The run cannot go on, and no candidate is to blame (the frozen harness's prepare command
    failed on a worker): the run stops at once, its jobs stay queued, and `--resume` continues it
    once the cause is fixed. The message is the whole story (what failed, the tail of its output,
    where its log is); it is shown and recorded in full."""

    @classmethod
    def prepare(cls, err: Any, worker: str, log_file: Any, tag: str) -> "RunFailed":
        """The error for a failed prepare command (``err``: worker.contract.PrepareFailed), its output
        copied to ``log_file``."""
        tail = textwrap.indent(err.tail.rstrip("\n") or "(no output)", "    ")
        return cls(
            f"the prepare command `{shlex.join(err.command)}` failed on worker {worker} ({err.how}), so the run "
            f"stopped: no job can run until the data is prepared. Its output ends:\n{tail}\n"
            f"The whole output: {log_file} (on {err.node}: {err.log_path}). No candidate is blamed: its job "
            f"went back to the queue, as did any still running. Fix the data preparation (the command, run in "
            f"the target repository, shows it), then `autoresearch-farm run --tag {tag} --resume` continues.")


def containment_refusal(missing: list[str], accepted: tuple[str, ...], why: str, where: str = "here") -> str | None:
    """Why a farm must not start whose runs ``where`` would lack the ``missing`` layers that
    train.accept_missing (``accepted``) does not name, with what to do; None when nothing is refused."""
    refused = [k for k in missing if k not in accepted]
    if not refused:
        return None
    return (f"containment: runs {where} would lack {' and '.join(refused)} ({why or 'not available'}); a candidate "
            f"could then read what the worker's user can (its credentials, the farm's Redis). Run the farm as root "
            f"of the host or as an unprivileged user with user namespaces, or accept it: "
            f"train.accept_missing = {list(refused)!r}".replace("'", '"'))
