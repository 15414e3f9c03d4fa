"""The launcher starts every stage, restarts the ones that die, and stops them all in order.

Consumers start before producers (encode, composite, detect, then one capture per camera) and stop
after them: captures stop reading and finish what is in flight, the chain drains, then detectors,
compositor and encoder go, then sockets, then shared memory. A stage that exits 2 met a user error
(bad input): the engine reports it and stops. Any other death is restarted, up to `restart_limit`
times a minute. The process factory and the clock are attributes so tests can swap in fakes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import yaml
import zmq
from pydantic import ValidationError

from anonengine import messages, models
from anonengine.config import CameraConfig, EngineConfig, HttpConfig, error_text, split_listen
from anonengine.curve import CurveClient, curve_clients_folder, load_key, write_public_key
from anonengine.engine import metrics, stagehost
from anonengine.engine.runtime import Endpoints, bind_tap, heartbeat_s, log_malformed, receive_waiting
from anonengine.errors import AnonError, ConfigError, InputError, ModelError, OutputError, raise_all
from anonengine.interrupts import answered_stop_signals, plural
from anonengine.locks import FileLock, LockBusy, holder, is_locked, output_lock_path, process_alive
from anonengine.paths import as_text, partial_metadata_path, partial_path, redacted
from anonengine.recording import segments_folder
from anonengine.rundir import private_dir, run_dir_path
from anonengine.shm import SHM_DIR, instance_segments, made_by, remove_stale_segments, unlink
from anonengine.sources import SourceKind, classify, is_live, malformed_url, resolve_stream, unknown_protocol
from anonengine.tap import MAX_TAP_MESSAGE_BYTES
from anonengine.video import claim_output, earlier_recording, refuse_unreplaceable

log = logging.getLogger("anonengine.launcher")

USER_ERROR = 2
STOP_ORDER = ("capture", "detect", "composite", "encode")
FAILED_GRACE_S = 3.0
RESTART_BACKOFF_MAX_S = 10.0
SNAPSHOT_EVERY_S = 0.5
DEGRADED_SAY_EVERY_S = 60.0
# "Running well again" is said once a camera has run well this long: a live camera whose sender stopped was said
# well again when the stall let out the two frames FFmpeg held, 1.5 s before its capture's word of the loss came.
WELL_AGAIN_AFTER_S = 3.0
QUIET_BEATS = 2.5  # a stage that missed this many heartbeats is named as the cause of a camera's frames dropped


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
    restarted: int = 0  # times it was started again since the engine started

    @property
    def up(self) -> bool:
        """Running and heard from since it was last started."""
        return self.restart_at is None and self.last_beat is not None and self.process.poll() is None

    @property
    def finished(self) -> bool:
        """A capture whose stream ended (a file read to its end, a camera detached): done, not down."""
        return self.stage == "capture" and self.process is not None and self.process.poll() == 0


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
    return process_alive(int(instance[1:]))


class Launcher:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg.model_copy(deep=True)
        # The default run folder is found once, here: the stages get its path (they might see another $XDG_RUNTIME_DIR).
        self.cfg.engine.run_dir = str(run_dir_path(cfg.engine.run_dir))
        self.instance = cfg.engine.instance or f"p{os.getpid()}"
        self.run_id = uuid.uuid4().hex  # this run's recording segments, resumed by a restarted encoder
        self.code = code_files()  # what a restarted stage runs: the code on disk then, not at the engine's start
        self.endpoints = Endpoints(self.cfg.engine.run_dir, self.instance, cfg.engine.composite_workers)
        # `ipc` made this instance's own socket here too, for the stages and whoever reads the config.
        self.cfg.tap.endpoint = self.tap_endpoint = self.endpoints.tap_endpoint(self.cfg.tap)  # '' when off
        # With a CURVE tap: the launcher's own key pair (made at start, listed in the instance's tap-clients),
        # with which it may subscribe to its engine's tap (the preview page).
        self.tap_client: CurveClient | None = None
        self.children: dict[str, Child] = {}
        self.output_locks: dict[str, FileLock] = {}  # camera -> its output's lock, until the camera is done
        self.compositor_of: dict[str, int] = {}  # camera -> its composite worker, kept across re-attaches
        self.done: dict[str, messages.CameraDone] = {}
        self.idle_said_at: frozenset[str] = frozenset()  # the cameras done when the engine last said it was idle
        self.stats: dict[tuple[str, str], dict] = {}
        self.sources: dict[str, messages.SourceStatus] = {}  # live sources' states, by camera
        # Counters that outlive the processes counting them (a restarted or re-attached capture counts from 0;
        # a Prometheus counter must never go back): reconnects of the cameras' earlier captures, restarts.
        self.earlier_reconnects: dict[str, int] = {}
        self.connected: set[str] = set()  # cameras whose live source connected since they were attached
        self.outputs_written: set[Path] = set()  # every camera output this engine claimed (`_claim_camera`)
        self.frames_out: dict[str, int] = {}  # each camera's most frames out said: a count never goes back
        self.out_at_attach: dict[str, int] = {}  # each camera's frames out when it was last attached
        self.restart_totals: dict[str, int] = {}
        self.malformed = 0  # messages dropped as garbage, on the events and control sockets
        self.progress: dict[str, int] = {}  # camera -> frames its encoder has written: where a capture resumes
        self.failure: str | None = None
        self.failed_cameras: dict[str, str] = {}
        self.detached: set[str] = set()  # cameras whose capture the launcher told to stop (`detach`)
        self.stop_requested = False
        self.stop_signal: int | None = None  # the signal that asked for the stop, if one did
        self.spawn = stagehost.StageHost(_project_root()) if stagehost.available() else subprocess.Popen  # tests swap it
        self.clock = time.monotonic
        self.on_stats = None  # called with `stats` whenever counters arrive (progress bars)
        self.tap_relay: TapRelay | None = None
        self.http = None  # the HTTP server (engine.http.HttpServer), imported only when served
        self.context = zmq.Context()
        self.tally = metrics.Tally()  # every stage process's counters, for metrics and status
        self.frame_rates = metrics.FrameRates(lambda: self.clock())
        self.obscuring = metrics.Obscuring(lambda: self.clock())
        self.dropping = metrics.Dropping(lambda: self.clock())
        self.behind: set[str] = set()  # cameras the engine is behind (`metrics.BEHIND_SHARE`, with hysteresis)
        self.degraded_said: dict[str, tuple[float, str]] = {}  # camera -> when its being degraded was last logged, why
        self.degraded_told: set[str] = set()  # cameras whose being degraded was logged, and not its end yet
        self.running_since: dict[str, float] = {}  # camera -> when it was last seen running well after trouble
        self.quiet_spells: dict[str, tuple[float, float]] = {}  # stage -> (when last seen silent, for how long)
        self.snapshot: metrics.Snapshot | None = None  # replaced whole every SNAPSHOT_EVERY_S (HTTP thread reads it)
        self._snapshot_at = float("-inf")

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Takes the instance, checks what can be checked, then starts every stage.

        Everything that can fail on the user's input fails here, with one line, before any stage runs.
        """
        check_config(self.cfg)  # what `launch --validate-config` checks, before anything is made
        self._take_instance()
        try:
            self._check_tap_endpoint()
            self._start_http()
            # Every camera's output: a second engine on a config's outputs was told of the first camera's alone.
            raise_all(list(self._claimed_all(self.cfg.cameras)))
            if self.http is not None:  # said once the cameras are taken: a second run on an output fails first
                log.info("metrics, health and previews at %s", self.http.url)
            self._start()
        except BaseException:
            for child in self.children.values():  # started before the failure: they go with it
                if child.process is not None and child.process.poll() is None:
                    child.process.kill()
                    child.process.wait()
            self._stop_http()
            self._remove_instance()
            raise

    def _start_http(self) -> None:
        """Metrics, health and previews. The default address is taken when free (a second engine on this
        host goes on without, and says so); any other must be free."""
        if self.cfg.http.listen == "off":
            return
        from anonengine.engine.http import HttpServer, HttpServerError

        try:
            self.http = HttpServer(self.cfg.http, lambda: self.snapshot, self._tap_connect())
        except HttpServerError as exc:
            if self.cfg.http.listen != HttpConfig.model_fields["listen"].default:
                raise EngineFailed(str(exc)) from None
            log.warning("%s; this engine serves no metrics or previews (set http.listen, or --http, to another "
                        "address)", exc)
            return

    def _stop_http(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None

    def _tap_connect(self):
        """How the preview page subscribes to the tap (anonymized frames only), or None with the tap off."""
        if not self.tap_endpoint:
            return None

        def connect(context: zmq.Context) -> zmq.Socket:
            sock = context.socket(zmq.SUB)
            sock.setsockopt(zmq.RCVHWM, 2)  # the latest frames, not all: previews skip what they cannot show
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_TAP_MESSAGE_BYTES)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            if self.tap_client is not None:  # a TCP tap lets in the launcher's own key (made at start)
                self.tap_client.apply(sock)
            sock.connect(self.tap_endpoint)
            return sock

        return connect

    def _take_instance(self) -> None:
        run_dir = private_dir(self.cfg.engine.run_dir)  # owner-only, or refused with one line
        try:
            self.instance_lock = FileLock(instance_lock_path(run_dir, self.instance)).acquire()
        except LockBusy as busy:
            raise EngineFailed(f"engine instance {self.instance} is already running in {run_dir}{busy.owner}") from None
        except OSError as exc:
            raise EngineFailed(f"cannot use the run folder {run_dir}: {exc.strerror}") from None

    def _check_tap_endpoint(self) -> None:
        """A busy or unusable tap address is the user's to fix: one line now, not a crash loop later (its
        CURVE keys were read by `check_config`)."""
        if self.tap_endpoint in ("", self.endpoints.tap) or self.cfg.engine.encode_workers > 1:
            # ipc: in this instance's own folder; several encoders: the relay binds the tap itself, in
            # _start, before any stage runs.
            return
        probe = self.context.socket(zmq.XPUB)
        try:
            probe.bind(self.tap_endpoint)
        except zmq.ZMQError as exc:
            raise EngineFailed(f"cannot open the tap at {self.tap_endpoint}: {zmq.strerror(exc.errno)}") from None
        finally:
            probe.close(linger=0)

    def _claimed_all(self, cameras: list[CameraConfig]) -> Iterator[AnonError]:
        """Claims each camera's output (`_claim_camera`); the problems found, every one."""
        for camera in cameras:
            try:
                self._claim_camera(camera)
            except AnonError as exc:
                yield exc

    def _claim_camera(self, camera: CameraConfig) -> None:
        """Checks what can be known of a camera before its capture starts (a file source exists, its output
        can be written) and takes its output's lock, held until the camera is done: the encoder writes
        under it, and a second engine or run on the same output is refused at once."""
        raise_all(camera_problems(camera))
        try:
            # An http(s) source is asked here, once, whether it is a stream: the capture reads that from its
            # camera's config.
            resolve_stream(camera)
        except InputError as exc:
            raise InputError(f"camera {camera.name}: {exc}") from None
        running = [other for other in self.cfg.cameras
                   if (child := self.children.get(f"capture-{other.name}")) is not None and child.process.poll() is None]
        raise_all(shared_file_problems(camera, running))
        if not camera.output:
            return
        output = Path(camera.output)
        # A failed run removes its partial files: an earlier run's, there before it, are set aside first.
        partials = (partial_metadata_path(camera.metadata),) if camera.metadata else ()
        # A live camera's earlier recording is kept, and so is an output this engine wrote already, whatever comes
        # next: a live camera detached and attached again with a file had its recording replaced, without a word (an
        # operator's trial).
        wrote = output.resolve() in self.outputs_written
        try:
            keep = earlier_recording(camera.metadata, self._is_live(camera) or wrote, self.cfg.encoder.keep_segments)
            self.output_locks[camera.name] = claim_output(output, partials=partials, keep=keep)
        except OutputError as exc:
            raise OutputError(f"camera {camera.name}: {exc}") from None
        self.outputs_written.add(output.resolve())

    def _release_output(self, camera: str) -> None:
        lock = self.output_locks.pop(camera, None)
        if lock is not None:
            lock.release()

    def _camera_failed(self, camera: str, reason: str) -> None:
        """One camera of a running engine failed (a bad source, an output it could not finish): the others go
        on; the camera is reported, in the log and in its status, and lets go of its output."""
        log.error("camera %s stopped: %s", camera, reason)
        self.failed_cameras[camera] = reason
        self._stop_capture(camera)  # its output failed while it ran: nothing more of it can be written
        self._release_output(camera)

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
        private_dir(self.endpoints.dir)
        self._make_tap_client()
        self.config_path = self.endpoints.dir / "engine.yaml"
        self.config_path.write_text(yaml.safe_dump(self.cfg.model_dump(mode="json")))
        self.events = self.context.socket(zmq.PULL)
        self.control = self.context.socket(zmq.REP)
        for sock, endpoint in ((self.events, self.endpoints.events), (self.control, self.endpoints.control)):
            sock.setsockopt(zmq.MAXMSGSIZE, messages.MAX_MESSAGE_BYTES)
            sock.bind(endpoint)
        if self.tap_endpoint and self.cfg.engine.encode_workers > 1:
            self.tap_relay = TapRelay(self.context, self.endpoints, self.cfg.tap)
        # The first stage waits for the fork server's imports (stagehost): meanwhile /healthz says the
        # launcher lives, /readyz that the engine starts.
        self.take_snapshot()
        for w in range(self.cfg.engine.encode_workers):
            self._add(f"encode{w}", "encode", w, extra=["--worker", str(w)])
        for w in range(self.cfg.engine.composite_workers):
            self._add(f"composite{w}", "composite", w, extra=["--worker", str(w)])
        for w in range(self.cfg.engine.detect_workers):
            self._add(f"detect{w}", "detect", w, extra=["--worker", str(w)])
        for camera in self.cfg.cameras:
            self.attach(camera)

    def _make_tap_client(self) -> None:
        """With a CURVE tap, a key pair for the launcher's own subscription, its public key listed in the
        instance's tap-clients folder (which only this user can enter), its secret kept in memory only."""
        if not (self.tap_endpoint and self.cfg.tap.curve):
            return
        server_public, _ = load_key(self.cfg.tap.curve_server_key, secret=True)
        self.tap_client = CurveClient.ephemeral(server_public)
        private_dir(self.endpoints.tap_clients)
        write_public_key(self.endpoints.tap_clients / "launcher.key", self.tap_client.public)

    def _remove_stale_run_dirs(self) -> None:
        """Removes the folders of dead instances; what this user may not remove is left, never fatal."""
        root = Path(self.cfg.engine.run_dir)
        if root.is_dir():
            for folder in root.iterdir():
                try:
                    if folder.is_dir() and not instance_alive(folder.name, root):
                        shutil.rmtree(folder, ignore_errors=True)
                        instance_lock_path(root, folder.name).unlink(missing_ok=True)
                except PermissionError as exc:
                    log.info("left %s of a dead engine: %s", folder, exc.strerror)

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
        # What an earlier process of that name said (a camera that failed, attached again) is not this one's.
        self._error_file(child).unlink(missing_ok=True)
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
        self.detached.discard(camera.name)
        self.done.pop(camera.name, None)  # a camera detached or ended before comes back as a new stream
        self.out_at_attach[camera.name] = self.frames_out.get(camera.name, 0)
        self.behind.discard(camera.name)
        self.connected.discard(camera.name)
        if (source := self.sources.pop(camera.name, None)) is not None:  # and its source, if any, anew
            self.earlier_reconnects[camera.name] = self.earlier_reconnects.get(camera.name, 0) + source.reconnects
        # A camera attached again keeps its compositor (and so its encoder, which may still be finishing
        # the same output file).
        compositor = self.compositor_of.setdefault(camera.name, self._least_busy_compositor())
        # Each attachment is a stream of its own, kept by its capture's restarts (`StreamInfoMsg.stream`).
        extra = ["--camera", camera.name, "--camera-json", json.dumps(camera.model_dump(mode="json")),
                 "--composite-worker", str(compositor), "--stream", uuid.uuid4().hex[:16]]
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
        """Stops a camera's capture (its stream ends normally), or takes a failed camera off the engine's list
        (its failure stayed in `status` and held /readyz at 503 until the engine restarted); False: neither."""
        stopped = self._stop_capture(camera)
        if camera not in self.failed_cameras:
            return stopped
        del self.failed_cameras[camera]  # its capture may be draining still: off the list all the same
        self.cfg.cameras = [c for c in self.cfg.cameras if c.name != camera]
        return True

    def _stop_capture(self, camera: str) -> bool:
        child = self.children.get(f"capture-{camera}")
        if child is None or child.process.poll() is not None:
            return False
        self.detached.add(camera)
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
                if self._all_cameras_done():
                    if self.cfg.engine.exit_when_done:
                        break
                    self._say_idle()
                self._snapshot_if_due()
            failed = self.failure is not None
        finally:
            # After a failure the chain is broken and nothing can drain: short grace.
            self.stop(grace_s=FAILED_GRACE_S if self.failure else None,
                      discard=failed and self.cfg.engine.exit_when_done)
        if self.failure:
            raise EngineFailed(self.failure)
        if self.failed_cameras:  # the others went on; the engine's exit says it all the same (it was 0)
            log.error("%s failed: %s", plural(len(self.failed_cameras), "camera"),
                      "; ".join(f"{name} ({reason})" for name, reason in self.failed_cameras.items()))
            return 1
        return 0

    def _say_idle(self) -> None:
        """Once every camera is done (files only), that the engine goes on: it had run on in silence."""
        done = frozenset(self.done)
        if done != self.idle_said_at:
            self.idle_said_at = done
            log.info("every camera is done (%d); the engine keeps running for cameras `anonengine attach` adds "
                     "(Ctrl-C or SIGTERM stops it)", len(done))

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
                if message.error is not None:
                    # Frames were anonymized but their output could not be made (a full disk): a job that
                    # ends so failed, and says why; a running engine reports the camera and goes on.
                    if self.cfg.engine.exit_when_done:
                        self.failure = message.error
                    else:
                        self._camera_failed(message.camera, message.error)
                if (dropped := self.dropped_frames(message.camera)) and message.error is None:
                    log.info("camera %s: %d of its frames dropped in all", message.camera, dropped)
                if not message.complete:
                    log.info("camera %s stopped after %d frames; its partial output: %s", message.camera,
                             message.frames, message.output or "(none)")
                elif message.output is None and not message.frames:  # a tap-only camera's frames have none either
                    log.info("camera %s ended before its first frame: no output", message.camera)
            elif isinstance(message, messages.Progress):
                self.progress[message.camera] = max(self.progress.get(message.camera, 0), message.next_seq)
            elif isinstance(message, messages.SourceStatus):
                self._on_source_status(message)
            elif isinstance(message, messages.Stats):
                self._on_heartbeat(message.pid)
                self.tally.add(message)
                if message.stage == "encode":
                    for camera in message.cameras:
                        self.frame_rates.report(camera, self.tally.camera_total("encode", "frames", camera))
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
        if before is not None and status.reconnects < before.reconnects:  # another capture's feed, from 0
            self.earlier_reconnects[status.camera] = self.earlier_reconnects.get(status.camera, 0) + before.reconnects
        # A live source's losses and returns are said by its capture's feed (`LiveFeed`), which sees each of them.
        if status.state == "running" and status.camera not in self.connected:
            self.connected.add(status.camera)
            log.info("camera %s: source connected", status.camera)
        elif status.state == "connecting" and status.error and (before is None or before.error != status.error):
            log.warning("camera %s: cannot connect yet (%s); trying again", status.camera, status.error)

    def _on_control(self, request: messages.Message) -> messages.Reply:
        try:
            if isinstance(request, messages.Attach):
                if self.stop_requested:  # its capture started, found the launcher gone and left: "ok" for nothing
                    return messages.Reply(False, "the engine is stopping: no camera can be attached")
                camera = CameraConfig.model_validate(request.camera)
                if (problem := protocol_problem(camera)) is not None:
                    # Its capture would fail at once: "attach: ok" for a camera failed 0.1 s later.
                    return messages.Reply(False, str(problem))
                self.attach(camera)
                # The log had no word of an operator's attach or detach, only of what followed.
                log.info("camera %s attached: %s", camera.name, redacted(camera.source))
                return messages.Reply(True)
            if isinstance(request, messages.Detach):
                if self.detach(request.camera):
                    log.info("camera %s detached", request.camera)
                    return messages.Reply(True)
                return messages.Reply(False, f"camera {request.camera} is not attached")
            if isinstance(request, messages.StatusRequest):
                return messages.Reply(True, status=self.status())
            return messages.Reply(False, f"not a control request: {type(request).__name__}")
        except ValidationError as exc:
            # Named by the camera, and by its field where one is wrong (a check of the whole camera, such as
            # its output being its source, has none: the answer read "invalid camera : output ...").
            err = exc.errors()[0]
            camera = getattr(request, "camera", None)
            name = camera.get("name", "") if isinstance(camera, dict) else ""
            field = ".".join(map(str, err["loc"]))
            return messages.Reply(False, f"invalid camera {name}: {f'{field}: ' if field else ''}{error_text(err)}")
        except Exception as exc:  # noqa: BLE001 - the answer carries the error to the client
            return messages.Reply(False, str(exc).splitlines()[0])

    def status(self) -> dict:
        """`anonengine status`: the snapshot the HTTP server shows, and each stage's latest counters."""
        return {**self.take_snapshot().as_status(), "stats": {f"{k[0]}[{k[1]}]": v for k, v in self.stats.items()}}

    def _snapshot_if_due(self) -> None:
        if self.clock() - self._snapshot_at >= SNAPSHOT_EVERY_S:
            self.take_snapshot()

    def take_snapshot(self) -> metrics.Snapshot:
        """What the engine is doing now, for /metrics, /readyz, the page and `anonengine status`."""
        self._snapshot_at = self.clock()
        self.snapshot = metrics.Snapshot(
            instance=self.instance, taken=time.time(), stopping=self.stop_requested,
            cameras=tuple(self._camera_view(camera) for camera in self.cfg.cameras),
            # A finished capture is no stage that is down (`stage_up 0` is what an operator's alert watches for).
            stages=tuple(metrics.StageView(c.name, c.stage, c.up, c.restarted) for c in self.children.values()
                         if not c.finished),
            restart_totals=dict(self.restart_totals),
            malformed=self.malformed + self.tally.total_of_all("malformed"),
            shared_memory_bytes=shared_memory_bytes(self.instance),
            histograms={name: h for name in ("latency_seconds", "batch_size")
                        if (h := self.tally.histogram("detect", name)) is not None},
            tap_dropped=self.tally.total("encode", "tap_dropped"),
        )  # fmt: skip
        self._say_degraded(self.snapshot)
        return self.snapshot

    def _say_degraded(self, snapshot: metrics.Snapshot) -> None:
        """Logs a camera becoming degraded, and why, again when the why changes and at most every
        DEGRADED_SAY_EVERY_S while it does not, and its running well again (for WELL_AGAIN_AFTER_S) after a time
        said: the log had said nothing of 13 minutes with most frames dropped."""
        now = self.clock()
        for camera in snapshot.cameras:
            if camera.state == metrics.DEGRADED:
                said_at, said = self.degraded_said.get(camera.name, (float("-inf"), ""))
                why = re.sub(r"\d+", "N", camera.reason)  # the troubles, whatever their figures
                if why != said or now - said_at >= DEGRADED_SAY_EVERY_S:
                    log.warning("camera %s: degraded: %s", camera.name, camera.reason)
                    self.degraded_said[camera.name] = (now, why)
                    self.degraded_told.add(camera.name)
            if camera.state != metrics.RUNNING or camera.name not in self.degraded_told:
                self.running_since.pop(camera.name, None)
            elif now - self.running_since.setdefault(camera.name, now) >= WELL_AGAIN_AFTER_S:
                log.info("camera %s: running well again", camera.name)
                self.degraded_told.discard(camera.name)

    def obscured_frames(self, camera: str) -> int:
        """A camera's frames that went out obscured whole: as its encoder counted them in its output, or as its
        compositors reported them, whichever knows more (an encoder's successor counts its predecessor's only
        from their metadata; a compositor's last report may come after the camera's end)."""
        done = self.done.get(camera)
        return max(done.obscured if done is not None else 0, self.tally.camera_total("composite", "obscured", camera))

    def dropped_frames(self, camera: str) -> int:
        """A live camera's frames never numbered: the engine was behind it, or its number could not be kept."""
        return sum(self.tally.camera_total("capture", counter, camera)
                   for counter in ("dropped_busy", "dropped_at_source", "dropped_unnumbered"))

    def _camera_view(self, camera: CameraConfig) -> metrics.CameraView:
        name, tally = camera.name, self.tally
        # An encoder killed outright took the frames it wrote since its last report out of the count; its
        # successor finds them on disk (status said in 168, out 166, with 168 frames in the recording).
        out = max(tally.camera_total("encode", "frames", name), tally.camera_total("encode", "recorded", name),
                  self.frames_out.get(name, 0))
        self.frames_out[name] = out
        frames = {
            # A capture killed outright takes the frames it sent since its last report out of its count, not out
            # of the engine: every frame out came in (status showed 453 out of 418 in).
            "in": max(tally.camera_total("capture", "frames", name), out),
            "out": out,
            "dropped": self.dropped_frames(name),
            "late": tally.camera_total("composite", "late", name),
            "obscured": tally.camera_total("composite", "obscured", name),
        }
        fps = self.frame_rates.rate(name)
        obscuring = self.obscuring.recent(name, frames["obscured"])
        # Behind it: frames dropped at the door (not those whose number a restarted capture could not keep).
        thinned = sum(tally.camera_total("capture", counter, name) for counter in ("dropped_busy", "dropped_at_source"))
        started = out > self.out_at_attach.get(name, 0)
        if not started:
            # Counted from its first frame out, as at the engine's start (a camera attached again, its counters
            # carried on, was said degraded at once by 7 frames dropped as it connected: /readyz 503 for 13 s).
            self.dropping.restart(name)
        dropping = self.dropping.share(name, frames["in"] + thinned, thinned)
        # Behind from a tenth dropped, caught up under a twentieth: a camera about a tenth behind flipped
        # between the two every few seconds, /readyz with it.
        if dropping >= metrics.BEHIND_SHARE or (name in self.behind and dropping >= metrics.BEHIND_SHARE / 2):
            self.behind.add(name)
        else:
            self.behind.discard(name)
        source = self.sources.get(name)
        live = self._is_live(camera)
        silent = self.dropping.idle_s(name) if live else 0.0
        state, reason = self._camera_state(name, source, started, obscuring,
                                           dropping if name in self.behind else None, silent)
        error = self.failed_cameras.get(name) or (source.error if source else None)
        if state == metrics.DONE and source is not None:
            # Its source is read no more: a camera detached before it ever connected stayed "connecting", with the
            # last error of its tries (an operator's trial).
            source = msgspec.structs.replace(source, state=messages.SourceState.STOPPED)
            error = self.failed_cameras.get(name)
        return metrics.CameraView(
            name=name, state=state, reason=redacted(reason), live=live, frames=frames, fps=fps,
            reconnects=self.earlier_reconnects.get(name, 0) + (source.reconnects if source else 0),
            in_flight=tally.camera_total("capture", "in_flight", name),
            waiting=tally.camera_total("composite", "waiting", name),
            last_error=redacted(error) if error else None,
            source=source.state.value if source else None, dropping=dropping,
        )  # fmt: skip

    def _camera_state(self, name: str, source: messages.SourceStatus | None, started: bool,
                      obscuring: bool, behind_by: float | None = None, silent_s: float = 0.0) -> tuple[str, str]:
        """`behind_by`: the share of a camera's frames dropped lately, where the engine is behind it; `silent_s`:
        how long since a frame of it came (a live camera's)."""
        capture = self.children.get(f"capture-{name}")
        if name in self.failed_cameras:
            return metrics.FAILED, self.failed_cameras[name]
        if name in self.done:
            done = self.done[name]
            if done.output is None and done.frames == 0:
                return metrics.DONE, "ended before its first frame: no output"
            return metrics.DONE, "" if done.complete else "stopped before the end of its stream"
        if self.stop_requested:
            return metrics.STOPPING, ""
        if capture is None or capture.restart_at is not None:
            return metrics.RESTARTING, "its capture died"
        if capture.process.poll() is not None:
            return metrics.STOPPING, "stream ended; finishing its output"
        if source is not None and source.state.value in (metrics.CONNECTING, metrics.RECONNECTING):
            return source.state.value, source.error or ""
        if not started:  # since it was attached
            return metrics.STARTING, "no frame out yet"
        troubles = [f"frames obscured in the last {metrics.DEGRADED_WINDOW_S:g} s (detections late or failed)"] if obscuring else []
        if silent_s >= metrics.SILENT_S:
            troubles.append(f"no frame from it for {silent_s:.0f} s")
        if behind_by is not None:
            # A stage that stopped (a hung driver, SIGSTOP) holds every frame up too: the advice to lighten the load
            # was said for the 4 s before the stage was killed as hung (an operator's trial).
            why = self._quiet_stages() or "more cameras, frames a second or pixels than this machine keeps up with"
            # The thresholds said with it: under the tenth that made it degraded, "6% dropped" read as a camera
            # degraded under its own threshold (an operator's trial). Always, so that the log's "why" stays the same.
            troubles.append(f"{behind_by:.0%} of its frames dropped in the last {metrics.DEGRADED_WINDOW_S:g} s "
                            f"(degraded from {metrics.BEHIND_SHARE:.0%} until under {metrics.BEHIND_SHARE / 2:.0%}), "
                            f"the engine behind it: {why}")
        if troubles:
            return metrics.DEGRADED, "; ".join(troubles)
        return metrics.RUNNING, ""

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
                if self._stopped_from_outside(child):
                    # A live source never ends: a signal to its capture alone (an operator's `kill`) ended the
                    # camera, which status then called done and /readyz ready, while its sender went on.
                    self._camera_failed(child.camera, "its capture was stopped by a signal from outside the engine "
                                        "(`anonengine detach` stops a camera); `anonengine attach` starts it again")
                    del self.children[child.name]
                continue  # its stream ended
            # Its rings (a capture's frames, a compositor's output), which only it would have unlinked: freed
            # once the stages reading them let go (they drop the rings whose segment is gone).
            for name in made_by(self.instance, child.process.pid):
                unlink(name)
            error = self._error_file(child)  # what it said of why it left: a user's error, a restart's reason
            said = error.read_text() if error.is_file() else None
            if code == USER_ERROR:
                message = said if said is not None else f"{child.name} stopped on an error"
                if child.stage == "capture" and not self.cfg.engine.exit_when_done:
                    self._camera_failed(child.camera, message)
                    del self.children[child.name]
                    continue
                self.failure = message
                return
            now = self.clock()
            child.restarts = [t for t in child.restarts if now - t < 60] + [now]
            child.restarted += 1
            self.restart_totals[child.stage] = self.restart_totals.get(child.stage, 0) + 1
            changed = self._code_changed()
            reason = f" ({said})" if said is not None else ""
            if len(child.restarts) > self.cfg.engine.restart_limit:
                self.failure = (f"{child.name} died {len(child.restarts)} times within a minute (exit {code})"
                                f"{reason}{changed}")
                return
            # The first restart is at once; deaths that follow in the minute wait 0.5 s, 1 s, 2 s... (at
            # most 10 s), so a stage that cannot start does not spin.
            delay = 0.0 if len(child.restarts) == 1 else min(RESTART_BACKOFF_MAX_S, 0.5 * 2 ** (len(child.restarts) - 2))
            log.warning("%s exited with %s%s; restarting%s%s", child.name, code, reason,
                        f" in {delay:g} s" if delay else "", changed)
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
        """Stops every stage, then removes sockets and the instance's shared memory.

        A live camera's frames in flight still go out, so stages stop one after the other. Files stopped
        by a signal keep what is encoded by then, and cameras all done have nothing in flight: every stage
        stops at once (seconds saved; an encoder finalises what it has written while the others exit).
        """
        grace_s = grace_s or self.cfg.engine.stop_timeout_s
        self.stop_requested = True  # a job that ended stops too: its cameras say "stopping" from now
        if self.stop_signal is not None:  # an operator's log ended with the stages' last lines, no reason
            log.info("stopping on %s", signal.Signals(self.stop_signal).name)
        self.take_snapshot()
        order = [(stage,) for stage in STOP_ORDER]
        if self._all_cameras_done() or (
                self.stop_signal is not None and not any(self._is_live(c) for c in self.cfg.cameras)):
            order = [STOP_ORDER]
        # Still starting (a model load, a C call that would hold a signal for seconds): it holds no frame yet,
        # and what it made is removed with the instance below.
        running = [c for c in self.children.values() if c.process.poll() is None]
        killed = [c for c in running if c.last_beat is None]
        if {c.stage for c in killed} - {c.stage for c in running if c.last_beat is not None} - {"capture"}:
            # No worker of a stage is up: the frames in flight cannot get past it, and a live camera's capture
            # waited for them in vain (capture.STOP_DRAIN_IDLE_S, 5 s; seen: a Ctrl-C 2.5 s after the command
            # took 7.7 s). The captures go too, their rings with the instance. (With another worker of that
            # stage up, the frames it can finish drain as before.)
            killed += [c for c in running if c.stage == "capture" and c.last_beat is not None]
        for child in killed:
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
                    self._snapshot_if_due()  # /readyz says "stopping", /healthz that the launcher lives
                if child.process.poll() is None:
                    # After a failure, killing what cannot drain is expected, not worth a warning.
                    level = logging.INFO if self.failure else logging.WARNING
                    log.log(level, "%s did not stop in %.0f s; killing it", child.name, grace_s)
                    child.process.kill()
                    child.process.wait()
        self._pump(timeout_ms=0)
        self.take_snapshot()
        self._stop_http()
        if self.tap_relay is not None:
            self.tap_relay.close()
        self.context.destroy(linger=0)
        self._remove_instance(discard)
        log.info("stopped")

    def _remove_instance(self, discard: bool = False) -> None:
        """Once no stage runs: the instance's shared memory and sockets go, then its locks."""
        for name in instance_segments(self.instance):
            unlink(name)
        shutil.rmtree(self.endpoints.dir, ignore_errors=True)
        self._release_outputs(discard)
        self.instance_lock.release()

    def _quiet_stages(self) -> str:
        """The frames' stages (detect, composite, encode) that sent no heartbeat for QUIET_BEATS of their beats (well
        before `engine.stall_s` kills them as hung), now or within the last DEGRADED_WINDOW_S, whose frames dropped
        meanwhile are in the window still (once woken, the detector's stop was blamed on the load): "detect0 silent
        for 5 s", "detect0 was silent for 6 s"; "" where none."""
        now = self.clock()
        beat_s = heartbeat_s(self.cfg)
        quiet = {c.name for c in self.children.values() if c.stage in ("detect", "composite", "encode")
                 and c.last_beat is not None and now - c.last_beat > QUIET_BEATS * beat_s and c.process.poll() is None}
        for name in quiet:
            self.quiet_spells[name] = (now, now - self.children[name].last_beat)
        self.quiet_spells = {name: spell for name, spell in self.quiet_spells.items()
                             if now - spell[0] < metrics.DEGRADED_WINDOW_S}
        return ", ".join(f"{name} {'silent' if name in quiet else 'was silent'} for {silent:.0f} s"
                         for name, (_, silent) in sorted(self.quiet_spells.items()))

    def _code_changed(self) -> str:
        """"; the engine's code changed since it started (...): start it again" where its files on disk did (an
        upgrade under the running engine: a restarted stage meets code of two versions, and may die of it), else
        "" (an operator's trial: "encode0 exited with 1; restarting in 0.5 s", again and again, and no word why)."""
        changed = sorted(path for path, stamp in code_files().items() if self.code.get(path) != stamp)
        if not changed:
            return ""
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        return f"; the engine's code changed since it started ({shown}): start it again"

    def _stopped_from_outside(self, capture: Child) -> bool:
        """Whether a capture that ended normally was a live source's (`sources`: it reported its feed) that
        neither the launcher nor a job's end stopped."""
        return (capture.camera in self.sources and capture.camera not in self.detached and not self.stop_requested
                and not self.cfg.engine.exit_when_done and capture.camera not in self.failed_cameras)

    @staticmethod
    def _is_live(camera: CameraConfig) -> bool:
        try:
            return is_live(camera.source, camera.live, camera.stream)
        except AnonError:
            return False

    def request_stop(self, signum: int | None = None) -> None:
        self.stop_requested = True
        if self.stop_signal is None:
            self.stop_signal = signum


