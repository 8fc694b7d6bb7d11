"""How a run ends when something outside the code goes wrong: one line that says what happened and
what to do, in the terminal and in run.log, and a non-zero exit; never a traceback. What was
committed stays, so the same command resumes once the cause is fixed."""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
from typing import Iterator

from selfinstruct.errors import SelfInstructError

log = logging.getLogger("selfinstruct")

RESUME = "rerun the same command to resume"


def describe(error: BaseException) -> str | None:
    """The one line for an error a user can act on, or None for a bug (which keeps its traceback)."""
    if isinstance(error, SelfInstructError):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return f"interrupted; {RESUME}"
    if isinstance(error, OSError):
        where = error.filename or "a file"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"disk full while writing {where}: free some space, then {RESUME}"
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return (f"cannot write {where} ({error.strerror}): the run dir must be writable; "
                    "choose another with hydra.run.dir=PATH")
    return None


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, a scheduler) ends the run as Ctrl-C does


@contextlib.contextmanager
def exit_cleanly(enabled: bool = True) -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except BaseException as e:  # noqa: BLE001 - sorted out by describe
        message = describe(e) if enabled else None
        if message is None:
            raise
        _to_log_files(message)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(130 if isinstance(e, KeyboardInterrupt) else 1) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _to_log_files(message: str) -> None:
    """The line goes to run.log too, but only once to the terminal (not also as a log line)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            with contextlib.suppress(Exception):
                handler.handle(record)


def preflight(argv: list[str]) -> None:
    """Before Hydra writes anything: the run dir (hydra.run.dir=..., else the working directory,
    under which Hydra puts outputs/) must be writable, or the run ends with one line instead of
    Hydra's traceback."""
    import os
    import tempfile

    target = next((a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("hydra.run.dir=")), ".")
    try:
        os.makedirs(target, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as e:
        print(f"error: cannot write to the run dir {target} ({e.strerror or e}); choose another with "
              "hydra.run.dir=PATH", file=sys.stderr)
        raise SystemExit(1) from None
