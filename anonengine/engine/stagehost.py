"""Stage processes forked from one interpreter that has imported what every stage imports.

Each stage started as `python -m services.X` imported NumPy, OpenCV, PyAV, ZeroMQ, pydantic and the
library on its own: 0.6 s of CPU each, four at once on two cores, before any of them could look at a
frame. Here the standard library's fork server (`multiprocessing`, start method "forkserver") imports
them once, while the launcher checks the inputs, and forks each stage from there: a stage starts with
its imports done, and a restarted stage too. Only modules that start no threads when imported are
preloaded, since a fork keeps the calling thread alone; what one stage alone needs (OpenVINO for the
detector, the tracker for the compositor) it imports itself.

A forked stage runs exactly as `python -m services.X ...` would (same argv, environment, folder, its own
session, stdin from /dev/null); the launcher handles it through `ForkedStage`, which answers as the
`subprocess.Popen` it used to get. Its parent is the fork server, which ends when the launcher does
(the standard library sees to that): a stage follows its parent, so it ends with the launcher as before
(`runtime.Parent`). Should the fork server die alone, the launcher is told 255 of each of its stages: each
leaves at once, as a crashed stage would, and is started again through a new server.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import select
import signal
import subprocess
import sys
import threading

from anonengine.interrupts import STOP_SIGNALS

log = logging.getLogger(__name__)

KILL_WAIT_S = 5.0  # a SIGKILL takes effect at once; past this the process is stuck in the kernel

# What `python -m services.X` imports for every stage, none of which starts a thread on import.
PRELOAD = ["numpy", "cv2", "av", "zmq", "msgpack", "yaml", "pydantic", "anonengine.config", "anonengine.messages",
           "anonengine.engine.runtime", "anonengine.stages", "anonengine.shm"]  # fmt: skip


def available() -> bool:
    return sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods()


_started_here = False  # the fork server was started by this process's main thread, its stop signals ignored


def warm_up() -> None:
    """Starts the fork server now (its imports take a while), where it will be used; idempotent."""
    global _started_here
    if not available() or _started_here:
        # Started: nothing to do. (Its signals were ignored for it at each stage's start: a stop signal that came
        # meanwhile went to another of the launcher's threads, which do not block it, and was ignored: a Ctrl-C 1.2 s
        # into `anonengine run`, 1 run in about 20, was lost and the whole file anonymized.)
        return
    multiprocessing.set_forkserver_preload(PRELOAD)
    if threading.current_thread() is not threading.main_thread():
        multiprocessing.forkserver.ensure_running()
        return
    # The server runs in the launcher's process group, so a stop sent to the group reaches it too: Ctrl-C in
    # a terminal (SIGINT), `timeout`, `kill -- -PGID` or a service manager (SIGTERM, SIGHUP). It must outlive
    # them: the launcher stops the stages in order, and a server killed by the signal took every stage with
    # it (the launcher heard 255 of each, and a file's frames done so far were lost). It starts with them
    # ignored (an ignored signal stays so across the exec; a blocked one did not) and ends with the launcher
    # (the standard library sees to that). Meanwhile the launcher's own are blocked, not lost: they stay
    # pending, and come once its handlers are back.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        multiprocessing.forkserver.ensure_running()
        _started_here = True
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class StageHost:
    """Starts stage processes, each forked from the fork server (`warm_up` starts it early)."""

    def __init__(self, project_root: str) -> None:
        self.project_root = project_root
        self.context = multiprocessing.get_context("forkserver")

    def __call__(self, argv: list[str], env: dict[str, str], cwd: str, stdin=None,
                 start_new_session: bool = True) -> ForkedStage:
        """A stage started from `argv` (`[python, "-m", "services.X", args...]`), as subprocess.Popen would."""
        if argv[1:2] != ["-m"]:
            raise ValueError(f"a stage is started as python -m <module>, not {argv}")
        module, args = argv[2], argv[3:]
        process = self.context.Process(target=run_stage, args=(module, args, env, cwd, self.project_root),
                                       name=module, daemon=False)
        try:
            warm_up()  # at once when the caller did not warm it up
            process.start()
        except (OSError, EOFError) as exc:  # the fork server is broken: the stage starts as a program
            log.warning("cannot start %s through the fork server (%s); starting it as its own program", module, exc)
            return subprocess.Popen(argv, env=env, cwd=cwd, stdin=stdin, start_new_session=start_new_session)
        return ForkedStage(process)


class ForkedStage:
    """A forked stage, with the part of subprocess.Popen's interface the launcher uses.

    Signals go through a pidfd: once the fork server has reaped a stage its pid may be another process's,
    and a stop must never reach that one."""

    def __init__(self, process: multiprocessing.Process) -> None:
        self.process = process
        self.pid = process.pid
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # exited already (or no pidfd): signals are skipped once it has
            self.pidfd = None

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        code = self.process.exitcode
        if code is not None and self.pidfd is not None:
            # The server tells what it reaped; if it died itself, it tells 255 of stages that may still run
            # (leaving on its death's SIGTERM): such a stage is gone for good before a successor starts, or
            # two captures of a camera would run, two encoders write one output.
            if not exited(self.pidfd):
                try:
                    signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                exited(self.pidfd, timeout=KILL_WAIT_S)
            os.close(self.pidfd)
            self.pidfd = None
        return code

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(self.process.name, timeout)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None and self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def exited(pidfd: int, timeout: float = 0.0) -> bool:
    """Whether the process is gone (its pidfd turns readable), waiting up to `timeout` seconds."""
    return bool(select.select([pidfd], [], [], timeout)[0])


def run_stage(module: str, args: list[str], env: dict[str, str], cwd: str, project_root: str) -> None:
    """In the forked child: becomes `python -m module args` with the launcher's environment for it."""
    os.setsid()  # Ctrl-C in a terminal reaches the launcher alone, which stops the stages in order
    # Ignored by the fork server (warm_up): a stage answers them as `python -m services.X` would.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    # The server may hand its stages these blocked: it is started while the launcher holds them so (`warm_up`),
    # and a signal mask passes to it and on to every child. Seen: SIGHUP blocked in every stage, and all three
    # in the stages of a server started again after one died, whose stop never came (the launcher waited 20 s
    # for each, then killed it).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    # The fork server lives on while any process holds its "alive" pipe, which it hands to every child so
    # that the child may start processes through it too. A stage does not; holding it would keep the server
    # (the stage's parent, which the stage follows) alive after the launcher died, and the stage with it.
    # (`_forkserver_alive_fd` is private: the standard library gives no other way to let go of it.)
    server = multiprocessing.forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    multiprocessing.set_start_method(None, force=True)  # what the stage's libraries start is as it would be
    title(["python", "-m", module, *args])  # what `ps` and `pgrep -f` showed of a stage, until it names itself
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # As PYTHONSAFEPATH would: services/ comes from the project, never from a same-named folder where the
    # user stands.
    sys.path[:] = [project_root] + [p for p in sys.path if p not in ("", ".", cwd, project_root)]
    sys.stdout.reconfigure(write_through=True)  # as PYTHONUNBUFFERED
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    sys.exit(0)  # a module run as __main__ leaves through exit_process; one that returns did its work


def title(words: list[str]) -> None:
    """The process's title (setproctitle, when installed), set before the environment is replaced: once it
    is, setproctitle no longer finds the memory the title goes in."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(" ".join(words))