def check_config(cfg: EngineConfig) -> None:
    """What can be known of a config before anything starts, found without starting, binding, locking or writing
    anything: `launch --validate-config` checks this, and `Launcher.start` (`launch`, `run`) before it takes its
    instance. Raises every problem found (`config_problems`): the one line of one, or Problems, a line each."""
    raise_all(config_problems(cfg))


def config_problems(cfg: EngineConfig) -> Iterator[AnonError]:
    """The user's one-line errors `check_config` finds, each camera's and the HTTP token's and tap keys', all of
    them: a config with several mistakes was mended one run at a time."""
    for number, camera in enumerate(cfg.cameras):
        yield from camera_problems(camera)
        yield from shared_file_problems(camera, cfg.cameras[:number])
    if cfg.http.listen != "off" and cfg.http.token_file:
        # Also on the default address, where a busy port only costs the engine its server (a warning): a token
        # that cannot be read is a mistake in the config.
        from anonengine.engine.http import read_token

        yield from _problem_of(read_token, cfg.http.token_file)
    if cfg.tap.endpoint and cfg.tap.curve:
        yield from _problem_of(load_key, cfg.tap.curve_server_key, secret=True)
        yield from _problem_of(curve_clients_folder, cfg.tap.curve_clients)


def output_lock_problems(cfg: EngineConfig) -> Iterator[AnonError]:
    """`launch --validate-config`: each camera's output another anonengine is writing (launch refuses it when it
    claims the output; validation had said "valid"). A probe: nothing is taken, no file made."""
    for camera in cfg.cameras:
        if camera.output and (busy := holder(output_lock_path(Path(camera.output)))) is not None:
            yield OutputError(f"camera {camera.name}: cannot write {camera.output}: another anonengine is writing "
                              f"it{busy.owner}")


