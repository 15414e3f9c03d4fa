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
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml
import zmq
from pydantic import ValidationError

from anonengine import messages
from anonengine.config import CameraConfig, EngineConfig
from anonengine.engine.runtime import TAP_SOCKET_BUFFER, Endpoints, log_malformed, receive_waiting
from anonengine.errors import AnonError, InputError, OutputError
from anonengine.interrupts import STOP_SIGNALS
from anonengine.locks import FileLock, LockBusy, is_locked
from anonengine.recording import segments_folder
from anonengine.shm import instance_segments, remove_stale_segments, unlink
from anonengine.sources import classify, is_live
from anonengine.video import claim_output, partial_metadata_path, partial_path

log = logging.getLogger("anonengine.launcher")

USER_ERROR = 2
STOP_ORDER = ("capture", "detect", "composite", "encode")
FAILED_GRACE_S = 3.0
RESTART_BACKOFF_MAX_S = 10.0


@dataclass
class Child:
    name: str
    stage: str
    argv: list[str]
    camera: str | None = None
    worker: int = 0  # its number among its stage's processes; a capture's: its camera's compositor
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    restart_at: float | None = None  # dead, to be started again at this time (backoff)
    last_beat: float | None = None  # its last heartbeat; None until its first (set-up may take long)


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
        self.run_id = uuid.uuid4().hex  # this run's recording segments, resumed by a restarted encoder
        self.endpoints = Endpoints(cfg.engine.run_dir, self.instance, cfg.engine.composite_workers)
        self.children: dict[str, Child] = {}
        self.output_locks: dict[str, FileLock] = {}  # camera -> its output's lock, until the camera is done
        self.compositor_of: dict[str, int] = {}  # camera -> its composite worker, kept across re-attaches
        self.done: dict[str, messages.CameraDone] = {}
        self.stats: dict[tuple[str, str], dict] = {}
        self.sources: dict[str, messages.SourceStatus] = {}  # live sources' states, by camera
        self.malformed = 0  # messages dropped as garbage, on the events and control sockets
        self.progress: dict[str, int] = {}  # camera -> frames its encoder has written: where a capture resumes
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
                self._claim_camera(camera)
            self._start()
        except BaseException:
            for child in self.children.values():  # started before the failure: they go with it
                if child.process is not None and child.process.poll() is None:
                    child.process.kill()
                    child.process.wait()
            self._remove_instance()
            raise

    def _take_instance(self) -> None:
        run_dir = Path(self.cfg.engine.run_dir)
        try:
            run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.instance_lock = FileLock(instance_lock_path(run_dir, self.instance)).acquire()
        except LockBusy as busy:
            raise EngineFailed(f"engine instance {self.instance} is already running in {run_dir}{busy.owner}") from None
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

    def _claim_camera(self, camera: CameraConfig) -> None:
        """Checks what can be known of a camera before its capture starts (a file source exists, its output
        can be written) and takes its output's lock, held until the camera is done: the encoder writes
        under it, and a second engine or run on the same output is refused at once."""
        try:
            classify(camera.source)  # a file source must exist; a live one may be down now and come later
        except InputError as exc:
            raise InputError(f"camera {camera.name}: {exc}") from None
        if not camera.output:
            return
        output = Path(camera.output)
        for other in self.cfg.cameras:
            running = self.children.get(f"capture-{other.name}")
            if (other.name != camera.name and other.output and running is not None
                    and running.process.poll() is None and Path(other.output).resolve() == output.resolve()):
                raise OutputError(f"camera {camera.name}: {output} is already the output of camera {other.name}")
        # A failed run removes its partial files: an earlier run's, there before it, are set aside first.
        partials = (partial_metadata_path(camera.metadata),) if camera.metadata else ()
        try:
            self.output_locks[camera.name] = claim_output(output, partials=partials)
        except OutputError as exc:
            raise OutputError(f"camera {camera.name}: {exc}") from None

    def _release_output(self, camera: str) -> None:
        lock = self.output_locks.pop(camera, None)
        if lock is not None:
            lock.release()

    def _release_outputs(self, discard: bool = False) -> None:
        """Lets go of every output; with `discard` (a failed job), first removes their partial files, which
        are this engine's own since it holds their locks."""
        for camera in self.cfg.cameras:
            if discard and camera.name in self.output_locks:
                partial_path(camera.output).unlink(missing_ok=True)
                if not self.cfg.encoder.keep_segments:  # an encoder that died left its working segments
                    shutil.rmtree(segments_folder(Path(camera.output), keep=False), ignore_errors=True)
                if camera.metadata:
                    partial_metadata_path(camera.metadata).unlink(missing_ok=True)
        for name in list(self.output_locks):
            self._release_output(name)

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
        self.control = self.context.socket(zmq.REP)
        for sock, endpoint in ((self.events, self.endpoints.events), (self.control, self.endpoints.control)):
            sock.setsockopt(zmq.MAXMSGSIZE, messages.MAX_MESSAGE_BYTES)
            sock.bind(endpoint)
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
               "ANONENGINE_OUTPUTS_LOCKED": "1",  # the launcher holds every output's lock for its encoders
               "ANONENGINE_LAUNCHER_PID": str(os.getpid()),
               "ANONENGINE_RUN_ID": self.run_id,
               "PYTHONSAFEPATH": "1"}  # fmt: skip
        # A session of its own: Ctrl-C in a terminal reaches the launcher alone, which stops the stages in
        # order; each stage ends itself if the launcher dies (runtime.follow_parent).
        child.process = self.spawn(child.argv, env=env, cwd=os.getcwd(), stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        child.last_beat = None
        log.debug("started %s (pid %d)", child.name, child.process.pid)

    def _error_file(self, child: Child) -> Path:
        return self.endpoints.dir / f"{child.name}.error"

    def attach(self, camera: CameraConfig) -> None:
        name = f"capture-{camera.name}"
        if name in self.children and self.children[name].process.poll() is None:
            raise EngineFailed(f"camera {camera.name} is already attached")
        if camera.name not in self.output_locks:  # the cameras of the config were claimed at start
            self._claim_camera(camera)
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
        """Supervises until stopped (or, with exit_when_done, until every camera is done).

        A job (exit_when_done) that fails leaves nothing that could pass for a complete output: its partial
        files are removed (only this engine's, whose locks it holds).
        """
        failed = True
        try:
            while not self.stop_requested:
                self._pump(timeout_ms=100)
                self._supervise()
                if self.failure:
                    break
                if self.cfg.engine.exit_when_done and self._all_cameras_done():
                    break
            failed = self.failure is not None
        finally:
            # After a failure the chain is broken and nothing can drain: short grace.
            self.stop(grace_s=FAILED_GRACE_S if self.failure else None,
                      discard=failed and self.cfg.engine.exit_when_done)
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
        for message in receive_waiting(self.events, self._malformed) if self.events in ready else ():
            if isinstance(message, messages.CameraDone):
                self.done[message.camera] = message
                self._release_output(message.camera)
                if not message.complete:
                    log.info("camera %s stopped after %d frames; its partial output: %s", message.camera,
                             message.frames, message.output or "(none)")
            elif isinstance(message, messages.Progress):
                self.progress[message.camera] = max(self.progress.get(message.camera, 0), message.next_seq)
            elif isinstance(message, messages.SourceStatus):
                self._on_source_status(message)
            elif isinstance(message, messages.Stats):
                self._on_heartbeat(message.pid)
                self.stats[(message.stage, message.name)] = message.counters
                if self.on_stats is not None:
                    self.on_stats(self.stats)
        if self.control in ready:
            # A REP socket must answer every request, garbage included, or it takes no other.
            try:
                reply = self._on_control(messages.decode(self.control.recv()))
            except messages.MessageError as exc:
                self._malformed(exc)
                reply = messages.Reply(False, f"not a control request: {str(exc).splitlines()[0]}")
            self.control.send(messages.encode(reply))

    def _malformed(self, error: Exception) -> None:
        self.malformed += 1
        log_malformed(log, self.malformed, error)

    def _on_source_status(self, status: messages.SourceStatus) -> None:
        before = self.sources.get(status.camera)
        self.sources[status.camera] = status
        if status.state == "reconnecting" and (before is None or before.state != "reconnecting"):
            log.warning("camera %s: source lost (%s); reconnecting", status.camera, status.error)
        elif status.state == "running" and before is not None and before.state != "running":
            log.warning("camera %s: source %s", status.camera,
                        "back" if before.state == "reconnecting" else "connected")
        elif status.state == "connecting" and (before is None or before.error != status.error):
            log.warning("camera %s: cannot connect yet (%s); trying again", status.camera, status.error)

    def _on_control(self, request: messages.Message) -> messages.Reply:
        try:
            if isinstance(request, messages.Attach):
                self.attach(CameraConfig.model_validate(request.camera))
                return messages.Reply(True)
            if isinstance(request, messages.Detach):
                if self.detach(request.camera):
                    return messages.Reply(True)
                return messages.Reply(False, f"camera {request.camera} is not attached")
            if isinstance(request, messages.StatusRequest):
                return messages.Reply(True, status=self.status())
            return messages.Reply(False, f"not a control request: {type(request).__name__}")
        except ValidationError as exc:
            err = exc.errors()[0]
            return messages.Reply(False, f"invalid camera {'.'.join(map(str, err['loc']))}: {err['msg']}")
        except Exception as exc:  # noqa: BLE001 - the answer carries the error to the client
            return messages.Reply(False, str(exc).splitlines()[0])

    def status(self) -> dict:
        return {"cameras": [c.name for c in self.cfg.cameras], "done": sorted(self.done),
                "failed": self.failed_cameras,
                "sources": {name: {"state": s.state.value, "error": s.error, "reconnects": s.reconnects}
                            for name, s in self.sources.items()},
                "malformed": self.malformed,
                "stats": {f"{k[0]}[{k[1]}]": v for k, v in self.stats.items()}}

    def _on_heartbeat(self, pid: int) -> None:
        for child in self.children.values():
            if child.process is not None and child.process.pid == pid:
                first = child.last_beat is None
                child.last_beat = self.clock()
                if first and child.restarts and child.stage != "capture":
                    # A restarted stage is ready: what its predecessor held is offered again now, not
                    # `redeliver_after_s` later (captures), and a restarted encoder learns the streams
                    # and gets the frames it held (compositors).
                    for other in self.children.values():
                        if other.stage == "capture" and other.process is not None and other.process.poll() is None:
                            self._tell(self.endpoints.capture(other.camera), messages.Redeliver())
                    for worker in range(self.cfg.engine.composite_workers):
                        self._tell(self.endpoints.composite(worker), messages.Redeliver())
                return

    def _supervise(self) -> None:
        for child in list(self.children.values()):
            if child.restart_at is not None:
                if self.clock() >= child.restart_at:
                    child.restart_at = None
                    self._restart(child)
                continue
            code = child.process.poll()
            if code is None:
                self._watch(child)
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
                    self._release_output(child.camera)
                    del self.children[child.name]
                    continue
                self.failure = message
                return
            now = self.clock()
            child.restarts = [t for t in child.restarts if now - t < 60] + [now]
            if len(child.restarts) > self.cfg.engine.restart_limit:
                self.failure = f"{child.name} died {len(child.restarts)} times within a minute (exit {code})"
                return
            # The first restart is at once; deaths that follow in the minute wait 0.5 s, 1 s, 2 s... (at
            # most 10 s), so a stage that cannot start does not spin.
            delay = 0.0 if len(child.restarts) == 1 else min(RESTART_BACKOFF_MAX_S, 0.5 * 2 ** (len(child.restarts) - 2))
            log.warning("%s exited with %s; restarting%s", child.name, code, f" in {delay:g} s" if delay else "")
            if delay:
                child.restart_at = now + delay
            else:
                self._restart(child)

    def _restart(self, child: Child) -> None:
        """Starts a dead stage again where the engine stands: a capture of a file after the last frame
        written; any other gets every capture's frames in flight again once it is ready (_on_heartbeat)."""
        if child.stage == "capture":
            resume = ["--resume-from", str(self.progress.get(child.camera, 0))]
            if "--resume-from" in child.argv:
                child.argv[child.argv.index("--resume-from"):child.argv.index("--resume-from") + 2] = resume
            else:
                child.argv += resume
        self._spawn(child)

    def _tell(self, endpoint: str, message: messages.Message) -> None:
        """One message to a stage's inbox, without waiting: a stage that is gone too is restarted anyway."""
        sock = self.context.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 1000)
        try:
            sock.connect(endpoint)
            sock.send(messages.encode(message), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        finally:
            sock.close()

    def _watch(self, child: Child) -> None:
        """A stage silent for `engine.stall_s` is hung (a stuck driver, a deadlock): killed, then restarted."""
        if child.last_beat is None or self.clock() - child.last_beat <= self.cfg.engine.stall_s:
            return
        log.warning("%s sent no heartbeat for %.0f s; killing it (it is restarted)", child.name,
                    self.clock() - child.last_beat)
        child.process.kill()
        child.process.wait()

    def stop(self, grace_s: float | None = None, discard: bool = False) -> None:
        """Stops every stage in order, then removes sockets and the instance's shared memory.

        A live camera's frames in flight still go out, so stages stop one after the other. Files stopped
        by a signal keep what is encoded by then: every stage stops at once (seconds saved; an encoder
        finalises what it has written while the others exit).
        """
        grace_s = grace_s or self.cfg.engine.stop_timeout_s
        order = [(stage,) for stage in STOP_ORDER]
        if self.stop_signal is not None and not any(self._is_live(c) for c in self.cfg.cameras):
            order = [STOP_ORDER]
        for child in self.children.values():
            if child.last_beat is None and child.process.poll() is None:
                # Still starting (a model load, a C call that would hold a signal for seconds): it holds
                # no frame yet, and what it made is removed with the instance below.
                child.process.kill()
                child.process.wait()
        for stages in order:
            group = [c for c in self.children.values() if c.stage in stages and c.process.poll() is None]
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
        self._remove_instance(discard)

    def _remove_instance(self, discard: bool = False) -> None:
        """Once no stage runs: the instance's shared memory and sockets go, then its locks."""
        for name in instance_segments(self.instance):
            unlink(name)
        shutil.rmtree(self.endpoints.dir, ignore_errors=True)
        self._release_outputs(discard)
        self.instance_lock.release()

    @staticmethod
    def _is_live(camera: CameraConfig) -> bool:
        try:
            return is_live(camera.source, camera.live)
        except AnonError:
            return False

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
