"""Redis: the run's records and queue (:mod:`.store`), their key schema and encoding (:mod:`.keys`),
the Lua scripts that change them atomically (:mod:`.scripts`), and the embedded server (:mod:`.server`)."""

from cluster.store.keys import KEY_TEMPLATES
from cluster.store.store import NotFound, RunExists, Store

__all__ = ["KEY_TEMPLATES", "NotFound", "RunExists", "Store"]
