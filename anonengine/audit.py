"""An independent adversary over anonymized video: does a detector still find anyone?

It runs the pose model harder than the engine does (low threshold, larger input, the frame, its
mirror image, the frame upside down and on either side; one with much dark brightened too, as the run does)
on every anonymized frame. The pose model misses
most persons turned (on `bus.jpg` upside down, 1 of 4), as the engine does on a camera mounted so without
its `--rotate`: the turned views are what find them then. A find whose pixels are still the original's
(`UNCHANGED_SHARE` of its box within `UNCHANGED_LEVELS` grey levels) is a leak: a person shown as
filmed. A find over replaced pixels is the drawn skeleton or the fill (a stick figure is meant to
read as a person) and is reported apart, unless the adversary is sure of it (`DRAWN_PERSON_SCORE`): a
person drawn back, or the files given the other way round, is a leak too. Output: JSON, and a contact sheet of the worst frames
(original | anonymized, finds boxed: red for leaks, yellow for the rest).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from anonengine.backends import detector_long_side
from anonengine.config import DetectorConfig
from anonengine.contact_sheet import _panel
from anonengine.detections import box_iou, share_within, turned_back_boxes
from anonengine.detector import load_yolo, select_device
from anonengine.errors import InputError, ModelError, first_line
from anonengine.paths import ROTATIONS, is_photo, is_sequence
from anonengine.sources import classify
from anonengine.stages import SIDEWAYS_PERSON_CONF, TURNED_PERSON_CONF, brightened, closer_sizes, has_much_dark
from anonengine.video import VideoReader, as_shown, other_looks, turn

UNCHANGED_SHARE = 0.6
# The pose model finds a whole person about this tall in its input and taller (measured on 720p street clips: 91
# px found in 8 of 8 frames, 76 in none; README, Privacy): the adversary cannot report anyone smaller.
MIN_PERSON_INPUT_PX = 90
UNCHANGED_LEVELS = 12  # grey levels: what two encodes of the same picture differ by
# A find this sure over replaced pixels is no skeleton or fill (those scored 0.20 to 0.55 on every output a user's
# trial audited): a person drawn back (their picture learnt earlier), or the two files given the other way round
# (raw footage audited against its anonymized copy scored 0.85 to 0.92 in 48 of 48 frames, and passed). A leak.
DRAWN_PERSON_SCORE = 0.7
# Turned, the fill scores higher: a mirror-filled bus logo upside down, 0.60 to 0.73 in 62 of 75 frames of a red team's
# portrait clip (4 taken for persons drawn back, and the run told to turn the video round). Persons of footage that
# is upside down score 0.86 and more there.
TURNED_DRAWN_PERSON_SCORE = 0.85
# The upside-down view is there for footage that is (a camera mounted so, a phone's video whose turn was lost):
# its persons scored 0.86 to 0.87 there. Textures took for persons upside down scored 0.21 to 0.53 (a bus's leaf
# logo in 16 of 39 outputs of an archivist's trial, each failed and told to run again with --rotate 180; a
# panorama's blurred crowd): below this, an upside-down find is not counted. The run's own look upside down
# hides what it finds from the same score (`stages.TURNED_PERSON_CONF`).
UPSIDE_DOWN_SCORE = TURNED_PERSON_CONF
SAME_FIND_IOU = 0.5  # a find in another view this close to one already made is the same person
TURN_FRAMES = 125  # frames looked at, until one tells how the output was turned (a first may be black, or obscured)
# Pixels kept as filmed differ by x264's noise only: within 4 levels, a right copy keeps 7% of a frame where two
# persons fill it, 40 to 64% elsewhere; another scene or a wrong turn 0.4 to 0.8% (within 12: up to 6%).
TURN_LEVELS = 4
TURN_KEPT_MIN = 0.03
PHOTO_MAX_IMGSZ = DetectorConfig().photo_max_imgsz  # a photo is looked at as closely as a run looks at it


@dataclass
class AuditFrame:
    index: int
    time: float
    persons: list[dict] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max((p["score"] for p in self.persons), default=0.0)


@dataclass
class AuditReport:
    original: str
    anonymized: str
    frames: int
    conf: float
    imgsz: int
    flagged: list[AuditFrame]  # frames with at least one leak
    drawn: list[AuditFrame] = field(default_factory=list)  # frames with finds over replaced pixels only
    rotate: int = 0  # how the original was turned to compare (the run's `--rotate`)
    shown_size: tuple[int, int] = (0, 0)  # (width, height) of the frames as the adversary looked at them
    closest: int = 0  # a photo larger than `imgsz`: the largest size it was also looked at (`closer_sizes`)
    cut_short: bool = False  # the anonymized video ends before the original: its `frames` were audited
    skipped: int = 0  # the original's frames that are not in the anonymized video midway (a live run's dropped)

    @property
    def smallest_person(self) -> int:
        """About the shortest whole person, in pixels of the frame's height as shown, the adversary finds: the
        pose model needs about MIN_PERSON_INPUT_PX of its input, whose long side is `imgsz` (README, Privacy)."""
        looked = max(self.imgsz, self.closest)
        return math.ceil(MIN_PERSON_INPUT_PX * max(self.shown_size) / looked) if max(self.shown_size) else 0

    @property
    def found_turned(self) -> dict[int, int]:
        """Frames with a leak found only in the picture turned, by the degrees (clockwise) it was turned: footage
        that plays so (a camera mounted so, a phone's video whose turn was lost), run without its `--rotate`? A turned
        find mostly within one made upright (or mirrored) is a part of that person seen again: a user's upright leaks
        were each told to be run again with `--rotate 180` (19 of 48 frames of a copy of the original)."""
        def only_turned(persons: list[dict], view: str) -> bool:
            upright = [p["box"] for p in persons if p.get("view") not in TURNED_VIEWS.values()]
            return any(p.get("view") == view and not mostly_within(p["box"], upright) for p in persons)

        return {degrees: sum(only_turned(f.persons, view) for f in self.flagged)
                for degrees, view in TURNED_VIEWS.items()}

    @property
    def upside_down(self) -> int:
        return self.found_turned[180]

    @property
    def drawn_persons(self) -> int:
        """Frames whose leaks are all persons over replaced pixels (`DRAWN_PERSON_SCORE`): drawn back, or the
        files swapped?"""
        return sum(all(p.get("replaced") for p in f.persons) for f in self.flagged)

    @property
    def skeleton_only(self) -> int:
        return len(self.drawn)

    @property
    def leak_rate(self) -> float:
        return len(self.flagged) / max(1, self.frames)

    @property
    def found(self) -> int:
        """Frames where the adversary found anything, leak or skeleton."""
        return len(self.flagged) + self.skeleton_only

    def to_json(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k not in ("flagged", "drawn")},
                "leak_rate": self.leak_rate, "flagged": [asdict(f) for f in self.flagged],
                "skeleton_finds": [asdict(f) for f in self.drawn]}


def audit(original: str, anonymized: str, pose_model: str = "yolo11n-pose.pt", conf: float = 0.2,
          imgsz: int = 960, device: str = "auto", augment: bool = True, rotate: int | None = None) -> AuditReport:
    """`rotate`: the run's `--rotate`, by which the original is turned to be compared with the output; None:
    found from the pixels (`matching_turn`)."""
    rotate = matching_turn(original, anonymized, rotate)
    anonymizeds = VideoReader(anonymized)
    # Frames are paired by time (below): an image sequence has none of its own, and its run's (`--fps`) is the
    # output's rate.
    originals = turned_original(original, rotate, anonymizeds.info.rate if is_sequence(original) else None)
    model = load_yolo(pose_model, "pose")
    device = select_device(device)
    try:  # Ultralytics loads a file of another format only at the first prediction
        model.predict(np.zeros((32, 32, 3), np.uint8), imgsz=32, device=device, verbose=False)
    except Exception as exc:  # noqa: BLE001 - Ultralytics raises many types for a bad file
        raise ModelError(f"cannot load model {pose_model}: {first_line(exc)}") from None
    flagged, drawn, count, shown_size, closest = [], [], 0, (0, 0), 0
    photo = is_photo(original)
    original_frames, anonymized_frames = iter(originals), iter(anonymizeds)
    # Paired by time, not by order: a live run's frames dropped midway (the engine behind) put every later frame
    # against an earlier original's, whose persons were elsewhere (a red team's trial: a skeleton over a hidden
    # walker flagged as shown; a leak could as well pass as replaced pixels).
    ahead, start, skipped = next(original_frames, None), None, 0  # the next original not paired yet
    while ahead is not None and (frame := next(anonymized_frames, None)) is not None:
        source, ahead = ahead, next(original_frames, None)
        start = source.time - frame.time if start is None else start  # each file's first frame at its own time
        while ahead is not None and abs(ahead.time - start - frame.time) < abs(source.time - start - frame.time):
            source, ahead, skipped = ahead, next(original_frames, None), skipped + 1
        count += 1
        # An odd-sized original is encoded one pixel larger (its edge repeated): compare the same pixels.
        frame.image = frame.image[: source.image.shape[0], : source.image.shape[1]]
        leaks, others = [], []
        # Looked at as shown (anamorphic video's pixels are not square: `as_shown`), found in the stored pixels.
        shown = as_shown(frame.image, frame.pixel_aspect)
        shown_size = shown.shape[1], shown.shape[0]
        to_stored = np.float32([frame.image.shape[1] / shown.shape[1], frame.image.shape[0] / shown.shape[0]] * 2)
        # A frame wider than 16:9 is looked at larger, as the run looks at it (`detector_long_side`): a 3000x300
        # panorama at 960 was 960x96 to the adversary, which could see no one under 282 px tall.
        looked = detector_long_side(shown.shape[:2], imgsz)
        closest = max(closest, looked) if looked > imgsz else closest
        finds = adversary_finds(model, shown, looked, conf, device, augment)
        if photo:  # looked at closer, as the run looked at it: its small persons have no other frame
            for size in closer_sizes(shown.shape[:2], imgsz, PHOTO_MAX_IMGSZ):
                finds += adversary_finds(model, shown, size, conf, device, augmented=False)
                closest = size
        finds = [(box * to_stored, score, view) for box, score, view in finds]
        for aspect in other_looks(frame.image.shape, frame.pixel_aspect):  # as the run looked at it too
            look = as_shown(frame.image, aspect)
            to_frame = np.float32([frame.image.shape[1] / look.shape[1], frame.image.shape[0] / look.shape[0]] * 2)
            finds += [(box * to_frame, score, view)
                      for box, score, view in adversary_finds(model, look, imgsz, conf, device, augment)]
        for box, score, view in finds:
            find = {"box": [round(float(v), 1) for v in box], "score": round(float(score), 3)}
            if view != "frame":
                find["view"] = view
            if unchanged_share(source.image, frame.image, box) >= UNCHANGED_SHARE:
                leaks.append(find)
            elif score >= (TURNED_DRAWN_PERSON_SCORE if view in TURNED_VIEWS.values() else DRAWN_PERSON_SCORE):
                leaks.append({**find, "replaced": True})
            else:
                others.append(find)
        # A person found in several views counts once, in the first; one found over pixels left as filmed in
        # any view is a leak, whatever another view found there over replaced ones (the skeleton drawn).
        leaks = once_each(leaks)
        others = [f for f in once_each(others) if not overlaps(f, leaks)]
        if leaks:
            flagged.append(AuditFrame(frame.seq, round(frame.time, 6), leaks))
        elif others:
            drawn.append(AuditFrame(frame.seq, round(frame.time, 6), others))
    if ahead is None and next(anonymized_frames, None) is not None:
        # Its frames past the original's would go unaudited: a clean report of a video it was not compared with.
        raise InputError(f"{anonymized} goes on after the {count} frames of {original}: it is not that original's "
                         "anonymized copy (its other frames could not be audited)")
    return AuditReport(original, anonymized, count, conf, imgsz, flagged, drawn, rotate, shown_size, closest,
                       cut_short=ahead is not None, skipped=skipped)


def matching_turn(original: str, anonymized: str, rotate: int | None = None) -> int:
    """How the original was turned to make `anonymized` (0, 90, 180, 270 clockwise): the turn under which its
    first frames' pixels are most often kept in the output (`TURN_LEVELS`). `rotate`: the turn the user
    says; it must match (where nothing matches, persons filling every frame, it is taken as said).

    A leak is a find over pixels left as filmed, so an original compared in the wrong turn, or another
    video's, would have every find "replaced": a clean report of anything. InputError (one line) instead.
    """
    kept: dict[int, float] = {}  # the turns that give the output's size: the most of a frame's pixels kept
    sizes = told = None
    for source, out in itertools.islice(zip(VideoReader(original), VideoReader(anonymized)), TURN_FRAMES):
        sizes = source.image.shape[1::-1], out.image.shape[1::-1]
        shares = {}  # this frame's
        for degrees in ROTATIONS:
            turned = turn(source.image, degrees)
            height, width = turned.shape[:2]
            # An odd-sized original is encoded one pixel larger (its edge repeated).
            if height <= out.image.shape[0] <= height + 1 and width <= out.image.shape[1] <= width + 1:
                same = np.abs(turned.astype(np.int16) - out.image[:height, :width]).max(axis=2) <= TURN_LEVELS
                shares[degrees] = float(same.mean())
                kept[degrees] = max(kept.get(degrees, 0.0), shares[degrees])
        if not kept:
            (w, h), (out_w, out_h) = sizes
            raise InputError(f"{anonymized} is {out_w}x{out_h}, which no turn of the {w}x{h} of {original} gives: "
                             "not its anonymized copy")
        best = max(shares, key=shares.get)
        if shares[best] >= TURN_KEPT_MIN and all(shares[t] <= shares[best] / 4 for t in shares if t != best):
            told = best  # decisive: mostly the first frame (a black one, alike every way round, tells nothing)
            break
    if sizes is None:
        raise InputError(f"{anonymized} or {original} has no frame to compare")
    if told is not None:
        if rotate is not None and rotate != told:
            raise InputError(f"{anonymized} is {original} turned {told} degrees, not {rotate}: give the run's "
                             f"--rotate ({told}), or leave it out")
        return told
    best = max(kept, key=kept.get)
    if kept[best] < TURN_KEPT_MIN:
        if rotate is not None:  # persons filling every frame leave nothing to tell by: the user's word
            return rotate
        raise InputError(f"{anonymized} is not an anonymized copy of {original}: at most {kept[best]:.0%} of its "
                         f"pixels are the original's in its first {TURN_FRAMES} frames, in any turn (if it is, and "
                         "persons fill them, give the run's --rotate to compare all the same)")
    # A scene alike both ways round (a plain wall) cannot tell: the user's word decides, or nothing does.
    alike = sorted(t for t in kept if kept[t] >= max(TURN_KEPT_MIN, kept[best] / 2))
    if rotate is not None and rotate not in alike:
        raise InputError(f"{anonymized} is {original} turned {best} degrees, not {rotate}: give the run's --rotate "
                         f"({best}), or leave it out")
    if rotate is None and len(alike) > 1:
        raise InputError(f"cannot tell from the pixels whether {anonymized} is {original} turned "
                         f"{' or '.join(map(str, alike))} degrees: give the run's --rotate")
    return best if rotate is None else rotate


def turned_original(original: str, rotate: int, fps: float | None = None) -> VideoReader:
    """The original's frames turned as the run turned them (`--rotate`), to be compared with its output's; `fps`: an
    image sequence's frame rate."""
    return VideoReader(original, kind=classify(original, fps=fps).turned(rotate))


# The views the adversary looks at besides the frame: each view's look, how a box found in it maps back to the frame
# (w, h), and the score from which a find there counts. Turned over or on its side, textures pass for persons more
# often than upright, so the run's own turned looks' thresholds hold here too (`stages.TURNED_PERSON_CONF`,
# `SIDEWAYS_PERSON_CONF`).
TURNED_VIEWS = {180: "upside down", 90: "turned 90", 270: "turned 270"}  # by the degrees turned clockwise


def _turned_view(degrees: int) -> tuple:
    """The view of the picture turned clockwise by `degrees`: its look, its boxes back, its least score."""
    return (lambda image: turn(image, degrees),
            lambda b, w, h: turned_back_boxes(np.float32([b]), degrees, (h, w))[0],
            UPSIDE_DOWN_SCORE if degrees == 180 else SIDEWAYS_PERSON_CONF)


AUGMENTED_VIEWS = {
    "mirror": (lambda image: image[:, ::-1], lambda b, w, h: (w - b[2], b[1], w - b[0], b[3]), 0.0),
    **{view: _turned_view(degrees) for degrees, view in TURNED_VIEWS.items()},
}


def adversary_finds(model, image: np.ndarray, imgsz: int, conf: float, device: str, augmented: bool):
    """(box, score, view) of every person found, view by view: in the frame, and with `augmented`, in its
    mirror image, upside down and on either side (a person is found once in each view that shows them:
    `once_each`).

    Ultralytics' own test-time augmentation does not run for pose models, so the views are made here: a
    person a detector misses one way round is often found another.
    """
    views = {"frame": (lambda image: image, None, 0.0), **(AUGMENTED_VIEWS if augmented else {})}
    if augmented and has_much_dark(image):
        # A picture with much dark in it brightened, as the run looks at it too: persons the pose model misses there.
        views["brightened"] = (brightened, None, 0.0)
    height, width = image.shape[:2]
    looks = {view: np.ascontiguousarray(look(image)) for view, (look, _, _) in views.items()}
    results = {}
    # A batch of pictures of two shapes is letterboxed to a square, every one of them: each shape is its own batch.
    for shape in dict.fromkeys(look.shape for look in looks.values()):
        alike = [view for view, look in looks.items() if look.shape == shape]
        answers = model.predict([looks[view] for view in alike], imgsz=imgsz, conf=conf, device=device, verbose=False)
        results.update(zip(alike, answers))
    finds: list[tuple[np.ndarray, float, str]] = []
    for view, (_, back, least) in views.items():
        result = results[view]
        for box, score in zip(result.boxes.xyxy.cpu().numpy(), result.boxes.conf.cpu().numpy()):
            if score < least:
                continue
            if back is not None:
                box = np.array(back(box, width, height), np.float32)
            finds.append((box, float(score), view))
    return finds


def overlaps(find: dict, others: list[dict]) -> bool:
    """Whether `find` is the same person as one of `others` (boxes at SAME_FIND_IOU or more)."""
    if not others:
        return False
    return box_iou(np.float32([find["box"]]), np.float32([o["box"] for o in others])).max() >= SAME_FIND_IOU


def mostly_within(box, others: list) -> bool:
    """Whether most of `box` (x0, y0, x1, y1) lies within one of `others`."""
    return bool(others) and bool((share_within(np.float32([box]), np.float32(others)) >= 0.5).any())


def once_each(finds: list[dict]) -> list[dict]:
    """The finds (in view order) less those of a person found in an earlier view."""
    kept: list[dict] = []
    for find in finds:
        if not overlaps(find, [k for k in kept if k.get("view") != find.get("view")]):
            kept.append(find)
    return kept


def unchanged_share(original: np.ndarray, anonymized: np.ndarray, box: np.ndarray) -> float:
    """Share of the box's pixels that the anonymizer left as they were."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    a, b = original[y0:y1, x0:x1].astype(np.int16), anonymized[y0:y1, x0:x1].astype(np.int16)
    if a.size == 0:
        return 0.0
    return float((np.abs(a - b).max(axis=2) <= UNCHANGED_LEVELS).mean())


def write_worst_frames(report: AuditReport, path: Path, rows: int = 6) -> Path | None:
    """Contact sheet of the frames with the most confident finds; None when nothing was found."""
    worst = sorted(report.flagged, key=lambda f: -f.worst)[:rows]
    if not worst:
        return None
    wanted = {f.index: f for f in worst}
    originals = {f.seq: f.image for f in turned_original(report.original, report.rotate) if f.seq in wanted}
    lines = []
    for frame in VideoReader(report.anonymized):
        if frame.seq not in wanted:
            continue
        original = originals.get(frame.seq)
        height, width = original.shape[:2] if original is not None else frame.image.shape[:2]
        shown = frame.image[:height, :width].copy()  # an odd-sized original was encoded a pixel larger
        for p in wanted[frame.seq].persons:
            x0, y0, x1, y1 = map(int, p["box"])
            cv2.rectangle(shown, (x0, y0), (x1, y1), (0, 0, 255), 2)
            cv2.putText(shown, f"{p['score']:.2f}", (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 0, 255), 1, cv2.LINE_AA)
        original = original if original is not None else np.zeros_like(shown)
        lines.append(np.hstack([_panel(original, f"original #{frame.seq}"), _panel(shown, f"found #{frame.seq}")]))
    cv2.imwrite(str(path), np.vstack(lines))
    return path


def write_report(report: AuditReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=1))
