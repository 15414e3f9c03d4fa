"""Batches: a folder (or a glob) of videos and photos anonymized into a mirrored tree, resumably.

`anonengine run --video-source DIR|GLOB --output-dir OUT` writes each input to the same relative path
under OUT: videos as `.mp4`, photos (JPEG, PNG) in their own format. Files run one after another in
this process (the `--inline` path), with one detector loaded once for the whole job: for short files
the engine's start-up per file (processes, model load) would cost more than the file itself (README,
"Batches").

A photo has no history: its persons are hidden by the same compositor as a video's first frame, so
what was behind them is the fill of never-seen pixels (`background.fill`), and their skeletons drawn.
Nothing else catches a person its detector misses, so a photo is detected at `PHOTO_IMGSZ` at least.
Photos are written without their EXIF (GPS included).

Each finished file is recorded in OUT's manifest (`anonengine.manifest`) after its output took its
final name; outputs are written under other names until complete (a video: `.NAME.video.mp4`, then
`NAME.partial.mp4` while its audio and tags are added; a photo: `NAME.partial.EXT`). A stop signal ends
the job between files, or ends the file in flight, whose output is removed: it is redone on the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from anonengine.audio import (
    DEFAULT_CARRY,
    CarryPolicy,
    carry_over,
    check_audio_fits,
    left_out_lines,
    probe,
)
from anonengine.config import AnonymizerConfig, CameraConfig, EngineConfig
from anonengine.errors import AnonError, ConfigError, InputError, ModelError, OutputError
from anonengine.interrupts import INTERRUPTS, Interrupted, plural
from anonengine.locks import FileLock, LockBusy
from anonengine.manifest import (
    MANIFEST_NAME,
    Fingerprint,
    Manifest,
    ManifestUnwritable,
    Record,
    file_sha256,
    settings_key,
    utc_now,
)
from anonengine.media import media_kind, misnamed, named_kind
from anonengine.paths import (
    partial_path,
    photo_output,
    working_name,
)
from anonengine.photos import ALPHA_SUFFIXES, Photo
from anonengine.sources import classify
from anonengine.video import Frame, main_video

log = logging.getLogger("anonengine")

# A photo's persons have no other frame to be caught in (no hold, no look-ahead): it is detected at least
# at the audit adversary's size. At the videos' 320, a 31x106-px person in a 320x192 photo is missed;
# at 960 found. On this 2-core machine: 0.2 s a photo (0.4 s at 1280), after a first export per shape.
PHOTO_IMGSZ = 960
BATCH_LOCK = ".anonengine-batch.lock"
STILL_RATE = 25  # frames/s of a photo written as a video of one frame
SETTINGS_VERSION = 1  # raise when the same settings would make different outputs


@dataclass(frozen=True)
class Job:
    """One input of a batch and where its output goes."""

    source: Path
    rel: str  # relative to the batch's root, with forward slashes
    output: Path
    photo: bool = False  # anonymized as a photo, not a video (`media_kind`)

    @property
    def staged(self) -> Path:
        """Where a video's anonymized frames are written before its audio and tags join them."""
        return self.output.with_name(working_name(".", self.output.name, ".video.mp4"))

    def leftovers(self) -> tuple[Path, ...]:
        """The files a job stopped midway may have left: none is a final name."""
        return (self.staged, partial_path(self.staged), partial_path(self.output))


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    interrupted_by: int | None = None
    stopped: str = ""  # why the batch ended before its last file, when not by a signal
    nodes: set[str] = field(default_factory=set)  # on a cluster: the nodes that did the files
    gpus: set[str] = field(default_factory=set)  # and the GPUs (node:id) their tasks reserved
    damaged: int = 0  # files done whose input lost pictures to damage

    def add(self, done: Done) -> None:
        self.done += 1
        self.frames += done.frames
        self.damaged += bool(done.damage)

    def line(self, output_dir: Path) -> str:
        rate = f" ({60 * self.done / self.seconds:.1f} files/min)" if self.done and self.seconds else ""
        where = f" on {len(self.nodes)} node(s), {len(self.gpus)} GPU(s)" if self.nodes else ""
        # An archive's damaged inputs come out short of pictures, each said as it ran: counted here, and named by
        # their manifest records' "damage", to be told apart from whole ones (an archivist's trial).
        damaged = f" ({self.damaged} damaged: see \"damage\" in the manifest)" if self.damaged else ""
        return (f"anonengine: batch: {self.done} file(s) anonymized{damaged}, {self.skipped} skipped (done before), "
                f"{len(self.failed)} failed; {plural(self.frames, 'frame')} in {self.seconds:.1f} s{where}{rate} "
                f"-> {output_dir}")


