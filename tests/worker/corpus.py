"""A small prepared corpus for worker tests that run the farm's harness on real CPU training."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KNOBS = {"AUTORESEARCH_PROFILE": "cpu", "AUTORESEARCH_DEVICE": "cpu", "AUTORESEARCH_VOCAB_SIZE": "512",
         "AUTORESEARCH_SEQ_LEN": "128", "OMP_NUM_THREADS": "1"}


def small_cache(tmp: Path) -> Path:
    """Prepare 80 stdlib files at vocab 512 (KNOBS) into ``tmp/cache``, a workers' data cache."""
    src = tmp / "corpus"
    src.mkdir()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:80]:
        shutil.copy(path, src / path.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(KNOBS, AUTORESEARCH_CACHE=str(tmp / "cache"))
    out = subprocess.run([sys.executable, "prepare.py", "--source", str(src)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return tmp / "cache"
