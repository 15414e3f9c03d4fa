"""The four stages of anonymization, each a small class with one lifecycle: setup, process, close.

They do not know which process they run in: `anonengine.inline` chains them in one process (the
reference), the engine's services run each in its own process and move frames between them.
"""

from __future__ import annotations

import json
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from anonengine.backends import STRIDE
from anonengine.compositor import Compositor, FuturePixels, Learnt, obscured_frame
from anonengine.config import AnonymizerConfig, CameraConfig, EncoderConfig, SourcesConfig
from anonengine.detections import Detections, box_covered
from anonengine.errors import DetectionError, OutputError
from anonengine.messages import HoldState
from anonengine.paths import partial_metadata_path
from anonengine.schedule import REMEMBERED, DetectionSchedule
from anonengine.sources import LiveFeed, source_of
from anonengine.video import (
    Frame,
    StreamInfo,
    VideoReader,
    VideoWriter,
    as_shown,
    earlier_recording,
    other_looks,
    refuse_unreplaceable,
    turn,
)

log = logging.getLogger(__name__)
STRETCHED_SAME_IOU = 0.9  # a person found as shown and as stored: one box, only where the two nearly agree
# The picture turned (`DetectStage._turned`): one frame in so many is looked at one more way round, and every frame
# for so many after one showed a person so. A find counts from TURNED_PERSON_CONF (textures taken for persons
# upside down, a bus's leaf logo, scored 0.21 to 0.37 at 960; upside-down footage's persons 0.86 and more), and
# one over a person found upright by TURNED_SAME_IOU is that person (below, both are hidden, as `adding` keeps them).
# A find a quarter or more under persons found upright (TURNED_PART_COVERED) is taken for one of them seen again,
# better or worse: the street clip's person filling the frame, found upright as overlapping boxes, turned over gave
# his legs as a person (0.44 to 0.71, 72 to 97% under the upright boxes); a person cut by a frame's edge, found
# upright as a narrow box, was found whole upside down (34 to 40% under it). Such a find is hidden, but it neither
# sets the watch off (which doubled the detector's work on both clips: every live run of an operator's trial said
# the advice) nor says the advice; a person upside down that the upright look missed lies outside what it found.
TURNS = (180, 90, 270)  # clockwise: upside down first (a camera mounted so), then on either side
TURNED_LOOK_EVERY = 25
TURNED_WATCH_FRAMES = 250
TURNED_PERSON_CONF = 0.5
# On either side, from 0.65: a generated scene's shapes and a photo's texture scored 0.51 as persons lying so (a
# box over most of the picture); the demo clip's persons on their side, 0.69 to 0.92.
SIDEWAYS_PERSON_CONF = 0.65
TURNED_SAME_IOU = 0.7
TURNED_PART_COVERED = 0.25
# The advice to turn the video is said once persons were found only turned in TURNED_TELL_FRAMES frames looked at so,
# and in at least TURNED_TELL_SHARE of those looked at so that showed anyone. A person an upright camera's detector
# missed is found turned now and then (a soak's street camera: a walker cut by the right edge, missed upright at
# 0.89 beside them, found upside down at 0.54 in 1 of 250 frames): hidden, and the watch set off, but told to turn
# the video round, an operator would have turned an upright camera over. Footage that plays turned shows its persons
# found only turned in most of its frames.
TURNED_TELL_FRAMES = 3
TURNED_TELL_SHARE = 0.5
# Night footage: the pose model misses persons in the dark that it finds brightened. A red team's dark clip (mean
# luma 22): a dark-suited person standing still, found at no score down to 0.1 as filmed and at 0.47 to 0.65 with
# gamma 0.5, came out as filmed in 75 of 75 frames. Generated street clips darkened to 0.3 and 0.15 of their light,
# sensor noise added: persons found in 69% and 63% of their frames as filmed, 88% and 85% brightened (93% in
# daylight). A picture with much dark in it (DARK_SHARE of its pixels under DARK_LUMA: a street lamp or a lit window
# lifts the mean, not the dark parts: a night team's lamp clip, mean luma 71, showed a person standing in the dark
# in 73 of 100 frames while the switch was the mean's) is looked at brightened as well as as filmed: on very noisy
# footage the gamma lifts the noise too, and a person found at 0.28 to 0.48 as filmed was found at none brightened
# (47 of 100 frames shown while the brightened look replaced the other). Daylight clips here have 8 to 22% of their
# pixels under 40; night ones 30% (an IR camera's bright centre) and more.
DARK_LUMA = 40
DARK_SHARE = 0.3
DARK_GAMMA = 0.5
_BRIGHTENED = np.round(255 * (np.arange(256) / 255) ** DARK_GAMMA).astype(np.uint8)
# A compositor that takes over a stream learns no pixel near a person for this many frames (`FIRST_SEEN_GUARD`):
# long enough for persons in view at the restart to move on (10 s at 25 frames/s).
TAKEN_OVER_GUARD_FRAMES = 250
FEED_CLOSE_S = 2.0  # a live source's reading thread, stopped, ends at its next frame or read timeout