def _problem_of(check, *args, **kwargs) -> Iterator[AnonError]:
    """The user's error a check that raises it raises, as a problem found; nothing where it passes."""
    try:
        check(*args, **kwargs)
    except AnonError as exc:
        yield exc


def config_models(cfg: EngineConfig) -> list[tuple[str, str]]:
    """The weights the config's detectors load, as (setting, model name or path): what launch fetches or finds
    before any stage starts (`commands.resolve_models`)."""
    det = cfg.anonymizer.detector
    named = [("anonymizer.detector.pose_model", det.pose_model),
             ("anonymizer.detector.seg_model", det.seg_model if cfg.anonymizer.method == "seg" else None),
             ("anonymizer.detector.bbox_model", det.bbox_model)]
    return [(setting, spec) for setting, spec in named if spec]


def check_models(cfg: EngineConfig) -> tuple[list[str], list[AnonError]]:
    """`launch --validate-config`: every model the config needs is a readable file, or official weights launch
    will download (`models.plan`: nothing is downloaded, copied or loaded). Returns a note for each model launch
    will fetch, and the user's one line (ModelError, named by its setting) for each it could not have."""
    notes, problems, seen = [], [], set()
    for setting, spec in config_models(cfg):
        if spec in seen:
            continue
        seen.add(spec)
        try:
            note = models.plan(spec)
        except ModelError as exc:
            problems.append(ModelError(f"{setting}: {exc}"))
            continue
        if note:
            notes.append(f"{setting}: {note}")
    return notes, problems


