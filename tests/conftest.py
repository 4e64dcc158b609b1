"""Shared test set-up.

Ray binds its ports on every interface, so the suite is meant to run in a private network
namespace (the README's test command: `unshare -rn sh -c 'ip link set lo up && python -m pytest'`),
which keeps Ray on loopback and the tests off the network. Ray's token auth is on by default in
Ray 2.60: the tests turn it off explicitly, inside that private namespace.
"""

import os
import socket
import warnings
from pathlib import Path

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
