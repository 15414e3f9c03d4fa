"""Command-line verbs of the engine: launch, tap, attach, detach, status, keys; and `run` through the engine."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from anonengine.argparsing import redact_logs
from anonengine.engine import stagehost
from anonengine.errors import AnonError, ConfigError, InputError, raise_all
from anonengine.interrupts import INTERRUPTS, Interrupted, interrupted_line, plural
from anonengine.paths import ROTATIONS

if TYPE_CHECKING:
    from anonengine.config import EngineConfig

CONTROL_TIMEOUT_MS = 5000
CAMERAS_ASKED_MS = 500  # `tap --camera`: how long the engine is given to say which cameras it has
ENGINE_LOOK_S = 0.5  # `tap` on a local engine: how often it looks whether the engine is still there, or back


def register(sub) -> None:
    launch = sub.add_parser("launch", help="start and supervise every stage of the engine")
    launch.add_argument("config", help="engine YAML (see config/engine.yaml)")
    launch.add_argument("--validate-config", action="store_true",
                        help="check the file as launch does before it starts (sources there, outputs writable, "
                        "http.token_file readable, models there or downloadable, ports free) and exit, starting "
                        "and downloading nothing")
    launch.set_defaults(func=cmd_launch)

    tap = sub.add_parser("tap", help="subscribe to the engine's anonymized output")
    tap.add_argument("endpoint", nargs="?", default=None,
                     help="the tap's address (default: the ipc tap of the only engine in --run-dir)")
    tap.add_argument("--run-dir", default=None, help="the engine's run_dir (default: the automatic one)")
    tap.add_argument("--instance", default=None, help="engine instance (default: the only one with an ipc tap)")
    tap.add_argument("--key", default=None, metavar="CLIENT.key_secret",
                     help="this client's key pair, for a tcp:// tap (CURVE; see `anonengine keys`)")
    tap.add_argument("--server-key", default=None, metavar="SERVER.key", help="the tap's public key (CURVE)")
    tap.add_argument("--camera", action="append", default=[], help="only these cameras")
    tap.add_argument("--record", help="write the received frames of one camera to this MP4")
    tap.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = never)")
    tap.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without a frame")
    tap.set_defaults(func=cmd_tap)

    for verb, helptext in (("attach", "add a camera to a running engine"),
                           ("detach", "remove a camera from a running engine"),
                           ("status", "cameras and counters of a running engine")):
        p = sub.add_parser(verb, help=helptext)
        p.add_argument("--run-dir", default=None, help="the engine's run_dir (default: the automatic one)")
        p.add_argument("--instance", default=None, help="engine instance (default: the only one running)")
        if verb != "status":
            p.add_argument("--camera", required=True)
        if verb == "attach":
            p.add_argument("--source", required=True)
            p.add_argument("--output", default=None)
            p.add_argument("--metadata", default=None)
            p.add_argument("--rotate", type=int, choices=ROTATIONS, default=0,
                           help="degrees to turn the picture clockwise so people stand upright (a camera mounted "
                           "upside down: 180)")
        p.set_defaults(func=cmd_control)

    keys = sub.add_parser("keys", help="make a CURVE key pair, for a tap on TCP (server) or its subscribers")
    keys.add_argument("dir", help="folder to write NAME.key (public) and NAME.key_secret (private) in")
    keys.add_argument("--name", default="anonengine", help="file name of the pair (default: anonengine)")
    keys.set_defaults(func=cmd_keys)


def cmd_launch(args: argparse.Namespace) -> int:
    from anonengine.config import EngineConfig, load_yaml, small_input_warning
    from anonengine.engine.launcher import (
        check_models,
        check_ports,
        config_problems,
        launch,
        output_lock_problems,
        protocol_problem,
    )

    cfg = load_yaml(Path(args.config), EngineConfig)
    if args.validate_config:
        # The checks `Launcher.start` makes before it starts anything: validation says what launch would say
        # (it said "valid" of files whose source was missing). Then what launch finds only as it goes: models it
        # could not have (none is downloaded here), and ports another program listens at (tried here only).
        # Every problem found is said, a line each (it stopped at the first: several mistakes, several runs).
        problems = list(config_problems(cfg))
        # Launch starts a camera whose protocol FFmpeg does not know and fails it alone at once; a config that
        # names one is not valid.
        problems += [problem for camera in cfg.cameras if (problem := protocol_problem(camera)) is not None]
        notes, unusable = check_models(cfg)
        problems += unusable
        problems += check_ports(cfg)
        problems += output_lock_problems(cfg)
        raise_all(problems)
        if (small := small_input_warning(cfg.anonymizer.detector)) is not None:
            notes.append(small)
        for note in notes:
            print(f"anonengine: note: {note}", file=sys.stderr)
        print(f"{args.config}: valid ({len(cfg.cameras)} camera(s))")
        return 0
    # A long-running engine's log: the launcher's lines stamped as the stages' are (they were not, alone).
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s launcher %(levelname)s %(message)s"))
    redact_logs()
    if (small := small_input_warning(cfg.anonymizer.detector)) is not None:
        logging.getLogger("anonengine.launcher").warning("%s", small)  # a run says it when done; an engine: at start
    stagehost.warm_up()
    resolve_models(cfg)
    return launch(cfg).run()


def run_engine(cfg: EngineConfig, progress: bool, tap: str | None) -> int:
    """`anonengine run` through the engine: one camera, exits when its output is complete.

    A stop signal ends a live source as its end would (exit 0); a file keeps the frames done so far,
    playable, under the `.partial` name, and the exit code says which signal stopped it (128 + signal).
    """
    from anonengine.config import small_input_warning
    from anonengine.engine.launcher import EngineFailed, launch, stage_total

    cam = cfg.cameras[0]
    info = preflight(cfg)
    resolve_models(cfg)
    cfg.engine.exit_when_done = True
    cfg.tap.endpoint = tap or ""
    if not os.environ.get("ANONENGINE_LOG_LEVEL"):
        # A job prints its result and what the user should know of their input, not the stages' chatter.
        os.environ["ANONENGINE_LOG_LEVEL"] = "WARNING"
        logging.getLogger("anonengine.launcher").setLevel(logging.WARNING)
    launcher = launch(cfg)
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=info.frames or None, desc=cam.name, unit="frame", dynamic_ncols=True)
        launcher.on_stats = lambda stats: bar.update(stage_total(stats, "encode", "frames") - bar.n)
    try:
        launcher.run()  # a failed job's partial outputs are removed by the launcher, which owns them
    finally:
        if bar is not None:
            bar.close()
    done = launcher.done.get(cam.name)
    if done is not None and done.complete:
        if done.output is None and cam.output:  # a live camera stopped before its first frame
            logging.getLogger("anonengine").info("%s: stopped before its first frame; nothing written", cam.name)
        else:
            dropped = launcher.dropped_frames(cam.name)
            logging.getLogger("anonengine").info(
                "%s: %s anonymized (%d obscured%s) -> %s", cam.name, plural(done.frames, "frame"),
                launcher.obscured_frames(cam.name), f", {dropped} dropped: the engine was behind" if dropped else "",
                done.output)
            if (warning := small_input_warning(cfg.anonymizer.detector)) is not None:
                logging.getLogger("anonengine").warning("%s", warning)
        return 0
    if launcher.stop_signal is None:
        raise EngineFailed(f"{cam.name} ended without finishing its output")
    frames = done.frames if done is not None else 0
    print(interrupted_line(launcher.stop_signal, frames, info.frames, done.output if done else None, cam.metadata),
          file=sys.stderr)
    return 128 + launcher.stop_signal


def resolve_models(cfg: EngineConfig) -> None:
    """Fetches or finds every model once here, so detector processes neither race nor fail late."""
    from anonengine import models
    from anonengine.engine.launcher import config_models

    for _setting, spec in config_models(cfg):
        models.resolve(spec)


def preflight(cfg: EngineConfig):
    """Opens the source and the outputs as the stages will, reporting bad ones before any process starts.

    Returns the source's StreamInfo. A live source is left to the capture, which fails the job as this would
    (`LiveFeed.first_picture`): opened here too, a stream joined between two keyframes waited for two. Its
    output is checked as a VGA stream's (its size comes with the first picture).
    """
    from fractions import Fraction

    from anonengine.sources import source_of
    from anonengine.stages import CaptureStage
    from anonengine.video import StreamInfo

    cam = cfg.cameras[0]
    if source_of(cam).live:
        stand_in = StreamInfo(width=640, height=480, rate=Fraction(25), time_base=Fraction(1, 90000), frames=0,
                              live=True)
        _check_output(cam, stand_in, cfg)
        return stand_in
    # What the reader warns of (a second video stream left out, a pixel aspect taken as square) the capture says
    # again: said twice before.
    reader_log = logging.getLogger("anonengine.video")
    capture, level = CaptureStage(cam, cfg.sources), reader_log.level
    reader_log.setLevel(logging.ERROR)
    try:
        capture.setup()
    finally:
        reader_log.setLevel(level)  # the output's own lines (an earlier partial output kept as ...) are said
    try:
        _check_output(cam, capture.info, cfg)
        return capture.info
    finally:
        capture.close()


def _check_output(cam, info, cfg: EngineConfig) -> None:
    from anonengine.stages import EncodeStage

    if cam.output:
        encode = EncodeStage(cam.output, info, cfg.encoder, cam.metadata)
        encode.setup()
        encode.abort()


def cmd_tap(args: argparse.Namespace) -> int:
    """Prints (and records) the frames of the engine's tap. On a local engine's ipc tap it follows the engine: one
    that stops is said so, and the next engine in the run folder is tapped once it is there. A tap left on a stopped
    engine had waited for ever in silence, and never heard the engine started again (another instance: its ipc tap
    elsewhere; an operator's trial)."""
    import time

    from anonengine.tap import SeqGaps, TapRecording, subscribe

    endpoint, curve, engine = _tap_address(args)
    if engine is not None and args.camera:
        _say_unknown_cameras(args.camera, *engine)
    gaps, count, recorded = SeqGaps(), 0, None
    recording = TapRecording(args.record) if args.record else None
    heard_at = time.monotonic()  # the last frame, or the start: --timeout counts from there
    try:
        while True:
            watch = EngineWatch(Path(endpoint.removeprefix("ipc://"))) if engine is not None else None
            left = None if args.timeout is None else max(0.0, heard_at + args.timeout - time.monotonic())
            try:
                for meta, image in subscribe(endpoint, tuple(args.camera), timeout_s=left, curve=curve,
                                             until=watch.gone if watch else None):
                    heard_at = time.monotonic()
                    gap = gaps.see(meta)
                    print(f"{meta['camera']} seq={meta['seq']} t={meta['time']:.3f} persons={len(meta['persons'])}"
                          f"{' obscured' if meta['obscured'] else ''}{f' missed={gap}' if gap else ''}", flush=True)
                    # One camera is recorded: the first heard of, unless --camera said. Another camera's frames, of
                    # another size and clock, made the file fail as a whole when the first was 280 frames in.
                    if recording is not None and recorded in (None, meta["camera"]):
                        if recorded is None and not args.camera:
                            logging.getLogger("anonengine").info("recording camera %s only (--camera chooses)",
                                                                 meta["camera"])
                        recorded = meta["camera"]
                        recording.write(meta, image)
                    count += 1
                    if args.frames and count >= args.frames:
                        return 0
            finally:
                if watch is not None:
                    watch.stop()
            if watch is not None and watch.gone.is_set():
                run_dir, instance = engine
                print(f"anonengine: tap: engine {instance} stopped after {plural(count, 'frame')} here; waiting for "
                      f"{f'engine {args.instance}' if args.instance else 'an engine'} in {run_dir} (Ctrl-C stops)",
                      file=sys.stderr, flush=True)
                instance = _next_engine(run_dir, args.instance, heard_at, args.timeout)
                if instance is not None:
                    engine, endpoint = (run_dir, instance), _endpoints(run_dir, instance).tap
                    print(f"anonengine: tap: tapping engine {instance}", file=sys.stderr, flush=True)
                    if recording is not None:
                        recording.another_engine()
                    continue
            # --timeout passed without a frame
            which = f"camera {', '.join(args.camera)}" if args.camera else "any camera"
            if not count:  # a mistyped camera, or an engine sending nothing, exited 0 without a word
                print(f"anonengine: tap: no frame of {which} in {args.timeout:g} s", file=sys.stderr)
                return 1
            print(f"anonengine: tap: {count} frames, then none of {which} for {args.timeout:g} s", file=sys.stderr)
            return 0
    except Interrupted:
        return 0
    finally:
        if recording is not None:
            # Short (x264's last frames, the MP4's index): a second Ctrl-C waits for it. It had landed in it and left
            # a partial file without an index, every frame of the recording lost (an operator's trial).
            with INTERRUPTS.deferred():
                recording.close()
        if gaps.missed:  # said per frame only: a recording 11 frames short of 193 ended with "182 frames"
            print(f"anonengine: tap: {plural(gaps.missed, 'frame')} missed (this subscriber fell behind the engine by "
                  "more than tap.hwm)", file=sys.stderr)
        if gaps.renumbered:
            print(f"anonengine: tap: seq jumped {plural(gaps.renumbered, 'time')} where no frame was missed (a live "
                  "camera's capture restarted and numbered on, or the engine dropped late frames: "
                  "engine.late_frames)", file=sys.stderr)


class EngineWatch:
    """Sets `gone` once no one listens at a local engine's ipc tap (`socket`) any more: the engine stopped."""

    def __init__(self, socket: Path) -> None:
        import threading

        self.socket, self.gone, self._stop = socket, threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._look, name="engine-watch", daemon=True)
        self._thread.start()

    def _look(self) -> None:
        while not self._stop.wait(ENGINE_LOOK_S):
            if not _listened_at(self.socket):
                self.gone.set()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _next_engine(run_dir: Path, instance: str | None, heard_at: float, timeout: float | None) -> str | None:
    """The engine to tap next in `run_dir` (`instance`, or the only one with an ipc tap) once it is there; None once
    `timeout` seconds passed since `heard_at` without one."""
    import time

    while timeout is None or time.monotonic() < heard_at + timeout:
        tapped = _listening(run_dir, "tap.sock")
        if instance is not None and instance in tapped:
            return instance
        if instance is None and tapped:
            return _only_instance(run_dir, "tap.sock", tapped)  # several: which one is the user's to say
        time.sleep(ENGINE_LOOK_S)
    return None


