"""The launcher starts every stage, restarts the ones that die, and stops them all in order.

Consumers start before producers (encode, composite, detect, then one capture per camera) and stop
after them: captures stop reading and finish what is in flight, the chain drains, then detectors,
compositor and encoder go, then sockets, then shared memory. A stage that exits 2 met a user error
(bad input): the engine reports it and stops. Any other death is restarted, up to `restart_limit`
times a minute. The process factory and the clock are attributes so tests can swap in fakes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
import zmq

from anonengine import messages
from anonengine.config import CameraConfig, EngineConfig
from anonengine.engine.runtime import TAP_SOCKET_BUFFER, Endpoints, receive_waiting
from anonengine.errors import AnonError, InputError, OutputError
from anonengine.interrupts import STOP_SIGNALS
from anonengine.locks import FileLock, LockBusy, is_locked, output_lock_path
from anonengine.shm import instance_segments, remove_stale_segments, unlink
from anonengine.video import URL_PATTERN

log = logging.getLogger("anonengine.launcher")

USER_ERROR = 2
STOP_ORDER = ("capture", "detect", "composite", "encode")
FAILED_GRACE_S = 3.0


@dataclass
class Child:
    name: str
    stage: str
    argv: list[str]
    camera: str | None = None
    worker: int = 0  # its number among its stage's processes; a capture's: its camera's compositor
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)


class EngineFailed(AnonError):
    """A stage could not be kept running, or met a user error."""


def instance_lock_path(run_dir: str | Path, instance: str) -> Path:
    """Held by an instance's launcher for as long as it runs: one owner per run dir."""
    return Path(run_dir) / f"{instance}.lock"