def find_jobs(spec: str, output_dir: Path) -> list[Job]:
    """The inputs `spec` names (a folder: its videos and photos, recursively, hidden files left out; a glob:
    the files it matches; a file: itself), each with its output under `output_dir`."""
    path = Path(spec)
    if path.is_dir():
        root = path
        if holds(output_dir, path):
            # Its outputs would land among its inputs, and its own outputs are left out: nothing was found.
            raise ConfigError(f"--output-dir {output_dir} is {spec} or holds it: give a folder outside it")
        files = [p for p in files_under(path) if p.is_file() or p.is_symlink()]
        kinds = kinds_of(files)
        media = [p for p in files if kinds[p]]
        found = [p for p in media if not hidden_in(p, root)]
        say_left_out([p for p in set(files) - set(media) if p.name != MANIFEST_NAME and not hidden_in(p, root)], root)
        taken = {p.resolve() for p in found}
        hidden = sorted(p for p in set(media) - set(found) if p.resolve() not in taken)  # not done by another path
        if hidden:  # a Finder's `._` copies, a hidden `.thumbnails/`: said, not done
            log.warning("batch: %d video(s) or photo(s) under hidden names left out (such as %s): give one as the "
                        "source to take it", len(hidden), hidden[0].relative_to(root))
    elif path.is_file():
        root, found, kinds = path.parent, [path], {}
    elif glob.has_magic(spec):
        root = _glob_root(spec)
        if holds(output_dir, root):  # each photo's output would be the photo itself
            raise ConfigError(f"--output-dir {output_dir} is {root} or holds it, where {spec} finds its files: give "
                              "a folder outside it")
        matches = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file() or Path(p).is_symlink()]
        kinds = kinds_of(matches)
        found = [p for p in matches if kinds[p]]
        say_left_out(set(matches) - set(found), root)  # as a folder's: a song matched by `*.m*` failed the batch
    else:
        raise InputError(f"video source not found: {spec}")
    candidates = [p for p in found if not holds(output_dir, p.parent)]  # not our own outputs
    refuse_originals_among_outputs(sorted(set(found) - set(candidates)), output_dir, root)
    found = once_each(candidates)
    if dropped := sorted(set(candidates) - set(found)):  # links to a file of the tree: done under its own path
        kept = {p.resolve(): p for p in found}
        log.info("batch: %d file(s) reached by more than one path (links), each anonymized once (such as %s, done "
                 "as %s)",
                 len(dropped), dropped[0].relative_to(root), kept[dropped[0].resolve()].relative_to(root))
    if not found:
        raise InputError(f"no videos or photos in {spec}")
    jobs, sources = [], {}
    for source in found:
        rel = source.relative_to(root)
        kind = kinds[source] if source in kinds else media_kind(source)
        photo = kind == "photo"
        output = output_dir / (photo_output(rel) if photo else rel.with_suffix(".mp4"))
        if (note := misnamed(source, kind)) is not None:
            log.warning("batch: %s%s -> %s", rel.as_posix(), note, output.relative_to(output_dir).as_posix())
        sources.setdefault(output, []).append(rel.as_posix())
        jobs.append(Job(source, rel.as_posix(), output, photo))
    clashes = [(names, output) for output, names in sources.items() if len(names) > 1]
    if clashes:  # all of them at once: one a run, an archive's took as many runs as it had
        raise ConfigError("; ".join(f"{', '.join(names[:-1])} and {names[-1]} would all be written to {output}"
                                    if len(names) > 2 else f"{names[0]} and {names[1]} would both be written to {output}"
                                    for names, output in clashes) + ": rename one of each")
    return jobs


