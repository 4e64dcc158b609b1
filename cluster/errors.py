"""The farm's small error hierarchy. Every message says what the user can do about it."""


class FarmError(Exception):
    """Base class: an error the CLI reports as one clear line (no traceback)."""


class ConfigError(FarmError):
    """A config file or flag is wrong; the message names the key."""


class RepoError(FarmError):
    """The target git repository is missing, dirty in a way that matters, or lacks a file."""


class StoreError(FarmError):
    """Redis is unreachable or holds state this run cannot use."""


class PatchError(FarmError):
    """A proposed patch does not apply, touches a frozen file, or does not compile."""


class FencedWrite(StoreError):
    """A write from an attempt that is no longer current (a lost worker came back late)."""
