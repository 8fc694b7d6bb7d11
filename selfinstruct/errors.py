"""The project's errors. Each ends a run with one line naming what went wrong and what to do (run.py
prints it and exits non-zero, with no traceback); the partial, resumable state of the run stays."""


class SelfInstructError(Exception):
    """Base of the errors a user can act on."""


class ConfigError(SelfInstructError, ValueError):
    """A bad configuration value; the message names the key."""


class DataError(SelfInstructError, ValueError):
    """Malformed input data; the message names the file and line."""


class RunError(SelfInstructError, RuntimeError):
    """An operational failure: the run dir is in use or not ours, the model is unreachable, every
    request failed, nothing was produced. The message says what happened and how to go on."""
