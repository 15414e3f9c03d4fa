"""SIGINT, SIGTERM and SIGHUP as one request to stop, for the processes a user runs (`anonengine run`).

Outside a frame loop a signal stops the process at once (`Interrupted`, like KeyboardInterrupt but for
every stop signal). Inside `deferred()` it is only noted: the loop looks at `requested` between frames,
so a frame is never left half written, and a live source can end its output cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

from anonengine.paths import partial_metadata_path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
REDELIVER_S = 0.001


def answered_stop_signals() -> list[int]:
    """The stop signals this process answers: not those it was started with ignored, which it keeps so.

    Whoever started it asked for that: `nohup` ignores SIGHUP, for a run that outlives its terminal; a shell
    without job control ignores SIGINT in its background jobs, for a Ctrl-C meant for the script in front.
    A handler put over that (every run did) stopped a nohup'd run as its terminal closed, and answered a
    Ctrl-C only once its handler came, 1 s in: one during the imports was lost, and the run went on."""
    return [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]


class Interrupted(BaseException):
    """The process was asked to stop by `signum`; exits with 128 + signum, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class Interrupts:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.raised: int | None = None  # the last signal raised as `Interrupted`, wherever it landed
        self._deferring = 0

    def install(self) -> None:
        for sig in answered_stop_signals():
            signal.signal(sig, self._on_signal)
        if sys.unraisablehook != self._on_unraisable:
            self._unraisable_before = sys.unraisablehook
            sys.unraisablehook = self._on_unraisable

    def _on_unraisable(self, unraisable) -> None:
        # A signal that comes while Python runs a callback it cannot raise from (an import lock's weakref
        # callback: a Ctrl-C 0.3 s into `anonengine run`, 1 run in about 40) was printed as an ignored
        # exception's traceback, and lost. It is sent again, a moment later and from another thread (sent
        # from here, its handler would run in this hook), to stop the process where it can.
        if isinstance(unraisable.exc_value, Interrupted):
            threading.Timer(REDELIVER_S, os.kill, (os.getpid(), unraisable.exc_value.signum)).start()
            return
        self._unraisable_before(unraisable)

    def _on_signal(self, signum: int, _frame) -> None:
        if self._deferring and self.signum is None:
            self.signum = signum
            return
        self.raised = signum
        raise Interrupted(signum)  # outside a frame loop, or a second signal: stop now

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextmanager
    def deferred(self):
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1


INTERRUPTS = Interrupts()


def interrupted_line(signum: int, frames: int, total: int, partial: str | os.PathLike | None,
                     metadata: str | os.PathLike | None = None) -> str:
    """The one line of a job stopped by a signal before the end of its file: how far it got, and where (its
    metadata's partial file too, when it asked for one and it was written)."""
    of = f" of {total}" if total else ""
    kept = ""
    if partial and frames:
        lines = partial_metadata_path(metadata) if metadata else None
        records = f", their metadata in {lines}" if lines is not None and lines.exists() else ""
        kept = f"; they are in {partial} (playable; the full output was not written){records}"
    return f"anonengine: interrupted by {signal.Signals(signum).name} after {plural(frames, 'frame', of)}{kept}"


def plural(count: int, noun: str, between: str = "") -> str:
    """`1 frame`, `2 frames` (`between`: words after the count, `1 of 3 frames`)."""
    return f"{count}{between} {noun}{'' if count == 1 and not between else 's'}"


def exit_process(code: int) -> None:
    """Ends the process once its work returned: everything it held is closed by then, and skipping the
    interpreter's teardown (PyTorch, OpenVINO: a second or two, five on a loaded machine) lets a stop end
    sooner."""
    logging.shutdown()
    multiprocessing_util = sys.modules.get("multiprocessing.util")
    if multiprocessing_util is not None:
        # os._exit skips multiprocessing's exit handler, whose finalizers remove the folder it made in /tmp
        # for the fork server's socket (`engine.stagehost`): one was left behind by every command. They run
        # here without the handler's join of child processes. A forked stage's list is its own (cleared at
        # its start), so a stage never removes its launcher's folder. (`_run_finalizers` is private: the
        # standard library offers no public way to run them.)
        multiprocessing_util._run_finalizers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
