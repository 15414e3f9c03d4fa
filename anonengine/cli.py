"""`anonengine` command line. Every user error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum: int, _frame) -> None:
    # Until main() installs the real handlers, imports (PyTorch, pydantic) run for a second or two: a
    # Ctrl-C then ends the command with its one line, not a KeyboardInterrupt traceback.
    sys.stderr.write(f"anonengine: interrupted by {signal.Signals(signum).name}\n")
    os._exit(128 + signum)


if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_IGN):  # not in a host with its own
    for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(_sig) is not signal.SIG_IGN:  # kept so, as the run's own handlers keep it (interrupts)
            signal.signal(_sig, _interrupted_while_starting)

# The rest is imported after the handlers, which must come first.
import argparse
import glob
import logging
import re
import select
import urllib.parse
from pathlib import Path

from pydantic import ValidationError

from anonengine.argparsing import LOG_LEVEL_VARIABLE, OneLineParser, frame_rate, log_level_from_env, redact_logs
from anonengine.errors import AnonError, ConfigError, InputError, OutputError
from anonengine.interrupts import INTERRUPTS, Interrupted, interrupted_line, plural
from anonengine.paths import OUTPUT_CONTAINERS, ROTATIONS, redacted

log = logging.getLogger("anonengine")

DEFAULT_CAMERA = "cam0"  # `run`'s camera name
_SUFFIXES = [suffix for suffix in OUTPUT_CONTAINERS if suffix]  # of an output video, for --help


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video-source", required=True,
                   help="video file, image sequence (frames/%%06d.png: photos numbered so, one video), webcam "
                        "index (0) or stream URL; with --output-dir, a folder or a glob")
    p.add_argument("--output-dir", default=None,
                   help="a batch: anonymize every video and photo of --video-source DIR|GLOB into the same tree "
                        "here (resumable: its manifest skips what is done)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="a batch on a Ray cluster, each file a task (pip install 'anonengine[cluster]'): ADDRESS of "
                        "a running cluster, 'auto' for this node's, none: a cluster of this machine alone")
    p.add_argument("--audio", choices=["drop", "keep"], default="drop",
                   help="the source's audio: drop (default: voices identify people) or keep (copied unchanged)")
    p.add_argument("--tags", choices=["basic", "all", "none"], default="basic",
                   help="the source's container tags: basic (default: when and with what it was filmed: creation "
                        "time, the camera's make, model and software), all (free text too: title, comment, author, "
                        "which may name people) or none; where it was filmed is never kept")
    p.add_argument("--output-video", metavar="FILE",
                   help="the anonymized video (H.264) to write, in the container its suffix names: "
                        f"{', '.join(_SUFFIXES[:-1])} or {_SUFFIXES[-1]} (none: MP4); default "
                        "<source>_anonymized.mp4 (a photo's: <source>_anonymized.<its suffix>)")
    p.add_argument("--method", choices=["bbox", "seg"], default="bbox", help="bbox: dilated boxes; seg: outlines")
    p.add_argument("--pose-model", default=None, help="YOLO pose model (default yolo11n-pose.pt)")
    p.add_argument("--seg-model", default=None, help="YOLO segmentation model for --method seg")
    p.add_argument("--bbox-model", default=None, help="optional YOLO detection model for --method bbox")
    p.add_argument("--alpha", type=float, default=None, help="background learning rate, 0..1")
    p.add_argument("--pose-conf-threshold", type=float, default=None, help="keypoint confidence to draw, 0..1")
    p.add_argument("--person-conf", type=float, default=None, help="person score to mask, 0..1 (lower hides more)")
    p.add_argument("--imgsz", type=int, default=None, help="detector input size (multiple of 32)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda:N")
    p.add_argument("--backend", choices=["auto", "torch", "onnx", "openvino", "tensorrt"], default=None,
                   help="inference backend (auto: OpenVINO on CPU, TensorRT or torch fp16 on CUDA)")
    p.add_argument("--int8", action="store_true", default=None,
                   help="OpenVINO INT8 model (quantized once with NNCF; pip install 'anonengine[int8]')")
    p.add_argument("--stride", type=int, default=None,
                   help="detect on every Nth frame at most, persons hidden between (default 3; 1: every frame; see README)")
    p.add_argument("--stride-mode", choices=["adaptive", "fixed"], default=None,
                   help="adaptive (default): every frame while persons enter, leave or appear, every 2nd while one moves "
                        "fast or two overlap; fixed: every Nth")
    p.add_argument("--fill", choices=["mirror", "inpaint", "solid"], default=None, help="fill for never-seen background")
    p.add_argument("--motion", choices=["off", "touching", "all"], default=None,
                   help="hide what moves unexplained by the persons found: touching (default) where joined to one, "
                   "all anywhere (someone the detector missed; cars too), off")
    p.add_argument("--resample", choices=["linear", "cubic", "lanczos"], default=None,
                   help="how a moving camera's frames enter the background: lanczos (default, sharpest), cubic, linear")
    p.add_argument("--future-frames", type=int, default=None,
                   help="a file's frames are also filled from what the next N frames show (default 50; 0: off)")
    p.add_argument("--decoder", default=None, metavar="auto|cpu|cuda[:N]",
                   help="where video is decoded: auto (default: NVDEC on the first GPU where FFmpeg opens one, "
                        "else the CPU), cpu, or cuda[:N]")
    p.add_argument("--on-detector-error", choices=["stop", "obscure"], default=None,
                   help="a frame whose detection failed is never written raw: stop (default) ends the run and "
                        "removes the partial output; obscure writes that frame fully grey and goes on")
    p.add_argument("--crf", type=int, default=None, help="H.264 quality (lower is better)")
    p.add_argument("--preset", default=None, help="H.264 speed preset")
    p.add_argument("--metadata", default=None, help="write per-frame persons as JSON lines to this file")
    p.add_argument("--camera", default=None, help=f"camera name in metadata and logs (default {DEFAULT_CAMERA}; "
                   "not for a batch)")
    p.add_argument("--rotate", type=int, choices=ROTATIONS, default=None,
                   help="degrees to turn the picture clockwise so people stand upright (a camera mounted upside "
                   "down: 180); the output is written turned")
    p.add_argument("--fps", type=frame_rate, default=None,
                   help="frame rate of an image sequence source (`frames/%%06d.png`: photos numbered so, read as "
                        "one video; default 25)")
    p.add_argument("--live", action="store_true", default=None,
                   help="treat the source as a live camera (streams and webcams are): a stop signal is its "
                        "normal end; a file is read at its frame rate")
    p.add_argument("--inline", action="store_true", help="run every stage in this one process (reference path)")
    p.add_argument("--tap", default=None,
                   help="also publish anonymized frames on this ZeroMQ endpoint (ipc: the run folder's own socket; "
                        "tcp://HOST:PORT needs --tap-server-key and --tap-clients)")
    p.add_argument("--tap-server-key", default=None, metavar="SERVER.key_secret",
                   help="the TCP tap's CURVE key pair (`anonengine keys`)")
    p.add_argument("--tap-clients", default=None, metavar="FOLDER",
                   help="folder of the public .key files of the clients the TCP tap lets in")
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="serve metrics, health and a live preview page here while it runs (default 127.0.0.1:8080 "
                        "when free; 'off': none; not with --inline)")
    p.add_argument("--http-token-file", default=None, metavar="FILE",
                   help="a file holding the token every request but the health checks must carry; needed to serve "
                        "--http beyond this machine (README: Operations)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# Each flag of `run` that sets the config, and the place it sets: what the config is made of, and what a value
# refused there is said as (`--imgsz 100` was "invalid anonymizer.detector.imgsz", a name the user never gave).
RUN_FLAG_PLACES: dict[str, tuple] = {
    "--method": ("anonymizer", "method"),
    "--pose-model": ("anonymizer", "detector", "pose_model"),
    "--seg-model": ("anonymizer", "detector", "seg_model"),
    "--bbox-model": ("anonymizer", "detector", "bbox_model"),
    "--imgsz": ("anonymizer", "detector", "imgsz"),
    "--device": ("anonymizer", "detector", "device"),
    "--backend": ("anonymizer", "detector", "backend"),
    "--person-conf": ("anonymizer", "detector", "person_conf"),
    "--int8": ("anonymizer", "detector", "int8"),
    "--stride": ("anonymizer", "detector", "stride"),
    "--stride-mode": ("anonymizer", "detector", "stride_mode"),
    "--alpha": ("anonymizer", "background", "alpha"),
    "--fill": ("anonymizer", "background", "fill"),
    "--motion": ("anonymizer", "mask", "motion"),
    "--future-frames": ("anonymizer", "background", "future_frames"),
    "--resample": ("anonymizer", "background", "resample"),
    "--pose-conf-threshold": ("anonymizer", "pose", "keypoint_conf"),
    "--on-detector-error": ("anonymizer", "on_detector_error"),
    "--crf": ("encoder", "crf"),
    "--preset": ("encoder", "preset"),
    "--decoder": ("sources", "decoder"),
    "--http": ("http", "listen"),
    "--http-token-file": ("http", "token_file"),
    "--camera": ("cameras", 0, "name"),
    "--video-source": ("cameras", 0, "source"),
    "--output-video": ("cameras", 0, "output"),
    "--metadata": ("cameras", 0, "metadata"),
    "--live": ("cameras", 0, "live"),
    "--rotate": ("cameras", 0, "rotate"),
    "--fps": ("cameras", 0, "fps"),
}


def config_from_run_flags(args: argparse.Namespace):
    from anonengine.config import EngineConfig, error_text

    given = {flag: getattr(args, flag.lstrip("-").replace("-", "_")) for flag in RUN_FLAG_PLACES}
    given["--output-video"] = args.output_video or default_output(args.video_source)
    raw: dict = {"tap": _run_tap(args), "cameras": [{}]}
    for flag, place in RUN_FLAG_PLACES.items():
        if given[flag] is None:
            continue
        *folders, name = place
        inner = raw
        for key in folders:
            inner = inner[key] if isinstance(key, int) else inner.setdefault(key, {})
        inner[name] = given[flag]
    try:
        return EngineConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "value_error":  # our validators' own sentences, which name what they are about
            raise ConfigError(error_text(err)) from None
        place = tuple(err["loc"])
        flag = next((f for f, p in RUN_FLAG_PLACES.items() if p == place), None)
        if flag is not None:
            raise ConfigError(f"{flag} {given[flag]}: {err['msg']}") from None
        raise ConfigError(f"invalid {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _run_tap(args: argparse.Namespace) -> dict:
    """`run`'s tap: off unless --tap; on TCP only with CURVE keys (the frames' persons are in its headers)."""
    if args.tap and args.tap.startswith("tcp://") and not (args.tap_server_key and args.tap_clients):
        raise ConfigError("--tap tcp://... needs --tap-server-key SERVER.key_secret and --tap-clients FOLDER "
                          "(make key pairs with `anonengine keys DIR --name NAME`), or use --tap ipc")
    return _drop_none(endpoint=args.tap or "", curve_server_key=args.tap_server_key, curve_clients=args.tap_clients)


def default_output(source: str) -> str:
    """`<name>_anonymized.mp4` in the current folder: a file's stem, a webcam's `camera<N>`, a URL's last
    path part (`rtsp://cam/stream1`: `stream1`) or else its host, in letters a file name can hold."""
    if source.isdigit():
        stem = f"camera{source}"
    elif "://" in source:
        url = urllib.parse.urlsplit(source)
        stem = Path(urllib.parse.unquote(url.path)).stem or url.hostname or ""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    else:
        from anonengine.media import holds_photo
        from anonengine.paths import is_sequence, photo_output, sequence_stem

        stem = sequence_stem(source) if is_sequence(source) else Path(source).stem
        if holds_photo(source):  # a photo stays one
            return f"{stem}_anonymized{photo_output(Path(source)).suffix}"
    return f"{stem or 'stream'}_anonymized.mp4"


def _drop_none(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


def is_batch_source(spec: str) -> bool:
    """A folder, or a glob pattern that names no file itself (a URL's `?` is no pattern)."""
    if "://" in spec or spec.isdigit():
        return False
    return Path(spec).is_dir() or (glob.has_magic(spec) and not Path(spec).exists())


def cmd_run(args: argparse.Namespace) -> int:
    if not args.video_source.strip():
        raise ConfigError("--video-source is empty: give a video file, a folder, a webcam index or a stream URL")
    for flag, value in (("--output-video", args.output_video), ("--output-dir", args.output_dir),
                        ("--metadata", args.metadata)):
        if value is not None and not value.strip():  # "" went on as if not given: the default name, or no metadata
            raise ConfigError(f"{flag} is empty: give a name, or leave the flag out")
    check_inline_flags(args)
    from anonengine.paths import is_sequence, sequence_stem

    if is_sequence(args.video_source) and not Path(args.video_source).exists():
        # One video, not a batch of files: `--output-dir D` (the seed's flags) names where it goes.
        if args.ray is not None:
            raise ConfigError("--ray runs a batch of files on a cluster; an image sequence is one video: leave it out")
        if args.output_dir and not args.output_video:
            from anonengine.sources import sequence_numbers

            sequence_numbers(args.video_source)  # whole, before its folder is made
            folder = Path(args.output_dir)
            if folder.exists() and not folder.is_dir():
                raise ConfigError(f"--output-dir {folder} is a file, not a folder")
            try:
                folder.mkdir(parents=True, exist_ok=True)  # as a batch makes it
            except OSError as exc:
                raise ConfigError(f"--output-dir {folder}: {exc.strerror or exc}") from None
            args.output_video = str(folder / f"{sequence_stem(args.video_source)}.mp4")
        args.output_dir = None
    elif args.fps is not None:
        raise ConfigError(f"--fps is the frame rate of an image sequence (`frames/%06d.png`); {args.video_source} "
                          "keeps its own")
    if args.output_dir or args.ray is not None or is_batch_source(args.video_source):
        from anonengine.batch import cmd_batch

        if args.camera is not None:  # a batch's files are named by their paths; it writes no metadata
            raise ConfigError("--camera is for a single file, not a batch (--output-dir): its files are named "
                              "by their paths")
        args.camera = DEFAULT_CAMERA
        return cmd_batch(args)
    args.camera = DEFAULT_CAMERA if args.camera is None else args.camera
    from anonengine.media import holds_photo, media_kind, misnamed

    source = Path(args.video_source)
    kind = media_kind(source) if source.is_file() else None  # read once: what it holds, whatever its name says
    if (note := misnamed(source, kind)) is not None:
        log.warning("%s%s", args.video_source, note)
    photo = kind == "photo" if source.is_file() else holds_photo(args.video_source)  # not a file: by its name
    if photo:
        from anonengine.batch import cmd_photo  # anonymized as a photo (`--output-video x.mp4`: written as a video)

        return cmd_photo(args)
    if not args.inline:
        from anonengine.engine import stagehost

        stagehost.warm_up()  # the stages' imports, while this process checks the inputs
    cfg = config_from_run_flags(args)
    from anonengine.audio import CarryPolicy, finish_single_file

    finish = finish_single_file(cfg.cameras[0], CarryPolicy(args.audio, args.tags))
    if not args.inline:
        from anonengine.engine.commands import run_engine

        code = run_engine(cfg, progress=not args.quiet, tap=args.tap)
        return finish() if code == 0 else code
    from anonengine.config import small_input_warning
    from anonengine.inline import run_inline

    try:
        results = run_inline(cfg, progress=not args.quiet)
    except Interrupted as stop:  # before the first frame (opening the source, loading the model)
        print(interrupted_line(stop.signum, 0, 0, None), file=sys.stderr)
        return stop.exit_code
    for r in results:
        if r.interrupted_by is not None:
            print(interrupted_line(r.interrupted_by, r.frames, r.total, r.output, cfg.cameras[0].metadata),
                  file=sys.stderr)
            return 128 + r.interrupted_by
        log.info("%s: %s anonymized (%d obscured%s) -> %s", r.camera, plural(r.frames, "frame"), r.obscured,
                 f", {r.dropped} dropped: this was behind the camera" if r.dropped else "", r.output)
    if (warning := small_input_warning(cfg.anonymizer.detector)) is not None:
        log.warning("%s", warning)
    return finish()


def check_inline_flags(args: argparse.Namespace) -> None:
    """What only the engine does is refused with --inline (before, it was silently left out: no tap, no
    server, exit 0)."""
    if not args.inline:
        return
    for flag, value in (("--tap", args.tap), ("--http", args.http if args.http != "off" else None),
                        ("--http-token-file", args.http_token_file)):
        if value:
            raise ConfigError(f"{flag} needs the engine, which --inline does without: run without --inline")


def cmd_models_pull(args: argparse.Namespace) -> int:
    from anonengine import models

    for name in args.names:
        path = models.pull(name, Path(args.dir) if args.dir else None)
        print(f"{name}: {path}")
    return 0


def check_sample_args(args: argparse.Namespace) -> None:
    """One line for what the sample generator cannot make (before: internal errors, or an encoder's)."""
    if args.width < 64 or args.height < 64 or args.width % 2 or args.height % 2:
        raise ConfigError(f"--width {args.width} --height {args.height}: even sizes of 64 pixels or more")
    if args.frames < 1 or getattr(args, "fps", 25) < 1:
        raise ConfigError("--frames and --fps: 1 or more")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: a folder to write in, not a file")
    # A folder that cannot be made or written in (a read-only disk, a file on its way) was an internal error.
    import tempfile

    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=args.out).close()
    except OSError as exc:
        raise OutputError(f"cannot write in {args.out}: {exc.strerror or exc}") from None


