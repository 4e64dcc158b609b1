"""Shared test set-up, for the suite's layers: policy/ (pure functions of recorded state),
store/ (a real redis-server), worker/ and parts/ (one part on real processes, git repositories
and servers), farm/ (the whole farm on a local Ray). Fixtures shared by several files live here.

Ray binds its ports on every interface, so the suite is meant to run in a private network
namespace (the README's test command: `python -m tests`, see tests/__main__.py),
which keeps Ray on loopback and the tests off the network. Ray's token auth is on by default in
Ray 2.60: the tests turn it off explicitly, inside that private namespace.
"""

import os
import socket
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _interfaces() -> list[str]:
    """Interfaces of this process's network namespace (/sys/class/net would show the host's)."""
    return sorted(name for _, name in socket.if_nameindex())


def pytest_configure(config):
    extra = [i for i in _interfaces() if i != "lo"]
    if extra:
        msg = (f"the tests are not in a private network namespace (interfaces: {', '.join(extra)}); "
               "Ray will listen on them. Use the README's test command.")
        if os.environ.get("CI"):
            raise SystemExit(msg)
        warnings.warn(msg)


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the suite's farm tests: 4 CPUs and 4 logical GPUs (no real GPU is used)."""
    import ray

    from cluster.actors import placement

    ray.init(num_cpus=4, num_gpus=4, include_dashboard=False, namespace=placement.NAMESPACE, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def repo(tmp_path):
    """A target repository with the scripted training command (tests/farmkit.py), at tmp_path/target."""
    from tests.farmkit import make_repo

    return make_repo(tmp_path / "target")


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory):
    """A client of a real redis-server (embedded) of this test module's own."""
    from cluster.store.server import EmbeddedRedis, connect

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        r = connect(server.start(), retry_seconds=5)
        yield r
        r.close()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def agent_clis():
    """The real coding-agent CLIs (opencode, codex; npm, pinned in tests/agentkit.py), installed
    beforehand by `python -m tests.agentkit install` (.ci/run does it before the tests go offline).
    Absent: skipped, naming that command; in CI (CI set) absent is a failure, never a silent skip."""
    from tests import agentkit

    clis, why = agentkit.find_clis()
    if clis is None:
        msg = f"the coding-agent CLIs are not installed ({why}); install them with `{agentkit.INSTALL_COMMAND}`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return clis
