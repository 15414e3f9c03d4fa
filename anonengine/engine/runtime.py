"""What every engine process shares: its endpoints, its start-up, its loop and its shutdown.

A service is a small class with `setup`, `step` and `close`. `run_service` gives each the same life:
process title, faulthandler, logging that names stage and camera, SIGTERM/SIGINT asking it to drain,
and `close` in `finally`.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import zmq

from anonengine import messages
from anonengine.argparsing import OneLineParser, log_level_from_env, redact_logs
from anonengine.config import AUTO_TAP, EngineConfig, TapConfig, load_yaml
from anonengine.curve import CurveServer, curve_clients_folder
from anonengine.engine.stagehost import exited
from anonengine.errors import AnonError, OutputError, StartAfresh
from anonengine.interrupts import INTERRUPTS, STOP_SIGNALS, Interrupted
from anonengine.locks import FileLock, LockBusy
from anonengine.rundir import private_dir, run_dir_path

POLL_MS = 100
_own_run: str | None = None  # `run_id` where no launcher names the run
PR_SET_PDEATHSIG = 1  # linux/prctl.h
TAP_SOCKET_BUFFER = 256 * 1024  # a tap's kernel buffer: small, so the high-water mark is what bounds a backlog


class Endpoints:
    """Local (ipc) endpoints of one engine instance; the binding side is named in each comment."""

    def __init__(self, run_dir: str, instance: str, composite_workers: int = 1) -> None:
        self.run_dir = run_dir_path(run_dir)  # '' = the default, owner-only folder
        self.dir = self.run_dir / instance
        self.composite_workers = composite_workers

    def _ipc(self, name: str) -> str:
        return f"ipc://{self.dir / name}.sock"

    def frames(self, camera: str) -> str:  # capture binds PUSH of FrameRef; detectors connect PULL
        return self._ipc(f"frames-{camera}")

    def capture(self, camera: str) -> str:  # capture binds PULL of Release
        return self._ipc(f"capture-{camera}")

    def composite(self, worker: int) -> str:  # compositor binds PULL of StreamInfoMsg, StreamEnd, Detected, Release
        return self._ipc(f"composite-{worker}")

    def encode(self, worker: int) -> str:  # encoder binds PULL of StreamInfoMsg, OutFrame, StreamEnd
        return self._ipc(f"encode-{worker}")

    @property
    def tap(self) -> str:  # the automatic tap (tap.endpoint: ipc): the encoder, or the launcher's relay, binds XPUB
        return self._ipc("tap")

    @property
    def tap_clients(self) -> Path:  # public keys a CURVE tap lets in beside tap.curve_clients (the launcher's own)
        return self.dir / "tap-clients"

    def tap_endpoint(self, tap: TapConfig) -> str:
        """Where the tap of this instance is: tap.endpoint, with `ipc` meaning its own socket; '' = off."""
        return self.tap if tap.endpoint == AUTO_TAP else tap.endpoint

    @property
    def tap_relay(self) -> str:  # launcher binds XSUB, when several encoders publish to one tap
        return self._ipc("tap-relay")

    @property
    def events(self) -> str:  # launcher binds PULL of CameraDone, Stats
        return self._ipc("events")

    @property
    def control(self) -> str:  # launcher binds REP for attach/detach
        return self._ipc("control")

    def frame_cameras(self) -> list[str]:
        """Cameras whose capture has bound its frames endpoint."""
        return sorted(p.name[len("frames-") : -len(".sock")] for p in self.dir.glob("frames-*.sock"))


class ToCompositors:
    """A PUSH socket to every composite worker: a frame's messages go to the worker its `FrameRef` names."""

    def __init__(self, service: Service) -> None:
        endpoints = service.endpoints
        self.sockets = [service.socket(zmq.PUSH, endpoints.composite(w)) for w in range(endpoints.composite_workers)]

    def send(self, worker: int, message, block: bool = True) -> bool:
        return send(self.sockets[worker], message, block)


def run_id() -> str:
    """The run this process is part of: the launcher's (ANONENGINE_RUN_ID, given to every stage it starts and restarts),
    or this process's own where no launcher started it (a Procfile's stages: honcho restarts none of them)."""
    global _own_run
    launched = os.environ.get("ANONENGINE_RUN_ID")
    if launched:
        return launched
    if _own_run is None:
        _own_run = uuid.uuid4().hex
    return _own_run