PORT_IN_USE = "the port is in use (another program listens there)"


def check_ports(cfg: EngineConfig) -> list[ConfigError]:
    """`launch --validate-config` only: binds each TCP address the config makes the engine listen at (http.listen,
    a tcp:// tap.endpoint) and lets it go at once, so a busy port is found now rather than at launch. Launch does not
    run this: it binds these itself (`Launcher._check_tap_endpoint`, `_start_http`), and a probe of its own
    before would only race them.

    Returns the user's one line (ConfigError, naming the setting and the address) for each address launch would
    refuse. The default HTTP address busy is not one: launch goes on without HTTP then, and says so (not said
    here: it is busy whenever another engine runs on this host)."""
    problems = []
    http = None  # held while the tap's address is tried: the two on one port are found too
    try:
        if cfg.http.listen != "off":
            try:
                http = _listen(cfg.http.listen)
            except OSError as exc:
                if cfg.http.listen != HttpConfig.model_fields["listen"].default:
                    problems.append(ConfigError(f"http.listen {cfg.http.listen}: {_bind_error(exc)}"))
        if cfg.tap.endpoint.startswith("tcp://"):
            error = _zmq_bind_error(cfg.tap.endpoint)
            if error is not None and http is not None:
                http.close()
                http = None
                if _zmq_bind_error(cfg.tap.endpoint) is None:
                    error = f"its port is http.listen's ({cfg.http.listen}): give the two different ports"
            if error is not None:
                problems.append(ConfigError(f"tap.endpoint {cfg.tap.endpoint}: {error}"))
    finally:
        if http is not None:
            http.close()
    return problems