def cmd_sample(args: argparse.Namespace) -> int:
    from anonengine.sample import make_sample

    check_sample_args(args)
    clip = make_sample(Path(args.out), args.width, args.height, args.frames, args.fps)
    print(f"sample clip: {clip.video} (truth: {clip.truth}, background: {clip.background})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Pull the model, make the sample clip, anonymize it, and write a contact sheet to look at."""
    from anonengine import models
    from anonengine.config import CameraConfig, EngineConfig
    from anonengine.contact_sheet import write_contact_sheet
    from anonengine.inline import run_inline
    from anonengine.sample import make_sample

    check_sample_args(args)
    out = Path(args.out)
    print(f"model: {models.pull('yolo11n-pose.pt')}")
    clip = make_sample(out, width=args.width, height=args.height, frames=args.frames)
    print(f"sample clip: {clip.video}")
    anonymized = out / "anonymized.mp4"
    camera = CameraConfig(
        name="demo", source=str(clip.video), output=str(anonymized), metadata=str(out / "anonymized.jsonl")
    )
    cfg = EngineConfig(cameras=[camera])
    cfg.anonymizer.method = args.method
    (result,) = run_inline(cfg, progress=not args.quiet)
    sheet = write_contact_sheet(clip.video, anonymized, out / "contact_sheet.png")
    print(f"anonymized: {anonymized} ({result.frames} frames, {result.persons} person detections)")
    print(f"contact sheet: {sheet}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Exit 0 when no frame shows a person to the adversary, 1 when some do."""
    from anonengine.audit import audit, write_report, write_worst_frames

    # Checked before the work: an adversary at a size Ultralytics rounds up to 32 px finds nobody, a clean
    # report that means nothing; a report that cannot be written is known now, not after an hour.
    if not 0 < args.conf <= 1:
        raise ConfigError(f"--conf {args.conf:g}: a person score in (0, 1]")
    if args.imgsz < 32 or args.imgsz % 32:
        raise ConfigError(f"--imgsz {args.imgsz}: a multiple of 32, at least 32 (the default 960)")
    for role, given in (("original", args.original), ("anonymized", args.anonymized)):
        # Named by its part: "video source not found" said neither which of the two, nor that a folder was given.
        if not Path(given).exists():
            raise InputError(f"the {role} {given} is not there")
        if not Path(given).is_file():
            raise InputError(f"the {role} {given} is not a file (a folder?)")
    json_path = Path(args.json or f"{args.anonymized}.audit.json")
    sheet_path = Path(args.sheet or f"{args.anonymized}.audit.png")
    for path in (json_path, sheet_path):
        if not path.parent.is_dir():
            raise ConfigError(f"cannot write {path}: folder {path.parent} does not exist")
    report = audit(args.original, args.anonymized, args.pose_model, args.conf, args.imgsz, args.device,
                   augment=not args.no_augment, rotate=args.rotate)
    write_report(report, json_path)
    sheet = write_worst_frames(report, sheet_path)
    turned = f" (compared with the original turned {report.rotate} degrees, as the run did)" if report.rotate else ""
    print(f"{len(report.flagged)} of {report.frames} frames show a person as filmed{turned} (leak rate "
          f"{report.leak_rate:.1%}); {report.skeleton_only} more with finds over anonymized areas only "
          f"(skeletons); report: {json_path}" + (f", worst frames: {sheet}" if sheet else ""))
    if report.skipped:
        print(f"{plural(report.skipped, 'frame')} of the original are not in the anonymized video midway (a live run "
              "dropped them: the engine behind?); each of its frames was compared with the original's at its time")
    if report.cut_short:
        print(f"The anonymized video ends before the original: its {report.frames} frames were audited, the "
              "original's later ones are not in it")
    if report.smallest_person:
        looked = f"--imgsz {report.imgsz}" + (f" and closer, to {report.closest}" if report.closest else "")
        closer = "" if report.closest else f"; --imgsz {2 * report.imgsz} halves that (4 times as slow)"
        print(f"The adversary finds whole persons from about {report.smallest_person} px tall here "
              f"({report.smallest_person / report.shown_size[1]:.0%} of the frame's height, at {looked}): anyone "
              f"smaller goes unreported whether hidden or not{closer}")
    if report.drawn_persons:
        print(f"{report.drawn_persons} of those frames show a person the adversary is sure of over pixels the run "
              f"replaced: a person drawn back from the background, or were the two files given the other way "
              f"round? (anonengine audit ORIGINAL ANONYMIZED)")
    for degrees, frames in report.found_turned.items():
        if frames:
            way = "upside down" if degrees == 180 else f"in the picture turned {degrees} degrees (on their side)"
            print(f"{frames} of those frames show a person found only {way}: if the camera is mounted so or the "
                  f"video plays so, run again with --rotate {(report.rotate + degrees) % 360} (the detector misses "
                  "most persons turned)")
    return 1 if report.flagged else 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="anonengine", description="Remove persons from video, keep the scene and motion.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser("run", help="anonymize a video file, webcam or stream")
    add_run_flags(run)
    run.set_defaults(func=cmd_run)

    models_cmd = sub.add_parser("models", help="model weights")
    models_sub = models_cmd.add_subparsers(dest="models_command", required=True, parser_class=OneLineParser)
    pull = models_sub.add_parser("pull", help="put official weights into the models folder")
    pull.add_argument("names", nargs="*", default=["yolo11n-pose.pt"])
    pull.add_argument("--dir", default=None, help="folder (default: $ANONENGINE_MODELS, else models/ where the "
                      "current folder has one, else ~/.cache/anonengine/models)")
    pull.set_defaults(func=cmd_models_pull)

    sample = sub.add_parser("sample", help="generate the sample clip with ground truth")
    sample.add_argument("--out", default="out/sample")
    sample.add_argument("--width", type=int, default=640)
    sample.add_argument("--height", type=int, default=360)
    sample.add_argument("--frames", type=int, default=48)
    sample.add_argument("--fps", type=int, default=25)
    sample.set_defaults(func=cmd_sample)

    demo = sub.add_parser("demo", help="pull the model, generate the sample clip and anonymize it")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--method", choices=["bbox", "seg"], default="bbox")
    demo.add_argument("--width", type=int, default=640)
    demo.add_argument("--height", type=int, default=360)
    demo.add_argument("--frames", type=int, default=48)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)

    audit = sub.add_parser("audit", help="look for persons left in an anonymized video")
    audit.add_argument("original")
    audit.add_argument("anonymized")
    audit.add_argument("--json", default=None, help="report file (default: <anonymized>.audit.json)")
    audit.add_argument("--sheet", default=None,
                       help="worst frames PNG, written when a leak is found (default: <anonymized>.audit.png)")
    audit.add_argument("--conf", type=float, default=0.2, help="adversary's person threshold")
    audit.add_argument("--imgsz", type=int, default=960, help="adversary's input size")
    audit.add_argument("--no-augment", action="store_true",
                       help="look at the frame only, not also its mirror image, upside down and on either side (5 "
                       "times as fast)")
    audit.add_argument("--rotate", type=int, choices=ROTATIONS, default=None,
                       help="the run's --rotate, by which the original is turned to be compared (default: found "
                       "from the pixels)")
    audit.add_argument("--pose-model", default="yolo11n-pose.pt")
    audit.add_argument("--device", default="auto")
    audit.set_defaults(func=cmd_audit)

    from anonengine.engine.commands import register

    register(sub)
    return parser


class UserFormatter(logging.Formatter):
    """Every line of ours begins `anonengine:`, a library's with its name: a batch's damaged files were told as
    `anonengine.video: ...` among `anonengine: ...` lines (`--verbose` keeps the module's name)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name.startswith("anonengine."):
            record = logging.makeLogRecord({**record.__dict__, "name": "anonengine"})
        return super().format(record)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        level = log_level_from_env()  # before any stage process starts: they read it too
    except ConfigError as exc:
        print(f"anonengine: error: {redacted(str(exc))}", file=sys.stderr)
        return exc.exit_code
    if level is None:
        os.environ.pop(LOG_LEVEL_VARIABLE, None)  # empty: unset, as the engine's default takes it
    else:
        os.environ[LOG_LEVEL_VARIABLE] = level  # spelled as `logging` wants it, for the stages
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter((logging.Formatter if args.verbose else UserFormatter)("%(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else level or logging.INFO, handlers=[to_stderr])
    redact_logs()
    INTERRUPTS.install()
    try:
        return args.func(args)
    except AnonError as exc:
        for line in exc.lines():  # several where checks found several (Problems)
            print(f"anonengine: error: {redacted(line)}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as stop:
        print(f"anonengine: interrupted by {stop.name}", file=sys.stderr)
        return stop.exit_code
    except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback on request
        if isinstance(exc, BrokenPipeError) and _stdout_gone():
            # Whoever read the output left (`anonengine status | head -3`): it said "internal error: BrokenPipeError".
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
            return 128 + signal.SIGPIPE
        if INTERRUPTS.raised is not None and not os.environ.get("ANONENGINE_DEBUG"):
            # The stop, made another error by the code it landed in: pydantic, building a schema as the
            # config module loads (a Ctrl-C 0.3 s after the command), reports it as a SchemaError.
            print(f"anonengine: interrupted by {signal.Signals(INTERRUPTS.raised).name}", file=sys.stderr)
            return 128 + INTERRUPTS.raised
        if os.environ.get("ANONENGINE_DEBUG"):
            raise
        reason = redacted(f"{type(exc).__name__}: {exc}".splitlines()[0])
        print(f"anonengine: internal error: {reason} (ANONENGINE_DEBUG=1 shows where)", file=sys.stderr)
        return 1


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone (the write end polls as an error)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (captured), or no poll on this system
        return False


def entry_point(argv: list[str] | None = None) -> None:
    """The `anonengine` program: `main`, then an exit that skips the interpreter's teardown."""
    from anonengine.interrupts import exit_process

    exit_process(main(argv))


if __name__ == "__main__":
    entry_point()