def refuse_originals_among_outputs(inside: list[Path], output_dir: Path, root: Path) -> None:
    """ConfigError, one line, where the videos and photos found in the output folder (`inside`, left out as this
    batch's outputs: it is in the source's tree) are not all outputs its manifest recorded. A user's trial:
    `--output-dir arcT/sub` of `arcT/`, whose sub/p.jpg was an original, left it out without a word and wrote
    p.jpg's output over it."""
    if not inside:
        return
    recorded = {(output_dir / record.output).resolve() for record in Manifest(output_dir).records.values()}
    originals = [p for p in inside if p.resolve() not in recorded]
    if originals:
        raise ConfigError(f"--output-dir {output_dir} is in {root} and holds {len(originals)} video(s) or photo(s) no "
                          f"batch wrote there (such as {originals[0].relative_to(root)}): they would be left out, and "
                          f"written over; give a folder outside {root}, or a new one")


def kinds_of(files: list[Path]) -> dict[Path, str | None]:
    """Each file's `media_kind`, each opened once. A link to nothing (an archive's second disk, not mounted; a
    folder's link too) is taken for a video, to fail with its reason: left out, it went without a word."""
    return {p: media_kind(p) or ("video" if not p.exists() else None) for p in files}


def say_left_out(others, root: Path) -> None:
    """Files neither video nor photo, said as the hidden ones are: an archivist missed them in the mirrored tree
    and the summary."""
    if others:
        log.info("batch: %d other file(s), neither video nor photo, left out (such as %s)", len(others),
                 min(others).relative_to(root))


def files_under(root: Path) -> list[Path]:
    """Every file under `root`, folders reached by a symbolic link included, except a link back to a folder it
    is in (a loop). `Path.rglob` left out a linked folder (an archive's second disk) without a word: its videos
    stayed as filmed while the summary counted the others. A file reached by several paths is in each
    (`once_each` keeps one)."""
    found: list[Path] = []

    def walk(folder: str, above: frozenset) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_dir():
                    stat = entry.stat()
                    if (stat.st_dev, stat.st_ino) not in above:
                        walk(entry.path, above | {(stat.st_dev, stat.st_ino)})
                    continue
            except OSError:
                continue
            found.append(Path(entry.path))

    top = os.stat(root)
    walk(str(root), frozenset({(top.st_dev, top.st_ino)}))
    return found