def _listen(listen: str) -> socket.socket:
    """A listening socket at `listen` (HOST:PORT), bound as the engine's HTTP server binds it."""
    host, port = split_listen(listen)
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                reuse_port=False)


def _bind_error(exc: OSError) -> str:
    """Why an address could not be bound, in the user's words."""
    if isinstance(exc, socket.gaierror) or (exc.errno or 0) < 0:  # create_server re-raises getaddrinfo's as OSError
        return f"no such host ({(exc.strerror or str(exc)).split(' (while ')[0]})"
    return _bind_reason(exc.errno, os.strerror(exc.errno) if exc.errno else str(exc))


def _bind_reason(code: int | None, text: str) -> str:
    if code == errno.EADDRINUSE:
        return PORT_IN_USE
    if code == errno.EADDRNOTAVAIL:
        return f"{text} (not an address of this machine)"
    if code == errno.EACCES:
        return f"{text} (a port below 1024 needs root)"
    return text


def _zmq_bind_error(endpoint: str) -> str | None:
    """Why a ZeroMQ socket cannot bind `endpoint` (as the tap's does), or None: it could, and has let it go."""
    context = zmq.Context()
    try:
        probe = context.socket(zmq.XPUB)
        try:
            probe.bind(endpoint)
        except zmq.ZMQError as exc:
            return _bind_reason(exc.errno, zmq.strerror(exc.errno))
        finally:
            probe.close(linger=0)
    finally:
        context.term()  # once the socket is closed: its port is free again when this returns
    return None