def _endpoints(run_dir: Path, instance: str):
    from anonengine.engine.runtime import Endpoints

    return Endpoints(str(run_dir), instance)


def _say_unknown_cameras(wanted: list[str], run_dir: Path, instance: str) -> None:
    """Warns of each camera `wanted` that the local engine (`instance` in `run_dir`) does not have (it may be attached
    later: the tap waits all the same). A mistyped name received nothing, said nothing, and with --timeout only that
    no frame came (an operator's trial). A tap on another host's engine cannot ask it: a tcp:// tap has no control
    socket there."""
    from difflib import get_close_matches

    from anonengine import messages

    try:
        # A moment only: an engine too busy to answer at once is not worth the frames a tap misses meanwhile
        answer = _ask_engine(run_dir, instance, messages.StatusRequest(), timeout_ms=CAMERAS_ASKED_MS)
    except AnonError:
        return  # the tap says what comes of it
    if not answer.ok or not isinstance(answer.status, dict):
        return
    cameras = list(answer.status.get("cameras", {}))
    for camera in wanted:
        if camera not in cameras:
            close = get_close_matches(camera, cameras, n=1)
            print(f"anonengine: tap: engine {instance} has no camera {camera}"
                  f"{f' ({close[0]} meant?)' if close else ''}; its cameras: {', '.join(cameras) or 'none'} "
                  "(waiting for one of that name all the same: `anonengine attach` may add it)", file=sys.stderr,
                  flush=True)