def hidden_in(path: Path, root: Path) -> bool:
    """Whether `path` is under a hidden name (its own, or a folder's) below `root`."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def once_each(paths) -> list[Path]:
    """`paths` sorted, each file once where links lead to it by several: by a path without hidden names if it
    has one, then one without links (a link `zz.mp4` to `day1/a.mp4` made `zz.mp4` its output, a user's trial), then
    its shortest (a glob's `**` followed a link back up 40 folders deep: one file, 40 outputs)."""
    first: dict[Path, Path] = {}
    for path in sorted(paths, key=lambda p: (any(part.startswith(".") for part in p.parts[1:]), _through_link(p),
                                             len(p.parts), p)):
        first.setdefault(path.resolve(), path)
    return sorted(first.values())


def _through_link(path: Path) -> bool:
    """Whether `path`, or a folder on its way, is a symbolic link."""
    return any(p.is_symlink() for p in (path, *path.parents))


def holds(folder: Path, inner: Path) -> bool:
    """Whether `folder` is `inner` or one of its parents, as folders, not names: the same folder reached by
    another path (a bind mount, a share mounted twice, a symbolic link on the way) is the same. Told by names
    alone, a batch whose output folder was its source folder mounted elsewhere wrote each output over its
    input, then took the inputs for changed and removed them: every original was lost."""
    try:
        target = os.stat(folder)
    except OSError:
        return False  # not there yet: made by the batch, so it holds nothing
    try:
        here = inner.resolve()
        for candidate in (here, *here.parents):
            if os.path.samestat(os.stat(candidate), target):
                return True
    except OSError:
        return False
    return False


def disk_full(reason: str) -> bool:
    """Whether a file failed for want of room (the disk full, or the user's quota), by what the failure says."""
    return any(os.strerror(code) in reason for code in (errno.ENOSPC, errno.EDQUOT))


def _glob_root(pattern: str) -> Path:
    """The folder a pattern's matches are mirrored from: its leading parts without wildcards."""
    parts = []
    for part in Path(pattern).parts[:-1]:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def output_settings(cfg: EngineConfig, policy: CarryPolicy) -> dict:
    """What shapes a batch's outputs, as {"key": its digest, "settings": the anonymizer (less the device it
    runs on), the encoder, the audio and tags}."""
    anonymizer = cfg.anonymizer.model_dump(mode="json")
    anonymizer["detector"].pop("device", None)
    settings = {"version": SETTINGS_VERSION, "anonymizer": anonymizer, "encoder": cfg.encoder.model_dump(mode="json"),
                "audio": policy.audio, "tags": policy.tags, "photo_imgsz": photo_config(cfg.anonymizer).detector.imgsz}
    rotate = batch_rotate(cfg)
    if rotate:  # only then: the outputs of batches from before the option keep their key
        settings["rotate"] = rotate
    return {"key": settings_key(settings), "settings": settings}


def batch_rotate(cfg: EngineConfig) -> int:
    """How every file of a batch is turned (`--rotate`): the first camera's, the one its flags make."""
    return cfg.cameras[0].rotate if cfg.cameras else 0


def photo_config(cfg: AnonymizerConfig) -> AnonymizerConfig:
    """The anonymizer's settings for photos: the same, detected at `PHOTO_IMGSZ` at least."""
    if cfg.detector.imgsz >= PHOTO_IMGSZ:
        return cfg
    return cfg.model_copy(update={"detector": cfg.detector.model_copy(update={"imgsz": PHOTO_IMGSZ})})


def anonymize_photo(image: np.ndarray, detect, cfg: AnonymizerConfig, camera: str = "photo") -> np.ndarray:
    """The anonymized copy of one still image: a video of one frame, through the same stages."""
    from anonengine.inline import anonymize_frames
    from anonengine.stages import CompositeStage

    composite = CompositeStage(cfg)
    height, width = image.shape[:2]
    ahead = composite.start(camera, False, width, height)
    frame = Frame(camera, 0, 0, Fraction(1, 1), image)
    ((_, anonymized, _),) = anonymize_frames([frame], detect, composite, cfg.hold.lookahead_frames, ahead=ahead)
    return anonymized


def frame_count(job: Job) -> int:
    """A file's frames as its container says (estimated from its duration when it does not); 1 for a photo,
    0 when it cannot be opened (it fails when its turn comes)."""
    if job.photo:
        return 1
    try:
        with av.open(str(job.source)) as container:
            stream = main_video(container)
            if stream.frames:
                return int(stream.frames)
            rate = stream.average_rate or stream.guessed_rate
            if stream.duration and rate:
                return max(1, round(stream.duration * stream.time_base * rate))
            if container.duration and rate:
                return max(1, round(container.duration / av.time_base * rate))
    except (av.FFmpegError, IndexError, OSError):
        pass
    return 0


def pending_jobs(jobs: list[Job], manifest: Manifest, settings: dict) -> tuple[list[tuple[Job, int]], int]:
    """The jobs the manifest does not have done with these settings, each with its expected frames; and how
    many it has."""
    todo, skipped = [], 0
    for job in jobs:
        try:
            done, _ = manifest.done(job.rel, job.source, settings["key"], job.output)
        except OSError:  # the input cannot be read to be checked (a link to a disk not mounted): it fails, named
            done = False
        if done:
            skipped += 1
            continue
        record = manifest.records.get(job.rel)
        if record is not None and record.made_from_elsewhere(job.source, job.output):
            # Another archive's file of the same name: its anonymized copy was replaced without a word.
            raise ConfigError(f"{job.output} is the anonymized copy of {record.source} (an earlier batch), not of "
                              f"{job.source}: give another --output-dir, or remove {job.output} to replace it")
        todo.append((job, frame_count(job)))
    return todo, skipped


def record_of(job: Job, output_dir: Path, done: Done, key: str, seconds: float) -> Record:
    """The manifest record of a finished job (its input's size and mtime as they are now: `FileRunner.run`
    fails a file that changed while it ran)."""
    stat = job.source.stat()
    return Record(job.rel, job.output.relative_to(output_dir).as_posix(), stat.st_size, stat.st_mtime_ns, done.digest,
                  key, done.frames, done.audio, round(seconds, 3), utc_now(), str(job.source.resolve()),
                  job.output.stat().st_size, done.damage)


@dataclass(frozen=True)
class Done:
    """A job done: its frames, its audio ("kept", "dropped" or "none"), its input's sha256, and what its input lost
    to damage (`VideoReader.damage`; "" where nothing)."""

    frames: int
    audio: str
    digest: str
    damage: str = ""


class FileRunner:
    """Anonymizes one job at a time into its final output, with detectors loaded once for all of them.

    `run` raises AnonError for a file that failed, Interrupted for one a stop signal ended; either way it
    leaves none of its files. `on_frame`: called per frame written; `say`: prints a line (audio dropped).
    """

    def __init__(self, cfg: EngineConfig, policy: CarryPolicy = DEFAULT_CARRY, camera: str = "cam0",
                 on_frame: Callable[[], object] | None = None, say: Callable[[str], None] | None = None) -> None:
        from anonengine.stages import DetectStage

        self.cfg, self.policy, self.camera = cfg, policy, camera
        self.rotate = batch_rotate(cfg)
        self.on_frame = on_frame or (lambda: None)
        self.say = say or (lambda line: print(line, file=sys.stderr))
        self.detect = DetectStage(cfg.anonymizer, cfg.engine.max_batch)
        self.photo_cfg = photo_config(cfg.anonymizer)
        self.detect_photos = DetectStage(self.photo_cfg, photos=True)
        self.detect_photos.turned_by[camera] = self.rotate  # a video's is told by its camera (`run_inline`)

    def run(self, job: Job) -> Done:
        """What a job now done made."""
        finished = False
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
            if job.output.name == job.source.name and os.path.samefile(job.output.parent, job.source.parent):
                raise OutputError(f"{job.output} is {job.source} itself (the same folder by another path): not "
                                  "written over")
            for leftover in job.leftovers():  # an earlier job's, killed outright
                leftover.unlink(missing_ok=True)
            if job.source.is_symlink() and not job.source.exists():
                raise InputError(f"a link to {os.readlink(job.source)}, which is not there (a disk not mounted?)")
            before = Fingerprint.of(job.source)
            digest = file_sha256(job.source)
            frames, audio, damage = self._photo(job) if job.photo else self._video(job)
            if Fingerprint.of(job.source) != before:
                job.output.unlink(missing_ok=True)
                raise InputError(f"{job.source} changed while it was anonymized")
            finished = True
            return Done(frames, audio, digest, damage)
        except OSError as exc:  # the input gone, a folder that cannot be made: one line, the job goes on
            raise AnonError(f"{exc.filename or job.rel}: {exc.strerror or exc}") from None
        finally:
            if not finished:
                for leftover in job.leftovers():
                    with contextlib.suppress(OSError):  # not made (its folder could not be): nothing to remove
                        leftover.unlink(missing_ok=True)

    def _video(self, job: Job) -> tuple[int, str, str]:
        from anonengine.inline import run_inline

        if self.policy.audio == "keep":
            check_audio_fits(job.source, job.output, batch=True)  # before its frames: an IP camera's mu-law in an MP4
        self.detect.begin(self.camera, job.rel)  # each file a video of its own, named in what is said of it
        camera = CameraConfig(name=self.camera, source=str(job.source), output=str(job.staged), rotate=self.rotate)
        cfg = self.cfg.model_copy(update={"cameras": [camera]})
        try:
            (result,) = run_inline(cfg, detect=self.detect, on_frame=self.on_frame)
        except OutputError as exc:  # said of the staged video, a hidden working name: the output is the user's
            raise type(exc)(str(exc).replace(str(job.staged), str(job.output))) from None
        if result.interrupted_by is not None:
            raise Interrupted(result.interrupted_by)
        with INTERRUPTS.deferred():  # short: a signal now waits until this file is whole
            extras = probe(job.source)
            for line in left_out_lines(job.rel, extras, self.policy):
                self.say(line)
            if extras.needs_remux(self.policy):
                carry_over(job.staged, job.source, job.output, self.policy, write_to=partial_path(job.output))
                job.staged.unlink()
            else:
                os.replace(job.staged, job.output)
        audio = ("kept" if self.policy.audio == "keep" else "dropped") if extras.has_audio else "none"
        return result.frames, audio, result.damage

    def _photo(self, job: Job) -> tuple[int, str, str]:
        # Its alpha read only where the output keeps one (a JPEG, most photos, has none to keep).
        photo = Photo.read(job.source, with_alpha=job.output.suffix.lower() in ALPHA_SUFFIXES).turned(self.rotate)
        if photo.pages > 1:  # a multi-page TIFF, an animated WebP: its other pictures were left out without a word
            self.say(f"anonengine: {job.rel}: {photo.pages} pictures; the first is anonymized, the others are left out")
        with INTERRUPTS.deferred():
            if self.detect_photos.detector is None and self.photo_cfg is self.cfg.anonymizer and self.detect.detector:
                self.detect_photos.detector = self.detect.detector  # the same model: loaded once
            elif self.detect_photos.detector is None:
                self.detect_photos.setup()
            # Told once a batch, at the first photo that shows persons only turned: its `--rotate` turns them all.
            self.detect_photos.begin(self.camera, job.rel, again=False)
            anonymized = anonymize_photo(photo.picture, self.detect_photos, self.photo_cfg, self.camera)
            if named_kind(job.output) == "video":
                write_still(anonymized, job.output, self.cfg)
            else:
                partial = partial_path(job.output)
                photo.write(anonymized, partial, job.output)
                os.replace(partial, job.output)
        self.on_frame()
        return 1, "none", ""

    def close(self) -> None:
        self.detect.close()
        self.detect_photos.close()


def not_recorded(exc: ManifestUnwritable, left: int) -> str:
    """Why a batch stopped whose manifest could not be written, for its summary."""
    return (f"stopped: {exc}; {left} file(s) not done (the first of them anonymized, not recorded). Make it "
            "writable, then run the same command again (what is recorded is kept)")


def write_still(picture: np.ndarray, output: Path, cfg: EngineConfig) -> None:
    """A photo's anonymized picture as a video of one frame (`run --video-source IMG.jpg --output-video x.mp4`),
    at the encoder's settings; the caller holds the output's lock. Before, such a photo went the videos' way:
    detected at the videos' 640 and never looked at closer, a crowd's far persons came out as photographed."""
    from anonengine.video import VideoWriter

    height, width = picture.shape[:2]
    writer = VideoWriter(output, width, height, Fraction(STILL_RATE), Fraction(1, STILL_RATE), cfg.encoder, lock=False)
    try:
        writer.write(picture, 0)
    except BaseException:
        writer.abort()
        raise
    writer.close()


class Batch:
    """Runs the jobs not done yet here, one at a time, with one `FileRunner`; `run` returns the summary."""

    def __init__(self, cfg: EngineConfig, jobs: list[Job], output_dir: Path, policy: CarryPolicy = DEFAULT_CARRY,
                 progress: bool = True, camera: str = "cam0") -> None:
        self.cfg, self.jobs, self.output_dir, self.policy = cfg, jobs, output_dir, policy
        self.progress, self.camera = progress, camera
        self.settings = output_settings(cfg, policy)
        self.summary = Summary()
        self.bar = None

    def run(self) -> Summary:
        started = time.monotonic()
        lock = FileLock(self.output_dir / BATCH_LOCK)
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except LockBusy as busy:
            raise OutputError(f"cannot write {self.output_dir}: another anonengine batch is writing it{busy.owner}") from None
        except OSError as exc:  # a read-only disk, a folder not ours: it was an internal error
            raise OutputError(f"cannot write {self.output_dir}: {exc.strerror or exc}") from None
        runner = None
        try:
            manifest = Manifest(self.output_dir)
            todo, self.summary.skipped = pending_jobs(self.jobs, manifest, self.settings)
            self.bar = self._progress_bar(sum(frames for _, frames in todo), len(todo))
            runner = FileRunner(self.cfg, self.policy, self.camera, on_frame=self.bar.update, say=self._say)
            for n, (job, frames) in enumerate(todo, start=1):
                if INTERRUPTS.requested:
                    break
                self.bar.set_postfix_str(f"file {n}/{len(todo)} {job.rel}", refresh=False)
                self._run_job(runner, job, frames, manifest)
                if self.summary.failed and self.summary.failed[-1][0] == job.rel and disk_full(self.summary.failed[-1][1]):
                    # Every file after it would fail the same way, each after its work: an archive's hours.
                    self.summary.stopped = (f"stopped: the disk of {self.output_dir} is full; {len(todo) - n} "
                                            "file(s) not started. Make room, then run the same command again "
                                            "(what is done is kept)")
                    break
        except ManifestUnwritable as exc:
            self.summary.stopped = not_recorded(exc, len(todo) - self.summary.done - len(self.summary.failed))
        except Interrupted as stop:
            self.summary.interrupted_by = stop.signum
        finally:
            self.summary.interrupted_by = self.summary.interrupted_by or INTERRUPTS.signum
            if self.bar is not None:
                self.bar.close()
            if runner is not None:
                runner.close()
            lock.release()
            self.summary.seconds = time.monotonic() - started
        return self.summary

    def _run_job(self, runner: FileRunner, job: Job, expected: int, manifest: Manifest) -> None:
        started, before = time.monotonic(), self.bar.n
        try:
            done = runner.run(job)
            with INTERRUPTS.deferred():  # the record follows the output, or neither is there
                manifest.add(record_of(job, self.output_dir, done, self.settings["key"], time.monotonic() - started),
                             self.settings["settings"])
            self.summary.add(done)
        except (ModelError, ManifestUnwritable):
            raise  # every file would fail the same way: the job ends, in one line
        except AnonError as exc:
            self._failed(job, str(exc))
        except Exception as exc:  # noqa: BLE001 - one file's failure must not end the job
            self._failed(job, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])
        finally:
            if self.bar.total is not None:  # the total takes the frames it did, not those it expected
                self.bar.total = max(self.bar.n, self.bar.total + (self.bar.n - before) - expected)
                self.bar.refresh()

    def _failed(self, job: Job, reason: str) -> None:
        self.summary.failed.append((job.rel, reason))
        self._say(f"anonengine: failed: {job.rel}: {reason}")

    def _say(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def _progress_bar(self, frames: int, files: int):
        from tqdm import tqdm

        return tqdm(total=frames or None, desc=f"batch of {files}", unit="frame", dynamic_ncols=True,
                    disable=not (self.progress and sys.stderr.isatty()))


def cmd_batch(args: argparse.Namespace) -> int:
    """`anonengine run` on a folder or a glob: the summary on stdout, a line per failed file on stderr;
    exit 1 when any failed or the batch stopped before its end, 128 + signal when a signal stopped it."""
    from anonengine.cli import config_from_run_flags

    if args.ray is not None and not args.output_dir:
        raise ConfigError("--ray runs a batch: give --output-dir OUT (a folder every node of the cluster sees)")
    if not args.output_dir:
        raise ConfigError(f"video source is not a file: {args.video_source} (a folder or a pattern is a batch: "
                          "give --output-dir OUT)")
    for flag, value in (("--output-video", args.output_video), ("--metadata", args.metadata),
                        ("--live", args.live), ("--tap", args.tap),
                        ("--http", args.http if args.http != "off" else None),  # off: what a batch does anyway
                        ("--http-token-file", args.http_token_file)):
        if value:
            raise ConfigError(f"{flag} is for a single file, not a batch (--output-dir)")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"cannot write {output_dir}: it is not a folder")
    jobs = find_jobs(args.video_source, output_dir)
    cfg = config_from_run_flags(args)
    from anonengine.engine.commands import resolve_models

    resolve_models(cfg)
    policy = CarryPolicy(args.audio, args.tags)
    if args.ray is not None:
        from anonengine.cluster import run_on_ray

        summary = run_on_ray(cfg, jobs, output_dir, policy, None if args.ray == "local" else args.ray,
                             progress=not args.quiet)
    else:
        summary = Batch(cfg, jobs, output_dir, policy, progress=not args.quiet, camera=args.camera).run()
    print(summary.line(output_dir), flush=True)
    if summary.stopped:
        print(f"anonengine: {summary.stopped}", file=sys.stderr)
    if summary.interrupted_by is not None:
        print(f"anonengine: interrupted by {signal.Signals(summary.interrupted_by).name} after {summary.done} "
              f"file(s); the same command does the rest (the file in flight is redone)", file=sys.stderr)
        return 128 + summary.interrupted_by
    return 1 if summary.failed or summary.stopped else 0


def cmd_photo(args: argparse.Namespace) -> int:
    """`anonengine run` on one photo: a photo out, treated as a batch treats its photos (detected at
    `PHOTO_IMGSZ` at least, written without EXIF). Before, it came out as a one-frame MP4 detected at the
    videos' size."""
    from anonengine.cli import config_from_run_flags, default_output
    from anonengine.engine.commands import resolve_models
    from anonengine.video import claim_output

    for flag, value in (("--metadata", args.metadata), ("--live", args.live), ("--tap", args.tap)):
        if value:
            raise ConfigError(f"{flag} is for videos, not a photo ({args.video_source})")
    classify(args.video_source)  # "not found", "not a file": as any source
    source = Path(args.video_source)
    output = Path(args.output_video or default_output(args.video_source))
    cfg = config_from_run_flags(args)
    resolve_models(cfg)
    lock = claim_output(output)
    runner = FileRunner(cfg, camera=args.camera)
    try:
        runner.run(Job(source, source.name, output, photo=True))
    finally:
        runner.close()
        lock.release()
    log.info("%s: photo anonymized -> %s", args.camera, output)
    return 0


__all__ = ["Batch", "Done", "FileRunner", "Job", "Summary", "anonymize_photo", "cmd_batch", "cmd_photo", "find_jobs",
           "output_settings", "pending_jobs", "record_of"]
