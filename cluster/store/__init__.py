"""Redis: the run's records and queue (:mod:`.store`), and the embedded server (:mod:`.server`)."""

from cluster.store.store import KEY_TEMPLATES, NotFound, RunExists, Store

__all__ = ["KEY_TEMPLATES", "NotFound", "RunExists", "Store"]