def _tap_address(args: argparse.Namespace):
    """The endpoint `anonengine tap` subscribes to, its CURVE keys (None: none given), and the local engine's
    (run folder, instance) whose ipc tap it is (None: an address given)."""
    from anonengine.curve import CurveClient

    if bool(args.key) != bool(args.server_key):
        raise ConfigError("--key and --server-key go together: this client's .key_secret and the tap's .key")
    curve = CurveClient.from_files(args.key, args.server_key) if args.key else None
    if args.endpoint and args.endpoint != "ipc":  # `ipc`: the automatic one, as in the config
        if args.endpoint.startswith("tcp://") and curve is None:
            raise ConfigError("a tcp:// tap takes CURVE clients only: give --key CLIENT.key_secret and --server-key "
                              "SERVER.key (make a pair with `anonengine keys DIR --name NAME`)")
        return args.endpoint, curve, None
    run_dir = _engines_folder(args.run_dir)
    instance = args.instance
    if instance is None:
        tapped = _listening(run_dir, "tap.sock")
        engines = [] if tapped else _listening(run_dir, "control.sock")
        if len(engines) == 1:  # it was said to be no engine at all (an operator's trial)
            raise InputError(f"engine {engines[0]} in {run_dir} has no ipc tap (its tap.endpoint is off, or an "
                             "address: give that address)")
        instance = _only_instance(run_dir, "tap.sock", tapped)
    return _endpoints(run_dir, instance).tap, curve, (run_dir, instance)


