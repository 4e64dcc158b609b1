"""`python -m tests [pytest args]`: the suite, in a private network namespace with only loopback up.

Ray binds its ports on every interface, so the tests run where no other interface exists. Root of
the host gets a network namespace alone (`unshare -n`), so the sandbox can run candidates as an
unprivileged uid as it does on a GPU node; any other user gets one inside a user namespace of its
own (`unshare -rn`), where runs are that user. Root inside `unshare -rn` would be neither: the
sandbox's `unprivileged` layer cannot be had there (docs/TRUST.md).
"""

import os
import sys

from worker.sandbox.view import outer_uid

if __name__ == "__main__":
    flags = "-n" if os.geteuid() == 0 and outer_uid(0) == 0 else "-rn"
    script = 'ip link set lo up && exec "$0" -m pytest "$@"'
    os.execvp("unshare", ["unshare", flags, "sh", "-c", script, sys.executable, *sys.argv[1:]])
