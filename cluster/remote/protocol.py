"""What the driver side (`cluster/remote/client.py`, in the user's clone) and the head side
(`cluster/head.py`, in the farm's jobs) agree on: the head's home, its Redis port, where the
shipped files land, the job metadata, which commands a look may run, and how an answer travels
back in a job's log (base64 JSON between two marker lines).

The head's home (`--home` of every `python -m cluster.head` command; default `~/autoresearch-farm`,
expanded on the head) holds everything durable, outside any job::

    redis/              the farm's Redis: AOF on, requirepass, started by head_start_ray_commands
    repos/<id>.git      a bare repository per project (<id>: its root commit), holding every run's
                        main line and candidate branches (and refs/farm/submitted/<tag>)
    repos/<id>.runs/<tag>   the run's git worktree at the submitted commit (its `--repo`)
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from cluster.errors import FarmError

DEFAULT_HOME = "~/autoresearch-farm"  # the head's home unless --home names another
REDIS_PORT = 6390  # not 6379: that is Ray's GCS port on the head
SUBMIT_DIR = ".farm-submit"  # the shipped working_dir's folder for the bundle and the shipped files
BEGIN, END = "----- autoresearch-farm payload begin -----", "----- autoresearch-farm payload end -----"
META = "autoresearch_farm"  # metadata key prefix of the farm's jobs
# what `remote_cli` may run on the head (submit: a patch or idea; dashboard: only its --snapshot)
QUERY_COMMANDS = ("status", "results", "submit", "dashboard")


def git(repo: Path | str, *args: str, check: bool = True) -> str:
    """`git ARGS` in `repo`, its stdout stripped; a failure (with `check`) is a FarmError."""
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if check and out.returncode:
        raise FarmError(f"git {' '.join(args[:3])} failed in {repo}: {out.stderr.strip() or out.returncode}")
    return out.stdout.strip()


def checked_name(what: str, value: str) -> str:
    """Tags and ids become git refs and paths on the head: letters, digits, `_.-` only."""
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", value or ""):
        raise FarmError(f"{what} {value!r} must be 1-64 letters, digits, '_', '.' or '-' (not starting with '.')")
    return value


def flag_value(args: list[str], name: str) -> str | None:
    """The value of option `name` in an argument list (`--name VALUE` or `--name=VALUE`), else None."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def format_payload(payload: dict[str, Any]) -> str:
    """The payload as the head prints it: base64 JSON in lines of 76 between BEGIN and END (immune to
    whatever else the job logs)."""
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    return BEGIN + "\n" + "\n".join(data[i:i + 76] for i in range(0, len(data), 76)) + "\n" + END + "\n"


def parse_payload(logs: str) -> Any:
    """The last payload printed in a job's log; None if the log holds none."""
    if BEGIN not in logs or END not in logs:
        return None
    body = logs.rsplit(BEGIN, 1)[1].split(END, 1)[0]
    return json.loads(base64.b64decode("".join(body.split())))