class Stage:
    """Lifecycle shared by every stage; `close` must be safe to call after a failed `setup`."""

    def setup(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        self.setup()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CaptureStage(Stage):
    """Decodes one camera's source into `Frame`s: a file to its end, a live source for ever (reconnecting).

    `setup` fails (InputError) when a file cannot be read, or a live source cannot be reached within
    `connect_timeout_s`; once it was, a live source that drops is reconnected rather than ended.
    """

    def __init__(self, camera: CameraConfig, cfg: SourcesConfig | None = None) -> None:
        """`camera`: its source, name, RTSP transport and turn."""
        self.camera_cfg, self.source, self.camera = camera, camera.source, camera.name
        self.cfg = cfg or SourcesConfig()
        self.reader: VideoReader | None = None
        self.feed: LiveFeed | None = None
        self.stuck: str | None = None  # why a live source's frames ended: its connection stuck (`LiveFeed.stuck`)

    def setup(self) -> None:
        kind = source_of(self.camera_cfg)
        if not kind.live:
            self.reader = VideoReader(self.source, self.camera, kind=kind, sources_cfg=self.cfg)
            return
        self.feed = LiveFeed(kind, self.camera, self.cfg).start()
        self.feed.first_picture(self.cfg.connect_timeout_s)

    @property
    def info(self) -> StreamInfo:
        return self.reader.info if self.reader is not None else self.feed.info

    def frames(self, should_stop=lambda: False) -> Iterator[Frame]:
        """The frames; for a live source, until `should_stop()` (checked at least every 0.2 s)."""
        if self.reader is not None:
            yield from self.reader
            return
        seq = 0
        while not should_stop():
            frame = self.feed.get(timeout=0.2)
            if frame is None and (stuck := self.feed.stuck()) is not None:
                # An engine's capture starts afresh; here the process is the job's, and a UDP source's port stays
                # taken by the stuck read: the source ends, as at a stop, and the job says why (`stuck`).
                self.stuck = stuck
                return
            if frame is not None:
                frame.seq = seq
                seq += 1
                yield frame

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.feed is not None:
            self.feed.stop()
            # Its connection closed before whatever comes next connects (the engine's capture, after the
            # command's check): a camera may take one client at a time.
            self.feed.join(FEED_CLOSE_S)
class DetectStage(Stage):
    """Finds persons in a batch of frames. A failure yields `None` per frame (obscure) or raises (stop)."""

    def __init__(self, cfg: AnonymizerConfig, max_batch: int = 1, cpu_share: float = 1.0, photos: bool = False) -> None:
        """`cpu_share`: of the cores, what the detector takes unless `detector.threads` says (`cpu_threads`).
        `photos`: each image is also looked at closer (`closer_sizes`): a photo has no other frame to be
        caught in."""
        self.cfg, self.max_batch, self.cpu_share, self.photos = cfg, max_batch, cpu_share, photos
        self.detector = None
        # A camera's frames since one was looked at upside down (the first is), and the frames left during which
        # every one is looked at so: each camera its own, or one camera's would decide for all of a worker's.
        self.since_turned_look: dict[str | None, int] = {}
        self.next_turn: dict[str | None, int] = {}  # the way round a camera's next look takes (of TURNS)
        self.turned_watch: dict[tuple[str | None, int], int] = {}  # (camera, turn): frames left looked at so
        self.turned_told: set[tuple[str | None, int]] = set()  # the cameras and turns the log named
        # (camera, turn) -> [frames looked at so with persons found only so, frames looked at so that showed anyone]
        self.turned_tally: dict[tuple[str | None, int], list[int]] = {}
        self.names: dict[str | None, str] = {}  # what the log calls a camera, where not by its name (a batch's file)
        # Degrees each camera's frames were turned before they came (`CameraConfig.rotate`): the turn advised counts
        # from the source's picture. Advised from the frames', a run with --rotate 90 was told --rotate 270, then
        # with that, --rotate 90 (a user's trial).
        self.turned_by: dict[str | None, int] = {}

    def begin(self, camera: str | None, name: str, again: bool = True) -> None:
        """`camera`'s frames are now of `name` (a batch's next file, looked at under the batch's one camera name):
        the log names it, and, `again`, its frames are looked at turned as a new camera's are."""
        self.names[camera] = name
        if again:
            for state in (self.since_turned_look, self.next_turn):
                state.pop(camera, None)
            for state in (self.turned_watch, self.turned_tally):
                for key in [key for key in state if key[0] == camera]:
                    del state[key]
            self.turned_told = {key for key in self.turned_told if key[0] != camera}

    def setup(self) -> None:
        from anonengine.detector import PersonDetector

        self.detector = PersonDetector(self.cfg, self.max_batch, self.cpu_share)

    def schedule(self, in_flight: int = REMEMBERED, ahead: int = 0) -> DetectionSchedule:
        """A new stream's schedule: which of its frames to detect (`detector.stride`); the others are hidden
        by the boxes of the detections on either side of them. `in_flight`: the most frames the stream can
        have in flight, which the schedule remembers its decisions for (offered again after a restart).
        `ahead`: the frames each waits for before it is drawn (a recording's, `BackgroundConfig.frames_ahead`)."""
        detector = self.cfg.detector
        return DetectionSchedule(detector.stride, detector.stride_mode == "adaptive", self.cfg.mask.edge_snap,
                                 in_flight, recording=ahead > 0)

    def process(self, images: list[np.ndarray], pixel_aspects: list[Fraction] | None = None,
                cameras: list[str] | None = None, turned: list[int] | None = None) -> list[Detections | None]:
        """The persons in each image; `pixel_aspects`: each image's (`StreamInfo.pixel_aspect`), which the
        detector looks at it with (`as_shown`), its persons then given in the image's own pixels; `cameras`:
        each image's camera (when to look at it turned is the camera's own: `_turned`); `turned`: how each was
        turned before it came (`turned_by`)."""
        for camera, degrees in zip(cameras or (), turned or ()):
            self.turned_by[camera] = degrees
        try:
            aspects = pixel_aspects or [Fraction(1)] * len(images)
            shown = [as_shown(image, aspect) for image, aspect in zip(images, aspects, strict=True)]
            found = self.detector.detect(shown)
            dark = [i for i, image in enumerate(shown) if has_much_dark(image)]
            if dark:  # looked at brightened too (`DARK_SHARE`): the persons found either way
                for i, more in zip(dark, self.detector.detect([brightened(shown[i]) for i in dark])):
                    found[i] = found[i].adding(more)
            if self.photos:
                found = [self._closer(image, persons) for image, persons in zip(shown, found)]
            found = [d if seen is image else d.resized(image.shape[:2]) for d, seen, image in zip(found, shown, images)]
            # Whichever picture shows persons as they are (stored or shown, far from square; 16:9, whose tag a copy
            # lost): each looked at. A person's boxes from two looks differ (found stretched, one was cut short at the
            # feet): both kept.
            more = [(i, aspect) for i, (image, own) in enumerate(zip(images, aspects))
                    for aspect in other_looks(image.shape, own)]
            if more:
                looks = [as_shown(images[i], aspect) for i, aspect in more]
                for (i, _), persons in zip(more, self.detector.detect(looks)):
                    found[i] = found[i].adding(persons.resized(images[i].shape[:2]), same_iou=STRETCHED_SAME_IOU)
            return self._turned(images, found, cameras or [None] * len(images))
        except Exception as exc:  # noqa: BLE001 - whatever broke, the frame must not go out raw
            if self.cfg.on_detector_error == "stop":
                raise DetectionError(f"detection failed: {type(exc).__name__}: {exc}") from exc
            log.warning("detection failed, obscuring %d frame(s): %s", len(images), exc)
            return [None] * len(images)

    def _turned(self, images: list[np.ndarray], found: list[Detections], cameras: list[str | None]
                ) -> list[Detections]:
        """`found` with the persons found in the pictures turned (upside down, or on either side: `TURNS`), where
        they are looked at so: every photo every way; a camera's first frames each the next way round, then one
        frame in `TURNED_LOOK_EVERY`; and every frame for `TURNED_WATCH_FRAMES` the way round that showed a
        person. The pose model finds few persons upside down (bus.jpg turned over: 1 of 4)
        or lying on their side: a video that plays upside down (a camera mounted so, a phone's whose turn was
        lost) came out with every person shown, exit 0 (an archivist's trial); one on its side, the persons it
        missed lying so (the demo clip turned 90 degrees: 48 of 48 frames showed one). They are hidden now, and
        said once a camera: turning the video finds them at a fraction of the cost."""
        due: dict[int, list[int]] = {way: [] for way in TURNS}  # the images to look at each way round
        for i, camera in enumerate(cameras):
            since = self.since_turned_look.get(camera, TURNED_LOOK_EVERY - 1) + 1
            looks = {way for way in TURNS if self.turned_watch.get((camera, way), 0) > 0}
            if self.photos:
                looks = set(TURNS)
                since = 0
            elif since >= TURNED_LOOK_EVERY or self.next_turn.get(camera, 0) < len(TURNS):
                # A camera's first frames looked at each one more way round: its first frame looked at every way
                # came out 0.55 s later (a portrait input's model loaded for it), which a live camera waits for.
                next_way = self.next_turn.get(camera, 0)
                looks.add(TURNS[next_way % len(TURNS)])
                self.next_turn[camera] = next_way + 1
                since = 0
            self.since_turned_look[camera] = since
            for way in TURNS:
                self.turned_watch[camera, way] = max(0, self.turned_watch.get((camera, way), 0) - 1)
                if way in looks:
                    due[way].append(i)
        for way, indices in due.items():
            if not indices:
                continue
            seen = self.detector.detect([np.ascontiguousarray(turn(images[i], way)) for i in indices])
            for i, persons in zip(indices, seen):
                # Footage told to play turned so (below) shows its persons upright in the picture turned: they are
                # found there from the upright look's score. With the high one, a person standing still on their
                # side from the first frame, found at 0.15 to 0.3 (the sample clip turned 90 degrees), was never
                # hidden: the 87 of 300 frames the audit finds at 0.65 showed him, as every other did.
                told = (cameras[i], way) in self.turned_told
                score = self.cfg.detector.person_conf if told else (
                    TURNED_PERSON_CONF if way == 180 else SIDEWAYS_PERSON_CONF)
                persons = persons.confident(score).turned_back(way)
                tally = self.turned_tally.setdefault((cameras[i], way), [0, 0])
                tally[1] += bool(len(persons) or len(found[i]))
                if len(persons) == 0:
                    continue
                added = found[i].adding(persons, same_iou=TURNED_SAME_IOU)
                new, upright = added.boxes[len(found[i]):], found[i].boxes
                if len(new) and box_covered(new, upright).min() < TURNED_PART_COVERED:
                    if not self.turned_watch.get((cameras[i], way)):
                        tally[:] = [0, 1]  # a watch starts: counted from here (a camera turned over after months)
                    self.turned_watch[cameras[i], way] = TURNED_WATCH_FRAMES
                    tally[0] += 1
                    # Photos are each looked at every way: a batch whose photos show persons only so is told at
                    # its first (its `--rotate` turns them all).
                    enough = tally[0] >= max(1 if self.photos else TURNED_TELL_FRAMES, TURNED_TELL_SHARE * tally[1])
                    if enough and (cameras[i], way) not in self.turned_told:
                        self.turned_told.add((cameras[i], way))
                        total = (self.turned_by.get(cameras[i], 0) + way) % 360
                        log.warning("%spersons found %s (the picture looked at turned %d degrees): hidden; if the "
                                    "camera is mounted so or the video plays so, %s it (--rotate %d, or the "
                                    "camera's rotate: %d) finds them at a fraction of the cost",
                                    f"{self.names.get(cameras[i], cameras[i])}: " if cameras[i] else "",
                                    "upside down" if way == 180 else "on their side", way,
                                    "turning" if total else "not turning", total, total)
                found[i] = added
        return found

    def _closer(self, image: np.ndarray, found: Detections) -> Detections:
        det = self.cfg.detector
        for imgsz in closer_sizes(image.shape[:2], det.imgsz, det.photo_max_imgsz):
            (more,) = self.detector.detect([image], imgsz)
            found = found.adding(more)
        return found


def has_much_dark(image: np.ndarray) -> bool:
    """Whether `DARK_SHARE` or more of the picture is darker than `DARK_LUMA` (from every 8th pixel each way:
    0.1 ms a 720p frame)."""
    luma = image[::8, ::8]
    if luma.ndim == 3:
        luma = cv2.cvtColor(np.ascontiguousarray(luma[..., :3]), cv2.COLOR_BGR2GRAY)
    return np.count_nonzero(luma < DARK_LUMA) >= DARK_SHARE * luma.size


def brightened(image: np.ndarray) -> np.ndarray:
    """The picture through a gamma of `DARK_GAMMA`: its dark parts lifted, its bright ones nearly kept."""
    return cv2.LUT(image, _BRIGHTENED)


def closer_sizes(shape: tuple[int, int], imgsz: int, most: int) -> list[int]:
    """The sizes a picture of `shape` (h, w) is looked at again, after `imgsz`, for persons too small there: the
    pose model finds persons from about 100 px tall in its input up to several times that, so each look is up
    to 4 times closer than the last, until the picture's own size or `most`. A 12-MP phone photo (4000x3000)
    at 960 is shrunk 4 times: its persons under about 400 px tall were missed."""
    long_side = max(shape)
    sizes: list[int] = []
    last = imgsz
    while True:
        size = min(last * 4, -(-long_side // STRIDE) * STRIDE, most // STRIDE * STRIDE)
        if size < last * 1.5:  # hardly closer: nothing the last look could not see
            return sizes
        sizes.append(size)
        last = size


class CompositeStage(Stage):
    """Anonymizes frames; keeps one background model per camera.

    A frame is learnt (its persons hidden, the background updated) and then rendered: at once for a live
    source; for a recording once `frames_ahead` frames after it were learnt too, so that what the camera
    sees later fills what it has not seen yet (`BackgroundConfig.future_frames`).
    """

    def __init__(self, cfg: AnonymizerConfig, privacy_zones: dict[str, list] | None = None) -> None:
        self.cfg = cfg
        self.privacy_zones = dict(privacy_zones or {})
        self.compositors: dict[str, Compositor] = {}
        self.ahead: dict[str, int] = {}

    def setup(self) -> None:
        # A camera's first compositor imports the tracker (about 0.7 s). Done now, before a live camera's
        # frames wait on it.
        Compositor(self.cfg)

    def start(self, camera: str, live: bool, width: int, height: int, hold: HoldState | None = None,
              next_seq: int = 0) -> int:
        """A camera's stream begins (again: its model starts afresh); returns how many frames after a
        frame must be learnt before it is rendered. `next_seq`: its first frame here; past 0, a dead compositor's
        stream, whose mask `hold` (kept by it) this goes on from (`MaskHold.take_over`), and whose background
        model, lost, starts guarded (`BackgroundModel.guard`)."""
        self.forget(camera)
        self.ahead[camera] = self.cfg.background.frames_ahead(live, width, height)
        if next_seq > 0:  # a dead compositor's stream: its background model is lost, its hold kept
            compositor = self._compositor(camera)
            compositor.background.guard(TAKEN_OVER_GUARD_FRAMES)
            if hold is not None and compositor.hold is not None:
                try:
                    compositor.hold.take_over(hold, next_seq)
                except Exception as exc:  # noqa: BLE001 - inconsistent (a torn or foreign file): it knows no one
                    compositor.hold.reset()
                    log.warning("%s: predecessor's mask hold unusable (%s); starting without it", camera, exc)
        return self.ahead[camera]

    def kept_hold(self, camera: str, stream: str, seq: int) -> HoldState | None:
        """The camera's mask hold after frame `seq`, for a successor (None: it holds no one by config)."""
        compositor = self.compositors.get(camera)
        if compositor is None or compositor.hold is None:
            return None
        return compositor.hold.kept(camera, stream, seq)

    def _compositor(self, camera: str) -> Compositor:
        if camera not in self.compositors:
            self.compositors[camera] = Compositor(self.cfg, self.privacy_zones.get(camera), self.ahead.get(camera, 0))
        return self.compositors[camera]

    def learn(self, frame: Frame, detections: Detections | None, future: list[Detections | None] = (),
              future_pixels: FuturePixels | None = None) -> Learnt | None:
        """Hides the frame's persons and learns its background; None when it is to be obscured whole
        (no detections, or not detected without a detection on either side of it: fail closed).

        `future`: detections of the look-ahead's next frames (`AnonymizerConfig.lookahead`; fewer at the end),
        in order; None for a frame whose detection failed, which tells as little as one not detected.
        `future_pixels`: those frames' pixels (`Compositor.learn`).
        """
        compositor = self._compositor(frame.camera)
        shape = frame.image.shape[:2]
        if detections is None:
            compositor.pass_obscured(detection_lost=True)
            return None
        if not detections.detected and not (compositor.has_detection(shape)
                                            and any(f is not None and f.detected for f in future)):
            # Between detections (detector.stride), without one on either side: the stream ended first (a live
            # camera stopped), the next detection failed or is late, or the one before was lost (late, or the
            # compositor restarted). Nothing tells where a person is: fail closed.
            compositor.pass_obscured(detection_lost=False)
            return None
        return compositor.learn(frame.image, detections,
                                [Detections.undetected(shape) if f is None else f for f in future], future_pixels)

    def render(self, frame: Frame, learnt: Learnt | None) -> tuple[np.ndarray, Learnt | None]:
        """The anonymized image of a learnt frame, and what was learnt of it as drawn (`Compositor.drawn`)."""
        if learnt is None:
            return obscured_frame(frame.image.shape), None
        return self.compositors[frame.camera].drawn(frame.image, learnt)

    def forget(self, camera: str) -> None:
        self.compositors.pop(camera, None)
        self.ahead.pop(camera, None)


def frame_record(frame: Frame, persons: list[dict] | None, motion: list[list[int]] | None = None) -> dict:
    """A frame's metadata line; `persons` is None for an obscured frame; `motion`: the patches hidden for what moves
    there beyond the persons (`Learnt.motion_meta`)."""
    return {
        "camera": frame.camera,
        "index": frame.seq,
        "pts": frame.pts,
        "time": round(frame.time, 6),
        "obscured": persons is None,
        "persons": persons or [],
        "motion": motion or [],
    }


class EncodeStage(Stage):
    """Writes one camera's anonymized frames, and optionally per-frame metadata as JSON lines.

    Both files keep a `.partial` name until `close()`; `abort()` removes them.
    """

    def __init__(
        self, output: str, info: StreamInfo, cfg: EncoderConfig, metadata: str | None = None, lock: bool = True,
        live: bool = False,
    ) -> None:
        self.output, self.info, self.cfg, self.metadata = output, info, cfg, metadata
        self.lock = lock  # False: the caller holds the output's lock (see VideoWriter)
        self.live = live  # a live camera's: an earlier recording is kept (`claim_output`), not written over
        self.writer: VideoWriter | None = None
        self._meta_file = None
        self._meta_partial: Path | None = None

    def setup(self) -> None:
        meta_partial = partial_metadata_path(self.metadata) if self.metadata else None
        self.writer = VideoWriter(
            self.output, self.info.width, self.info.height, self.info.rate, self.info.time_base, self.cfg,
            lock=self.lock, partials=(meta_partial,) if meta_partial else (), colour=self.info.colour,
            pixel_aspect=self.info.pixel_aspect, keep=earlier_recording(self.metadata, self.live),
        )
        if self.metadata:
            path = Path(self.metadata)
            try:
                refuse_unreplaceable(path, "metadata ")
            except OutputError:
                self.abort()
                raise
            self._meta_partial = meta_partial
            try:
                self._meta_file = open(self._meta_partial, "w")
            except OSError as exc:
                self.abort()
                raise OutputError(f"cannot write metadata {path}: {exc.strerror}") from None

    @property
    def frames(self) -> int:
        return self.writer.frames if self.writer else 0

    def process(self, frame: Frame, image: np.ndarray, persons: list[dict] | None,
                motion: list[list[int]] | None = None) -> None:
        """Writes `image` at the frame's time, and its record (`frame_record`); `persons` is None for an obscured
        frame."""
        self.writer.write(image, frame.pts)
        if self._meta_file is not None:
            try:
                self._meta_file.write(json.dumps(frame_record(frame, persons, motion)) + "\n")
            except OSError as exc:  # a full disk
                raise OutputError(f"cannot write metadata {self.metadata}: {exc.strerror}") from None

    def close(self, complete: bool = True) -> Path | None:
        """Finalises the output, playable; returns where it is.

        `complete`: every frame of the source was written, and the files take their final names. Else
        (interrupted) they keep their `.partial` names, so they cannot pass for the whole video.
        """
        if self.writer is None:
            return None
        try:
            if self._meta_file is not None:
                # Flushed first: a disk that filled up fails the run before the video takes its name.
                self._meta_file.close()
            path = self.writer.close(complete)  # on failure it removed its partial file itself
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write metadata {self.metadata}: {exc.strerror}") from None
        except OutputError:
            self.writer = None
            self.abort()
            raise
        self.writer = None
        if self._meta_file is not None:
            if complete:
                os.replace(self._meta_partial, self.metadata)
            self._meta_file = None
        return path

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        if self._meta_file is not None:
            self._meta_file.close()
            self._meta_partial.unlink(missing_ok=True)
            self._meta_file = None
