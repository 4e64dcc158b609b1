"""Layer ``env``: the environment candidate code gets, built from an allow-list minus a deny-list,
so the worker's secrets (API keys, Redis and Ray addresses and credentials) never reach it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

log = logging.getLogger(__name__)

TOKEN_VAR = "AUTORESEARCH_RUN_TOKEN"

#: Names (``fnmatch`` patterns) passed from the worker to candidate code, and why.
DEFAULT_ALLOW: tuple[str, ...] = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",  # basics
    "VIRTUAL_ENV", "LD_LIBRARY_PATH",  # NVIDIA images find libcuda through LD_LIBRARY_PATH
    "CUDA_*", "NVIDIA_*", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",  # Ray sets the GPU here
    "TORCH_*", "TORCHINDUCTOR_*", "PYTORCH_*", "TRITON_*",  # compile caches, allocator config
    "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    "XDG_CACHE_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "UV_CACHE_DIR", "UV_PYTHON_INSTALL_DIR", "UV_PROJECT_ENVIRONMENT", "UV_NO_SYNC",
    "UV_OFFLINE", "UV_FROZEN", "UV_LINK_MODE",  # `uv run train.py`, without index credentials
    "AUTORESEARCH_*",  # the farm's own knobs for train.py
)

#: Never passed on from the worker, even when an allow pattern matches (``extra`` is not filtered).
DENY: tuple[str, ...] = (
    "*_KEY", "*_KEYS", "*API_KEY*", "*_TOKEN", "*_TOKENS", "*SECRET*", "*PASSWORD*", "*PASSWD*",
    "*_CREDENTIALS", "*_AUTH", "AWS_*", "REDIS_*", "RAY_*", TOKEN_VAR,
)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def scrubbed_env(
    extra: Mapping[str, str],
    allow: tuple[str, ...] = DEFAULT_ALLOW,
    *,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for candidate code: ``base`` (default ``os.environ``) filtered through
    ``allow`` minus :data:`DENY`, then ``extra`` on top, unfiltered (the caller's own choice)."""
    src = os.environ if base is None else base
    env = {k: v for k, v in src.items() if _matches(k, allow) and not _matches(k, DENY)}
    for k in extra:
        if _matches(k, DENY):
            log.warning("passing %s to candidate code explicitly, though it looks secret", k)
    env.update(extra)
    return env