class Service:
    """Base of the engine's processes. Subclasses set `stage` and implement setup/step/close."""

    stage = "service"

    def __init__(self, cfg: EngineConfig, instance: str, camera: str = "-") -> None:
        self.cfg, self.instance, self.camera = cfg, instance, camera
        self.endpoints = Endpoints(cfg.engine.run_dir, instance, cfg.engine.composite_workers)
        self.context = zmq.Context()
        self.stopping = False
        self.log = logging.getLogger(f"anonengine.{self.stage}")
        self.counters: dict[str, int] = {}
        self.camera_counters: dict[str, dict[str, int]] = {}
        self.histograms: dict[str, messages.Histogram] = {}
        self._events: zmq.Socket | None = None
        self._last_stats = time.monotonic()
        self._wakeup: int | None = None  # read end of the pipe a stop signal writes to (`watch_stop_signals`)

    def watch_stop_signals(self) -> None:
        """A stop signal wakes the service's polls at once (`wait`, `make_poller`): a zmq poll that a signal
        interrupts runs its Python handler and polls on for the rest of its timeout, so each stage of a
        finished job left up to POLL_MS after its SIGTERM. Main thread only."""
        read, write = os.pipe()
        for end in (read, write):
            os.set_blocking(end, False)
            os.set_inheritable(end, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._wakeup = read

    def make_poller(self, *watched: tuple[zmq.Socket, int]) -> zmq.Poller:
        """A poller of (socket, event) pairs that a stop signal also wakes; `woken` after each poll."""
        poller = zmq.Poller()
        for sock, event in watched:
            poller.register(sock, event)
        if self._wakeup is not None:
            poller.register(self._wakeup, zmq.POLLIN)
        return poller

    def woken(self, ready: dict) -> None:
        """Empties the wake-up pipe when a poll returned for it (a stop signal came)."""
        if self._wakeup is not None and self._wakeup in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wakeup, 4096)

    def wait(self, sock: zmq.Socket, timeout_ms: int, event: int = zmq.POLLIN) -> bool:
        """Whether `sock` is ready for `event` within `timeout_ms`; a stop signal ends the wait at once."""
        if self._wakeup is None:
            return bool(sock.poll(timeout_ms, event))
        ready = dict(self.make_poller((sock, event)).poll(timeout_ms))
        self.woken(ready)
        return sock in ready

    def request_stop(self) -> None:
        """SIGTERM: stop taking new work, finish what is in hand, then `step` returns False."""
        self.stopping = True

    def setup(self) -> None:
        pass

    def step(self) -> bool:
        """One round of work; False when the service is done."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def socket(self, kind: int, endpoint: str, bind: bool = False, hwm: int | None = None) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.MAXMSGSIZE, messages.MAX_MESSAGE_BYTES)  # a peer cannot make us buffer gigabytes
        if hwm is not None:
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
        (sock.bind if bind else sock.connect)(endpoint)
        return sock

    # --- what a stage keeps in the run folder for its successor (it may die at any time) ---------------------
    def keep(self, name: str, state: messages.Message, what: str) -> bool:
        """Writes `state` to the run folder as `name`, whole or not at all, for this run (`run_id`); False when it
        cannot (a full disk): counted as `<what>_not_kept`, logged the first time."""
        path = self.endpoints.dir / name
        staged = path.with_name(f"{name}.partial")
        try:
            staged.write_bytes(messages.encode(messages.Kept(run_id(), state)))
            os.replace(staged, path)
        except OSError as exc:
            counter = f"{what}_not_kept"
            self.count(counter)
            if self.counters[counter] == 1:
                self.log.warning("%s: %s not kept for a successor: %s", self.camera, what, exc)
            return False
        return True

    def kept(self, name: str, kind: type[messages.Message], what: str) -> messages.Message | None:
        """What a predecessor of this run kept as `name` (`keep`): None when it kept nothing, when another run kept
        it (one killed before it could clear its folder: said), or something unreadable (torn, or foreign: logged)."""
        try:
            kept = messages.decode((self.endpoints.dir / name).read_bytes())
            if not isinstance(kept, messages.Kept) or not isinstance(kept.state, kind):
                found = type(kept.state if isinstance(kept, messages.Kept) else kept).__name__
                raise messages.MessageError(f"a {found}, not a {kind.__name__}")
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - whatever is there, the successor starts without it
            self.log.warning("%s: predecessor's %s unreadable (%s); starting without it", self.camera, what, exc)
            return None
        if kept.run != run_id():
            self.log.info("%s: an earlier run's %s is in the run folder (it was killed); starting afresh", self.camera,
                          what)
            return None
        return kept.state

    def malformed(self, error: Exception) -> None:
        """Garbage on a socket (a stray client, a version mismatch): logged, counted, dropped; never fatal."""
        self.count("malformed")
        log_malformed(self.log, self.counters["malformed"], error)

    def count(self, name: str, n: int = 1, camera: str | None = None) -> None:
        """Adds to a counter of this stage and, when `camera` is named, to that camera's share of it."""
        self.counters[name] = self.counters.get(name, 0) + n
        if camera is not None:
            mine = self.camera_counters.setdefault(camera, {})
            mine[name] = mine.get(name, 0) + n

    def gauge(self, name: str, value: int, camera: str | None = None) -> None:
        """Sets a level (frames in a queue), reported with the counters; see metrics.GAUGES."""
        (self.counters if camera is None else self.camera_counters.setdefault(camera, {}))[name] = value

    def observe(self, histogram: str, value: float, bounds: tuple[float, ...]) -> None:
        if histogram not in self.histograms:
            self.histograms[histogram] = messages.Histogram.of(bounds)
        self.histograms[histogram].observe(value)

    @property
    def heartbeat_s(self) -> float:
        return heartbeat_s(self.cfg)

    def report(self, force: bool = False) -> None:
        """Sends counters to the launcher every `stats_interval_s`, which are also the stage's heartbeat:
        at least four a `stall_s` (never blocks)."""
        now = time.monotonic()
        if not force and now - self._last_stats < self.heartbeat_s:
            return
        self._last_stats = now
        if self._events is None:
            self._events = self.socket(zmq.PUSH, self.endpoints.events, hwm=100)
        for message in self.reports(force):
            send(self._events, message, block=False)
        stats = messages.Stats(self.stage, self.camera, dict(self.counters), os.getpid(),
                               {camera: dict(c) for camera, c in self.camera_counters.items()}, self.histograms)
        send(self._events, stats, block=False)

    def reports(self, force: bool) -> list:
        """What a stage tells the launcher beside its counters, with each heartbeat; `force`: all of it."""
        return []

    def shutdown(self) -> None:
        try:
            self.report(force=True)
        finally:
            self.context.destroy(linger=1000)