def instance_alive(instance: str, run_dir: str | Path | None = None) -> bool:
    """Whether an instance's launcher still runs: its lock is held, or for `p<pid>` names, that process lives.

    An instance that can be judged neither way (stages started by honcho, say) is taken to be alive.
    """
    if run_dir is not None and instance_lock_path(run_dir, instance).exists():
        return is_locked(instance_lock_path(run_dir, instance))
    if not (instance.startswith("p") and instance[1:].isdigit()):
        return True
    try:
        os.kill(int(instance[1:]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Launcher:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg.model_copy(deep=True)
        self.instance = cfg.engine.instance or f"p{os.getpid()}"
        self.endpoints = Endpoints(cfg.engine.run_dir, self.instance, cfg.engine.composite_workers)
        self.children: dict[str, Child] = {}
        self.compositor_of: dict[str, int] = {}  # camera -> its composite worker, kept across re-attaches
        self.done: dict[str, messages.CameraDone] = {}
        self.stats: dict[tuple[str, str], dict] = {}
        self.failure: str | None = None
        self.failed_cameras: dict[str, str] = {}
        self.stop_requested = False
        self.stop_signal: int | None = None  # the signal that asked for the stop, if one did
        self.spawn = subprocess.Popen  # swapped in tests
        self.clock = time.monotonic
        self.on_stats = None  # called with `stats` whenever counters arrive (progress bars)
        self.tap_relay: TapRelay | None = None
        self.context = zmq.Context()

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Takes the instance, checks what can be checked, then starts every stage.

        Everything that can fail on the user's input fails here, with one line, before any stage runs.
        """
        self._take_instance()
        try:
            self._check_tap_endpoint()
            for camera in self.cfg.cameras:
                self._check_camera(camera)
            self._start()
        except BaseException:
            self.instance_lock.release()
            raise

    def _take_instance(self) -> None:
        run_dir = Path(self.cfg.engine.run_dir)
        try:
            run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.instance_lock = FileLock(instance_lock_path(run_dir, self.instance)).acquire()
        except LockBusy as busy:
            owner = f" (pid {busy.pid})" if busy.pid else ""
            raise EngineFailed(f"engine instance {self.instance} is already running in {run_dir}{owner}") from None
        except OSError as exc:
            raise EngineFailed(f"cannot use the run folder {run_dir}: {exc.strerror}") from None

    def _check_tap_endpoint(self) -> None:
        """A busy or unusable tap address is the user's to fix: one line now, not a crash loop later."""
        if not self.cfg.tap.endpoint or self.cfg.engine.encode_workers > 1:
            return  # several encoders: the relay binds the tap itself, in _start, before any stage runs
        probe = self.context.socket(zmq.XPUB)
        try:
            probe.bind(self.cfg.tap.endpoint)
        except zmq.ZMQError as exc:
            raise EngineFailed(f"cannot open the tap at {self.cfg.tap.endpoint}: {zmq.strerror(exc.errno)}") from None
        finally:
            probe.close(linger=0)

    def _check_camera(self, camera: CameraConfig) -> None:
        """What can be known of a camera before its capture starts: a file source exists, its output can
        be written and is nobody else's."""
        if not camera.source.isdigit() and not URL_PATTERN.match(camera.source):
            source = Path(camera.source)
            if not source.exists():
                raise InputError(f"camera {camera.name}: video source not found: {camera.source}")
            if not source.is_file():
                raise InputError(f"camera {camera.name}: video source is not a file: {camera.source}")
        if not camera.output:
            return
        output = Path(camera.output)
        if not output.parent.is_dir():
            raise OutputError(f"camera {camera.name}: cannot write {output}: folder {output.parent} does not exist")
        if output.is_dir():
            raise OutputError(f"camera {camera.name}: cannot write {output}: it is a folder")
        for other in self.cfg.cameras:
            running = self.children.get(f"capture-{other.name}")
            if (other.name != camera.name and other.output and running is not None
                    and running.process.poll() is None and Path(other.output).resolve() == output.resolve()):
                raise OutputError(f"camera {camera.name}: {output} is already the output of camera {other.name}")
        if is_locked(output_lock_path(output)):
            raise OutputError(f"camera {camera.name}: cannot write {output}: another anonengine is writing it")

    def _start(self) -> None:
        removed = remove_stale_segments(lambda instance: instance_alive(instance, self.cfg.engine.run_dir))
        if removed:
            log.info("removed %d stale shared-memory segment(s) of dead engines", len(removed))
        self._remove_stale_run_dirs()
        self.endpoints.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.endpoints.dir, 0o700)
        self.config_path = self.endpoints.dir / "engine.yaml"
        self.config_path.write_text(yaml.safe_dump(self.cfg.model_dump(mode="json")))
        self.events = self.context.socket(zmq.PULL)
        self.events.bind(self.endpoints.events)
        self.control = self.context.socket(zmq.REP)
        self.control.bind(self.endpoints.control)
        if self.cfg.tap.endpoint and self.cfg.engine.encode_workers > 1:
            self.tap_relay = TapRelay(self.context, self.endpoints.tap_relay, self.cfg.tap)
        for w in range(self.cfg.engine.encode_workers):
            self._add(f"encode{w}", "encode", w, extra=["--worker", str(w)])
        for w in range(self.cfg.engine.composite_workers):
            self._add(f"composite{w}", "composite", w, extra=["--worker", str(w)])
        for w in range(self.cfg.engine.detect_workers):
            self._add(f"detect{w}", "detect", w, extra=["--worker", str(w)])
        for camera in self.cfg.cameras:
            self.attach(camera)

    def _remove_stale_run_dirs(self) -> None:
        root = Path(self.cfg.engine.run_dir)
        if root.is_dir():
            for folder in root.iterdir():
                if folder.is_dir() and not instance_alive(folder.name, root):
                    shutil.rmtree(folder, ignore_errors=True)
                    instance_lock_path(root, folder.name).unlink(missing_ok=True)

    def _add(self, name: str, stage: str, worker: int = 0, camera: str | None = None,
             extra: list[str] | None = None) -> None:
        argv = [sys.executable, "-m", f"services.{stage}", "--config", str(self.config_path),
                "--instance", self.instance, *(extra or [])]  # fmt: skip
        child = self.children[name] = Child(name, stage, argv, camera, worker)
        self._spawn(child)

    def _spawn(self, child: Child) -> None:
        # Stages run in the launcher's folder, so relative paths (sources, outputs, run_dir, models) mean
        # what they mean to the user; services/ is found through PYTHONPATH, not a same-named local folder.
        pythonpath = os.pathsep.join(filter(None, (_project_root(), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "ANONENGINE_INSTANCE": self.instance, "PYTHONUNBUFFERED": "1",
               "ANONENGINE_ERROR_FILE": str(self._error_file(child)), "PYTHONPATH": pythonpath,
               "PYTHONSAFEPATH": "1"}  # fmt: skip
        # A session of its own: Ctrl-C in a terminal reaches the launcher alone, which stops the stages in
        # order; each stage ends itself if the launcher dies (runtime.follow_parent).
        child.process = self.spawn(child.argv, env=env, cwd=os.getcwd(), stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        log.debug("started %s (pid %d)", child.name, child.process.pid)

    def _error_file(self, child: Child) -> Path:
        return self.endpoints.dir / f"{child.name}.error"

    def attach(self, camera: CameraConfig) -> None:
        name = f"capture-{camera.name}"
        if name in self.children and self.children[name].process.poll() is None:
            raise EngineFailed(f"camera {camera.name} is already attached")
        self._check_camera(camera)
        self.failed_cameras.pop(camera.name, None)
        self.done.pop(camera.name, None)  # a camera detached or ended before comes back as a new stream
        # A camera attached again keeps its compositor (and so its encoder, which may still be finishing
        # the same output file).
        compositor = self.compositor_of.setdefault(camera.name, self._least_busy_compositor())
        extra = ["--camera", camera.name, "--camera-json", camera.model_dump_json(),
                 "--composite-worker", str(compositor)]
        self._add(name, "capture", compositor, camera.name, extra)
        if camera.name not in {c.name for c in self.cfg.cameras}:
            self.cfg.cameras.append(camera)

    def _least_busy_compositor(self) -> int:
        """The composite worker with the fewest cameras (each camera stays on its worker)."""
        load = [0] * self.cfg.engine.composite_workers
        for worker in self.compositor_of.values():
            load[worker] += 1
        return load.index(min(load))

    def detach(self, camera: str) -> bool:
        child = self.children.get(f"capture-{camera}")
        if child is None or child.process.poll() is not None:
            return False
        child.process.send_signal(signal.SIGTERM)  # the capture drains, its stream ends normally
        return True

    def run(self) -> int:
        """Supervises until stopped (or, with exit_when_done, until every camera is done)."""
        try:
            while not self.stop_requested:
                self._pump(timeout_ms=100)
                self._supervise()
                if self.failure:
                    break
                if self.cfg.engine.exit_when_done and self._all_cameras_done():
                    break
        finally:
            # After a failure the chain is broken and nothing can drain: short grace.
            self.stop(grace_s=FAILED_GRACE_S if self.failure else None)
        if self.failure:
            raise EngineFailed(self.failure)
        return 0

    def _all_cameras_done(self) -> bool:
        cameras = {c.name for c in self.cfg.cameras}
        captures_running = any(
            c.stage == "capture" and c.process.poll() is None for c in self.children.values()
        )
        return cameras <= self.done.keys() and not captures_running

    def _pump(self, timeout_ms: int) -> None:
        poller = zmq.Poller()
        poller.register(self.events, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        ready = dict(poller.poll(timeout_ms))
        for message in receive_waiting(self.events) if self.events in ready else ():
            if isinstance(message, messages.CameraDone):
                self.done[message.camera] = message
                if not message.complete:
                    log.info("camera %s stopped after %d frames; its partial output: %s", message.camera,
                             message.frames, message.output or "(none)")
            elif isinstance(message, messages.Stats):
                self.stats[(message.stage, message.name)] = message.counters
                if self.on_stats is not None:
                    self.on_stats(self.stats)
        if self.control in ready:
            self.control.send_json(self._on_control(self.control.recv_json()))

    def _on_control(self, request: dict) -> dict:
        try:
            if request.get("op") == "attach":
                self.attach(CameraConfig.model_validate(request["camera"]))
                return {"ok": True}
            if request.get("op") == "detach":
                return {"ok": self.detach(request["camera"])}
            if request.get("op") == "status":
                return {"ok": True, "cameras": [c.name for c in self.cfg.cameras], "done": sorted(self.done),
                        "failed": self.failed_cameras,
                        "stats": {f"{k[0]}[{k[1]}]": v for k, v in self.stats.items()}}
            return {"ok": False, "error": f"unknown op {request.get('op')!r}"}
        except Exception as exc:  # noqa: BLE001 - the answer carries the error to the client
            return {"ok": False, "error": str(exc).splitlines()[0]}

    def _supervise(self) -> None:
        for child in list(self.children.values()):
            code = child.process.poll()
            if code is None:
                continue
            if child.stage == "capture" and code == 0:
                continue  # its stream ended
            if code == USER_ERROR:
                error = self._error_file(child)
                message = error.read_text() if error.is_file() else f"{child.name} stopped on an error"
                if child.stage == "capture" and not self.cfg.engine.exit_when_done:
                    # One bad camera of a running engine: the others go on; the camera is reported.
                    log.error("camera %s stopped: %s", child.camera, message)
                    self.failed_cameras[child.camera] = message
                    del self.children[child.name]
                    continue
                self.failure = message
                return
            now = self.clock()
            child.restarts = [t for t in child.restarts if now - t < 60] + [now]
            if len(child.restarts) > self.cfg.engine.restart_limit:
                self.failure = f"{child.name} died {len(child.restarts)} times within a minute (exit {code})"
                return
            log.warning("%s exited with %s; restarting", child.name, code)
            self._spawn(child)

    def stop(self, grace_s: float | None = None) -> None:
        """Stops every stage in order, then removes sockets and the instance's shared memory."""
        grace_s = grace_s or self.cfg.engine.stop_timeout_s
        for stage in STOP_ORDER:
            group = [c for c in self.children.values() if c.stage == stage and c.process.poll() is None]
            for child in group:
                child.process.send_signal(signal.SIGTERM)
            deadline = self.clock() + grace_s
            for child in group:
                while child.process.poll() is None and self.clock() < deadline:
                    self._pump(timeout_ms=50)
                if child.process.poll() is None:
                    # After a failure, killing what cannot drain is expected, not worth a warning.
                    level = logging.INFO if self.failure else logging.WARNING
                    log.log(level, "%s did not stop in %.0f s; killing it", child.name, grace_s)
                    child.process.kill()
                    child.process.wait()
        self._pump(timeout_ms=0)
        if self.tap_relay is not None:
            self.tap_relay.close()
        self.context.destroy(linger=0)
        for name in instance_segments(self.instance):
            unlink(name)
        shutil.rmtree(self.endpoints.dir, ignore_errors=True)
        self.instance_lock.release()

    def request_stop(self, signum: int | None = None) -> None:
        self.stop_requested = True
        if self.stop_signal is None:
            self.stop_signal = signum


def stage_total(stats: dict[tuple[str, str], dict], stage: str, counter: str) -> int:
    """A counter added up over a stage's processes (e.g. frames written by every encoder)."""
    return sum(counters.get(counter, 0) for (name, _), counters in stats.items() if name == stage)


class TapRelay:
    """One tap endpoint for several encoders: XSUB (encoders connect) to XPUB (subscribers), in a thread.

    Subscriptions flow back to the encoders, so they still encode tap frames only while someone listens;
    the XPUB's high-water mark drops frames for a slow subscriber, as the single encoder's own would.
    """

    def __init__(self, context: zmq.Context, relay: str, tap) -> None:
        self.inbound = context.socket(zmq.XSUB)
        self.inbound.bind(relay)
        self.outbound = context.socket(zmq.XPUB)
        self.outbound.setsockopt(zmq.SNDHWM, tap.hwm)
        self.outbound.setsockopt(zmq.SNDBUF, TAP_SOCKET_BUFFER)
        try:
            self.outbound.bind(tap.endpoint)
        except zmq.ZMQError as exc:
            self.inbound.close(linger=0)
            self.outbound.close(linger=0)
            raise EngineFailed(f"cannot open the tap at {tap.endpoint}: {zmq.strerror(exc.errno)}") from None
        self.control = context.socket(zmq.PAIR)
        self.control.bind(f"inproc://tap-relay-{id(self)}")
        control = context.socket(zmq.PAIR)
        control.connect(f"inproc://tap-relay-{id(self)}")
        self.thread = threading.Thread(target=self._run, args=(control,), name="tap-relay", daemon=True)
        self.thread.start()

    def _run(self, control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(self.inbound, self.outbound, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (self.inbound, self.outbound, control):
                sock.close(linger=0)

    def close(self) -> None:
        if self.thread.is_alive():
            self.control.send(b"TERMINATE", zmq.NOBLOCK)
            self.thread.join(5)
        self.control.close(linger=0)


def _project_root() -> str:
    """Folder from which `python -m services.X` imports (services/ is a top-level package)."""
    return str(Path(__file__).resolve().parents[2])


def launch(cfg: EngineConfig) -> Launcher:
    """Starts an engine with SIGINT/SIGTERM wired to an orderly stop; call `.run()` on the result."""
    launcher = Launcher(cfg)
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: launcher.request_stop(signum))
    launcher.start()
    return launcher
