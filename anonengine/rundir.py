"""The run folder: where an engine keeps its sockets and lock files, a folder only its owner can enter.

Every socket of an engine (control, the stages' inboxes, the ipc tap) is a file in `<run dir>/<instance>/`,
so whoever can enter the run folder can talk to the engine. It is made mode 0700 in one step (no window
between a mkdir and a chmod), and a folder already there is used only if it is a real folder of this user
that nobody else may enter: one made by someone else first (in /tmp anyone can) is refused, not trusted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from anonengine.errors import ConfigError

ROOT_RUN_DIR = Path("/run/anonengine")


def default_run_dir() -> Path:
    """`$XDG_RUNTIME_DIR/anonengine` (the session's own runtime folder), `/run/anonengine` for root, else
    `/tmp/anonengine-<uid>`."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "anonengine"
    uid = os.geteuid()
    return ROOT_RUN_DIR if uid == 0 else Path(f"/tmp/anonengine-{uid}")


def run_dir_path(configured: str | os.PathLike | None) -> Path:
    """The run folder `engine.run_dir` (or `--run-dir`) names; '' or None: the default one."""
    return Path(configured) if configured else default_run_dir()


def private_dir(path: str | os.PathLike) -> Path:
    """Makes `path` mode 0700 at once, or checks that the folder there is as safe (`check_private_dir`).

    Its parent is made as any folder is, if missing (/run, say, or the folder a config names)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
        return path
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {path}: {exc.strerror}") from None
    check_private_dir(path)
    return path


def check_private_dir(path: str | os.PathLike) -> None:
    """Raises a one-line ConfigError unless `path` is a real folder (not a link) of this user, closed to
    group and others."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cannot use the run folder {path}: {exc.strerror}") from None
    problem = _unsafe(info)
    if problem:
        raise ConfigError(f"refusing the run folder {path}: {problem}")


def _unsafe(info: os.stat_result) -> str | None:
    """Why a folder with this lstat may not hold an engine's sockets; None when it may."""
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link (remove it, or set engine.run_dir to a folder of your own)"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    if info.st_uid != os.geteuid():
        return (f"it belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}); remove it or set "
                "engine.run_dir to a folder of your own")
    if info.st_mode & 0o077:
        return f"other users may enter it (mode {stat.S_IMODE(info.st_mode):o}); chmod 700 it"
    return None