def camera_problems(camera: CameraConfig) -> Iterator[AnonError]:
    """Each of a camera's source, output and metadata that cannot be used, a line each: a file source is there and
    holds a video, the output and metadata can be written (nothing is opened or taken). A live source may be down
    now and come later: it is not asked here."""
    for what in ("source", "output", "metadata"):
        name = getattr(camera, what) or ""
        if as_text(name) != name:
            # The stages' messages carry names as UTF-8: the capture died on its first message, 6 times.
            yield ConfigError(f"camera {camera.name}: the {what} {as_text(name)} is not named in UTF-8 (an old "
                              "archive's Latin-1?), which the engine's processes cannot pass on: rename it, or run "
                              "with --inline")
        elif what == "source":
            try:
                if classify(name).kind is SourceKind.FILE:
                    holds_video(name)
            except InputError as exc:
                yield InputError(f"camera {camera.name}: {exc}")
        elif name:
            try:
                if what == "output":
                    claim_output(Path(name), lock=False)
                else:
                    refuse_unreplaceable(Path(name), "metadata ")
            except OutputError as exc:
                yield OutputError(f"camera {camera.name}: {exc}")


def protocol_problem(camera: CameraConfig) -> ConfigError | None:
    """A camera whose URL names a protocol FFmpeg does not know (`unknown_protocol`), which `launch --validate-config`
    and `attach` refuse. Not among `camera_problems`: launch starts such a camera and fails it alone, the engine
    going on with the others."""
    if (hopeless := unknown_protocol(camera.source) or malformed_url(camera.source)) is None:
        return None
    return ConfigError(f"camera {camera.name}: cannot open video {camera.source}: {hopeless}")


