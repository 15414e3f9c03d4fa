"""One owner at a time for an output file or an engine instance: advisory locks (flock) on a lock file.

The kernel drops a lock when its process dies, however it dies, so a crashed writer never blocks the
next run. The lock file holds the owner's pid, for the error message only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from anonengine.paths import working_name


class LockBusy(Exception):
    """Someone else holds the lock; `pid` is theirs when known."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is held by pid {pid}" if pid else f"{path} is held")
        self.path, self.pid = path, pid

    @property
    def owner(self) -> str:
        """" (pid N)" when the holder is known, for one-line errors."""
        return f" (pid {self.pid})" if self.pid else ""


class FileLock:
    """An exclusive, non-blocking lock on `path` (created 0600); released by `release` or the process's end."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise LockBusy(self.path, pid) from None
            # The previous owner may have removed the file between our open and our lock: then we hold a
            # lock on a name nobody else can find. Start again on the file that is there now.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Removes the lock file, then lets go (in that order, so a waiting process re-checks the name)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(path: str | os.PathLike) -> bool:
    """True while some process holds the lock at `path` (a probe: takes and drops it when free)."""
    return holder(path) is not None


def holder(path: str | os.PathLike) -> LockBusy | None:
    """Who holds the lock at `path` (LockBusy, with their pid where the file tells it), or None where no one does:
    a probe that takes nothing and makes no file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return LockBusy(Path(path), _read_pid(fd))
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (another user's counts: it is there, though not ours to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def output_lock_path(output: str | os.PathLike) -> Path:
    """The lock of an output file: a hidden file beside it (`.NAME.lock`)."""
    path = Path(output)
    return path.with_name(working_name(".", path.name, ".lock"))


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