def cmd_keys(args: argparse.Namespace) -> int:
    from anonengine.curve import write_key_pair

    public, secret = write_key_pair(args.dir, args.name)
    print(f"public key: {public} (give it out: the server's to subscribers, a client's to the engine's "
          "tap.curve_clients folder)")
    print(f"secret key: {secret} (keep it private: the server's is tap.curve_server_key, a client's --key)")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    from anonengine import messages

    run_dir = _engines_folder(args.run_dir)
    instance = args.instance or _only_instance(run_dir)
    if not _listened_at(run_dir / instance / "control.sock"):  # stopped, or never was: not a hung engine
        raise InputError(f"no engine {instance} running in {run_dir}")
    if args.command == "attach":
        # The engine runs in another folder than this command: relative paths are made absolute here.
        request = messages.Attach({"name": args.camera, "source": _absolute_source(args.source),
                                   "output": _absolute(args.output), "metadata": _absolute(args.metadata),
                                   "rotate": args.rotate})
    elif args.command == "detach":
        request = messages.Detach(args.camera)
    else:
        request = messages.StatusRequest()
    answer = _ask_engine(run_dir, instance, request)
    if not answer.ok:
        raise ConfigError(answer.error or f"{args.command} refused")
    print(json.dumps(answer.status, indent=1) if args.command == "status" else f"{args.command}: ok")
    return 0