def holds_video(path: str) -> None:
    """InputError unless FFmpeg opens the file `path` and finds a video stream in it. A file that holds none
    (text, a song) passed `--validate-config` and `attach` ("attach: ok"), and failed its camera once started."""
    import av

    from anonengine.video import main_video

    try:
        with av.open(path) as container:
            main_video(container)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not a video FFmpeg can read: {getattr(exc, 'strerror', None) or exc}") from None
    except IndexError:
        raise InputError(f"{path} holds no video stream") from None


def shared_file_problems(camera: CameraConfig, others: list[CameraConfig]) -> Iterator[OutputError]:
    """An OutputError for each file (output or metadata) `camera` would write that another of `others` writes: two
    writers of one file. (At launch the second camera's output lock was refused, "another anonengine is writing
    it", naming the launcher's own pid.)"""
    mine = [Path(path) for path in (camera.output, camera.metadata) if path]
    for other in others:
        if other.name == camera.name:
            continue
        theirs = {Path(path).resolve(): what for what in ("output", "metadata") if (path := getattr(other, what))}
        for path in mine:
            if path.resolve() in theirs:
                yield OutputError(f"camera {camera.name}: {path} is already the {theirs[path.resolve()]} of camera "
                                  f"{other.name}")


def shared_memory_bytes(instance: str) -> int:
    """What an instance's frame rings take in /dev/shm (a segment gone meanwhile counts nothing)."""
    total = 0
    for name in instance_segments(instance):
        try:
            total += (SHM_DIR / name).stat().st_size
        except OSError:
            pass
    return total


