"""The exceptions lifelong raises, all rooted in :class:`LifelongError`.

Each subclass is also the builtin a caller would expect, so ``except ValueError``
keeps working for code that does not know about lifelong.
"""

from __future__ import annotations


class LifelongError(Exception):
    """Base class of every error lifelong raises on purpose."""


class ConfigError(LifelongError, ValueError):
    """The configuration is invalid; the message names the offending key."""


class StateError(LifelongError, RuntimeError):
    """The durable state directory cannot be used as it is (corrupt, locked, newer format)."""


class StateInUse(StateError):
    """Another process holds the state directory (or the registry's lock); the message names it."""


class StateMismatch(StateError):
    """Parts of the state come from different state directories; the message says which to move aside."""


class UnsupportedFormat(StateError):
    """A state file is in a format this lifelong does not read (newer: upgrade; older: move it aside)."""


class SettingsChanged(StateError):
    """Saved state was made with settings the configuration no longer has; the message names the key."""


class StateDamaged(StateError):
    """A state file failed an integrity check; the message names it and what to do."""


class DiskFull(StateError):
    """The state directory has no space left; what was committed before is kept."""


class MissingExtraError(LifelongError, ImportError):
    """An optional part is not installed; the message says what to install."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(f"{module!r} is not installed: run pip install 'lifelong[{extra}]'")
        self.extra = extra
        self.module = module


class VersionNotFoundError(LifelongError, LookupError):
    """No model version has the number asked for; the message names it."""


class NotReady(LifelongError):
    """The daemon cannot do this yet (it is starting); try again in a moment."""


class NothingToRollBack(LifelongError):
    """A rollback has no version to go to (none promoted, the target never served or is gone)."""


class LearningDisabled(LifelongError):
    """Learning is off (``[learner] enabled = false``): there are no model versions."""


class RoundDeferred(LifelongError):
    """A round the gate could not judge (too few held-out samples): nothing recorded, its labels wait."""


class RoundAbandoned(LifelongError, RuntimeError):
    """An update round was stopped before it finished (shutdown); nothing of it was recorded."""