def _ask_engine(run_dir: Path, instance: str, request, timeout_ms: int = CONTROL_TIMEOUT_MS):
    """The engine's `messages.Reply` to a control request; ConfigError where it does not answer, or not so."""
    import zmq

    from anonengine import messages
    from anonengine.engine.runtime import Endpoints

    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, messages.MAX_MESSAGE_BYTES)
    try:
        sock.connect(Endpoints(str(run_dir), instance).control)
        sock.send(messages.encode(request))
        if not sock.poll(timeout_ms):
            raise ConfigError(f"engine {instance} in {run_dir} does not answer")
        try:
            answer = messages.decode(sock.recv())
        except messages.MessageError as exc:
            raise ConfigError(f"engine {instance} answered garbage: {exc}") from None
    finally:
        sock.close()
    if not isinstance(answer, messages.Reply):
        raise ConfigError(f"engine {instance} answered a {type(answer).__name__}")
    return answer


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else path


def _absolute_source(source: str) -> str:
    """A file path made absolute; a webcam index or a stream URL as it is."""
    if not source.strip():  # made absolute, it named the current folder: "video source is not a file: /home/..."
        raise ConfigError("--source is empty: a video file, a camera's URL or a webcam's number")
    return source if source.isdigit() or "://" in source else os.path.abspath(source)


def _engines_folder(run_dir: str | None) -> Path:
    """The run folder a client verb looks in (--run-dir, else the automatic one). One that exists must be
    owner-only, as the engine made it: sockets in a folder someone else controls could be anyone's."""
    from anonengine.rundir import check_private_dir, run_dir_path

    folder = run_dir_path(run_dir)
    if os.path.lexists(folder):
        check_private_dir(folder)
    return folder


def _listened_at(path: Path) -> bool:
    """Whether a process listens at the Unix socket `path`."""
    import socket as sockets

    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except PermissionError:
            return True  # someone's, and not ours to ask: there all the same
        except OSError:
            return False
    return True


def _listening(run_dir: Path, socket: str) -> list[str]:
    """The instances in `run_dir` at whose `socket` a process listens."""
    # A folder left by stages killed outright (honcho SIGKILLs one still draining) keeps a socket no one listens
    # at: taken for an engine, it made a second, live one need naming, and a tap on it received nothing.
    return sorted(p.parent.name for p in run_dir.glob(f"*/{socket}") if _listened_at(p)) if run_dir.is_dir() else []


def _only_instance(run_dir: Path, socket: str = "control.sock", found: list[str] | None = None) -> str:
    """The one instance in `run_dir` that has `socket` (control: every launcher; tap.sock: an ipc tap); `found`: those
    `_listening` gave already."""
    found = _listening(run_dir, socket) if found is None else found
    tapped = " with an ipc tap" if socket == "tap.sock" else ""
    if not found:
        raise InputError(f"no engine{tapped} running in {run_dir} (another run_dir? give it with --run-dir)")
    if len(found) > 1:
        raise InputError(f"{len(found)} engines{tapped} in {run_dir} ({', '.join(found)}): name one with --instance")
    return found[0]


__all__ = ["register", "run_engine"]