def stage_total(stats: dict[tuple[str, str], dict], stage: str, counter: str) -> int:
    """A counter added up over a stage's processes (e.g. frames written by every encoder)."""
    return sum(counters.get(counter, 0) for (name, _), counters in stats.items() if name == stage)


class TapRelay:
    """One tap endpoint for several encoders: XSUB (encoders connect) to XPUB (subscribers), in a thread.

    Subscriptions flow back to the encoders, so they still encode tap frames only while someone listens;
    the XPUB's high-water mark drops frames for a slow subscriber, as the single encoder's own would.
    """

    def __init__(self, context: zmq.Context, endpoints: Endpoints, tap) -> None:
        self.inbound = context.socket(zmq.XSUB)
        self.inbound.bind(endpoints.tap_relay)
        try:  # the same XPUB (and CURVE gate) as a single encoder's
            self.outbound, self.curve = bind_tap(context, endpoints.tap_endpoint(tap), tap, endpoints)
        except AnonError:
            self.inbound.close(linger=0)
            raise
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
        if self.curve is not None:  # after its socket, which the proxy thread closed
            self.curve.close()


def code_files() -> dict[str, int]:
    """The engine's Python files (anonengine/, services/), by path relative to the project, with their mtimes."""
    root = Path(_project_root())
    found = {}
    for package in ("anonengine", "services"):
        for path in (root / package).rglob("*.py"):
            with contextlib.suppress(OSError):
                found[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return found


def _project_root() -> str:
    """Folder from which `python -m services.X` imports (services/ is a top-level package)."""
    return str(Path(__file__).resolve().parents[2])


def launch(cfg: EngineConfig) -> Launcher:
    """Starts an engine with SIGINT/SIGTERM wired to an orderly stop; call `.run()` on the result."""
    launcher = Launcher(cfg)
    for sig in answered_stop_signals():
        signal.signal(sig, lambda signum, _frame: launcher.request_stop(signum))
    launcher.start()
    return launcher