def heartbeat_s(cfg: EngineConfig) -> float:
    """How often a stage reports: every `stats_interval_s`, and at least four times a `stall_s`."""
    return min(cfg.engine.stats_interval_s, cfg.engine.stall_s / 4)


def send(sock: zmq.Socket, message, block: bool = True) -> bool:
    """Sends one message; without `block`, returns False instead of waiting on a full peer."""
    try:
        sock.send(messages.encode(message), 0 if block else zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


def log_malformed(logger: logging.Logger, count: int, error: Exception) -> None:
    """The first few malformed messages, then one in a thousand: a flood must not flood the log too."""
    if count <= 5 or count % 1000 == 0:
        logger.warning("dropped a malformed message (%d so far): %s", count, error)


def receive_waiting(sock: zmq.Socket, on_malformed, budget_s: float | None = None):
    """Yields the messages already waiting on `sock`, without blocking; `on_malformed(error)` is told of
    anything that is not a message, which is dropped. With `budget_s`, no more are taken once that long has
    passed (the rest stay queued): a stage that cannot keep up, whose queue never empties, still returns
    to send its heartbeat rather than be killed as hung."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    while deadline is None or time.monotonic() < deadline:
        try:
            data = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            message = messages.decode(data)
        except messages.MessageError as exc:
            on_malformed(exc)
            continue
        yield message


def configure_logging(stage: str, camera: str, level: str, job: bool = False) -> None:
    """A running engine's stages stamp their lines. A job's (`anonengine run`), at its default WARNING, say what
    the reading and anonymizing say of the user's input as the command's own lines, as `--inline` does (a
    portrait photo among landscape ones, scaled to their size), and their own running's warnings not (a
    failure's, told by the command in one line); asked for INFO or DEBUG, they stamp every line as an engine's."""
    terse = job and logging.getLevelName(level) >= logging.WARNING
    logging.basicConfig(
        level=level,
        format="anonengine: %(message)s" if terse else f"%(asctime)s {stage}[{camera}] %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    redact_logs()
    if terse:
        logging.getLogger(f"anonengine.{stage}").setLevel(logging.ERROR)
    logging.getLogger("ultralytics").setLevel(logging.WARNING)


def service_args(argv: list[str] | None, extra=None) -> argparse.Namespace:
    parser = OneLineParser(description="anonengine stage process")
    parser.add_argument("--config", required=True, help="engine YAML config")
    parser.add_argument("--instance", default=os.environ.get("ANONENGINE_INSTANCE", "default"))
    if extra:
        extra(parser)
    return parser.parse_args(argv)


def report_exit(message: str, alone: str) -> None:
    """Why the stage exits. Under the launcher, `message` goes to a file it reads and reports as its own one line
    (a user's error, or a restart's reason: `StartAfresh`); a stage started by itself says `alone`."""
    path = os.environ.get("ANONENGINE_ERROR_FILE")
    if path:
        Path(path).write_text(message)
    else:
        print(alone, file=sys.stderr)


def report_user_error(message: str) -> None:
    report_exit(message, f"anonengine: error: {message}")


def make_endpoints_dir(endpoints: Endpoints) -> None:
    """Under the launcher the folders exist; stages started on their own (honcho) make them, owner-only
    (a folder there already must be as safe: see anonengine.rundir)."""
    private_dir(endpoints.run_dir)
    private_dir(endpoints.dir)


def bind_tap(context: zmq.Context, endpoint: str, tap: TapConfig,
             endpoints: Endpoints) -> tuple[zmq.Socket, CurveServer | None]:
    """The tap's XPUB, bound at `endpoint` by its one binder (the encoder, or the launcher's relay).

    With CURVE keys (a TCP tap must have them) it is a CURVE server behind a ZAP handler that lets in the
    keys of tap.curve_clients and of the instance's tap-clients folder only; the caller closes the handler
    (returned) after the socket. A busy or unusable address is one line for the user."""
    curve = CurveServer(tap.curve_server_key, curve_clients_folder(tap.curve_clients),
                        endpoints.tap_clients) if tap.curve else None
    sock = context.socket(zmq.XPUB)
    sock.setsockopt(zmq.MAXMSGSIZE, messages.MAX_MESSAGE_BYTES)  # subscriptions are small
    sock.setsockopt(zmq.SNDHWM, tap.hwm)
    # The high-water mark bounds a slow subscriber's backlog only if the kernel's does too.
    sock.setsockopt(zmq.SNDBUF, TAP_SOCKET_BUFFER)
    try:
        if curve is not None:
            curve.secure(context, sock)
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        if curve is not None:
            curve.close()
        raise OutputError(f"cannot open the tap at {endpoint}: {zmq.strerror(exc.errno)}") from None
    return sock, curve


class Parent:
    """Whom a stage follows: the kernel sends it SIGTERM when its parent dies (the launcher, or the fork server
    it was forked from, which ends with the launcher), so no stage outlives the launcher even when that is
    killed with -9; the loop also asks `launcher_alive`.

    The launcher names itself (ANONENGINE_LAUNCHER_PID; a stage on its own follows its parent): a stage whose
    launcher died before this ran stops at once."""

    def __init__(self) -> None:
        self.pid = os.getppid()
        named = os.environ.get("ANONENGINE_LAUNCHER_PID")
        launcher = int(named or self.pid)
        # What the log calls it: a stage started by a Procfile's runner (honcho) has no launcher, and said "the
        # launcher is gone" as the runner stopped (an operator's trial).
        self.name = "the launcher" if named else f"the process that started it (pid {self.pid})"
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # not Linux: the loop's check still holds
            pass
        self._launcher: int | None = None  # a pidfd of the launcher; None once it is known gone
        self._parent_stands_in = False  # no pidfd here: the parent stands for the launcher
        try:
            self._launcher = os.pidfd_open(launcher)
        except ProcessLookupError:  # died before the request took effect
            pass
        except (AttributeError, OSError):
            self._parent_stands_in = True
        if not self.launcher_alive():
            os.kill(os.getpid(), signal.SIGTERM)

    def launcher_alive(self) -> bool:
        if self._parent_stands_in:
            return os.getppid() == self.pid
        return self._launcher is not None and not exited(self._launcher)

    def lost_alone(self) -> bool:
        """Whether the parent died but the launcher lives: the fork server alone was killed. Its SIGTERM is no
        stop request then: a stage that drained (a capture ending its stream, an encoder its output) would
        leave the launcher's successor half a stream; it leaves at once, as if it had crashed, and is
        restarted."""
        return os.getppid() != self.pid and self.launcher_alive()


def stop_unless_lost(service: Service, parent: Parent) -> None:
    if parent.lost_alone():
        service.log.warning("the fork server this stage was started from died; leaving, to be started again")
        os._exit(1)  # as a crash: nothing drained, nothing ended
    service.request_stop()


def opencv_threads(cfg: EngineConfig) -> int:
    """OpenCV's threads in one stage process: the cores shared among the engine's processes (each camera's
    capture, every worker), at least one. Side by side on a small CPU, a stage's parallel loops wait for
    threads the other stages preempted (2 cores, street clip: the compositor took 37 against 39 ms of CPU a
    frame on one thread, 3 alternated runs)."""
    engine = cfg.engine
    processes = len(cfg.cameras) + engine.detect_workers + engine.composite_workers + engine.encode_workers
    return max(1, len(os.sched_getaffinity(0)) // processes)


def run_service(factory, argv: list[str] | None = None, extra_args=None) -> int:
    """Runs one service to completion; the exit code tells the launcher what happened.

    0: done; 2: a user error (bad input or config), not worth a restart; other: crashed, restart.
    """
    args = service_args(argv, extra_args)
    try:
        cfg = load_yaml(Path(args.config), EngineConfig)
        level = log_level_from_env()  # a stage started by itself (the Procfile) checks it too
    except AnonError as exc:
        report_user_error(str(exc))
        return 2
    service = factory(cfg, args)
    configure_logging(service.stage, service.camera, level or "INFO", job=cfg.engine.exit_when_done)
    faulthandler.enable()
    try:
        make_endpoints_dir(service.endpoints)
        _held = FileLock(service.endpoints.dir / f"{service.stage}-{service.camera}.lock").acquire()  # till it ends
    except LockBusy as busy:
        # Two engines under one instance id (a Procfile started twice: honcho has no instance lock): their stages
        # took each other's frames, and recordings piled up as camA.1 to camA.4 (an operator's trial). The
        # launcher restarts a stage once its predecessor is dead, which lets go of this by dying.
        report_user_error(f"{service.stage}[{service.camera}]: another {service.stage} of {service.camera} runs in "
                          f"instance {args.instance}{busy.owner}: two engines under one instance id?")
        return 2
    except AnonError as exc:
        report_user_error(f"{service.stage}[{service.camera}]: {exc}")
        return 2
    try:
        import setproctitle

        setproctitle.setproctitle(f"anonengine-{service.stage}[{service.camera}] {args.instance}")
    except ImportError:
        pass
    import cv2

    cv2.setNumThreads(opencv_threads(cfg))
    parent = Parent()
    # Until set up, a stop signal ends the process at once (a model load takes seconds, and nothing is in
    # hand yet); from then on it asks the service to finish what it holds. A stage answers each, whatever the
    # one who started its launcher ignored: the launcher stops it (a stage started as its own program, when the
    # fork server is broken, would keep a SIGTERM ignored, and be killed, its frames lost).
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    INTERRUPTS.install()
    service.watch_stop_signals()
    try:
        service.setup()
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda *_: stop_unless_lost(service, parent))
        # The first heartbeat at once: until the launcher has one, it takes the stage for one still
        # starting, which a stop kills rather than waits for (an encoder killed so loses its frames).
        service.report(force=True)
        orphaned_at = None
        while service.step():
            service.report()
            if parent.launcher_alive():
                continue
            # The launcher is gone (its SIGTERM, PR_SET_PDEATHSIG, may not have come): the stage drains as
            # on any stop, but what it waits for may never come (its peers went with the launcher), and no
            # launcher will kill it after the grace period: it leaves by itself then.
            if orphaned_at is None:
                service.log.warning("%s is gone; stopping", parent.name)
                service.request_stop()
                orphaned_at = time.monotonic()
            elif time.monotonic() - orphaned_at > cfg.engine.stop_timeout_s:
                service.log.warning("%s is gone and what is in flight did not drain in %.0f s; leaving",
                                    parent.name, cfg.engine.stop_timeout_s)
                break
        return 0
    except Interrupted:
        return 0
    except AnonError as exc:
        report_user_error(f"{service.stage}[{service.camera}]: {exc}")
        return 2
    except StartAfresh as exc:
        report_exit(str(exc), f"anonengine: {exc}; exiting to be started afresh")
        return 1
    except Exception:
        service.log.exception("crashed")
        return 1
    finally:
        try:
            service.close()
        finally:
            service.shutdown()
