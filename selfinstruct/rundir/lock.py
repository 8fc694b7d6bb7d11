"""One process per run dir: an exclusive `flock` on a lock file in it. The kernel drops the lock
when the process dies, however it dies, so a killed run never leaves a stale lock behind; the file
itself stays and holds the pid of the last holder for the message a second process prints."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from selfinstruct.errors import RunError

LOCK_NAME = ".selfinstruct.lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunError(f"{self.path.parent} is in use by another selfinstruct process (pid {holder}); "
                           "wait for it to end, stop it, or choose another hydra.run.dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
