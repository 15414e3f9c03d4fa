"""Messages between processes: typed structs with one schema and one codec (msgspec, MessagePack).

Frames never travel here, only references to shared-memory slots. Every message carries its type
tag, and decoding validates every field against its declared type (enums for statuses, nothing
unknown, nothing missing), so garbage on a socket is a `MessageError` that says what was wrong, to be
logged, counted and dropped by the receiver, never a crash three functions later. Nothing is ever
unpickled. The same schema covers the data path, the control socket and the tap's headers.
"""

from __future__ import annotations

import bisect
import enum
from fractions import Fraction
from typing import Union

import msgspec
import numpy as np

from anonengine.detections import NUM_KEYPOINTS, Detections

# Every engine socket refuses larger messages (ZMQ_MAXMSGSIZE): references and detections are small.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class MessageError(ValueError):
    """Bytes that are not a message of the expected schema."""


class Message(msgspec.Struct, frozen=True, tag=True, forbid_unknown_fields=True):
    """Base of every message; the tag is the class name."""


class DetectStatus(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"  # the detector raised: the frame is obscured, never shown
    STALE = "stale"  # the slot was reused before or during detection: the capture offers the frame again
    SKIPPED = "skipped"  # between detections (detector.stride): the tracker's held boxes hide persons
    LATE = "late"  # past its deadline: obscured (or dropped)


class SourceState(str, enum.Enum):
    CONNECTING = "connecting"  # never connected yet
    RUNNING = "running"
    RECONNECTING = "reconnecting"  # connected before, lost, trying again
    STOPPED = "stopped"


class PackedDetections(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Detections as compact bytes (float32 arrays; per-person masks as packed bits)."""

    shape: tuple[int, int]
    boxes: bytes
    scores: bytes
    keypoints: bytes
    masks: bytes | None = None


class PackedCells(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A bool map of a frame's cells (`Frame.came`) as packed bits, rows first."""

    shape: tuple[int, int]
    bits: bytes


class StreamInfoMsg(Message):
    """A camera starts: what downstream stages need to read its frames and write its output."""

    camera: str
    width: int
    height: int
    rate: tuple[int, int]
    time_base: tuple[int, int]
    live: bool
    frames: int
    ring: str
    slots: int
    output: str | None = None
    metadata: str | None = None
    next_seq: int = 0  # first frame not yet done: where a restarted consumer resumes
    privacy_zones: list[list[tuple[float, float]]] = msgspec.field(default_factory=list)
    continues: bool = False  # from a restarted capture, going on with the stream its predecessor began
    colour: tuple[int, int, int] = (2, 2, 2)  # the source's primaries, transfer and matrix (`video.Colour`)
    pixel_aspect: tuple[int, int] = (1, 1)  # a pixel's width and height, as shown (`StreamInfo.pixel_aspect`)
    # Which attachment of the camera this is (the launcher's, kept by its capture's restarts): a camera
    # attached again is a new recording, never the rest of the one before ("": the engine's run alone).
    stream: str = ""

    @property
    def rate_fraction(self) -> Fraction:
        return Fraction(*self.rate)

    @property
    def time_base_fraction(self) -> Fraction:
        return Fraction(*self.time_base)


class FrameRef(Message):
    """Frame `seq` of `camera`, in slot `slot` of shared-memory ring `ring`.

    `composite`: the composite worker that owns the camera, where answers about the frame go.
    """

    camera: str
    seq: int
    pts: int
    ring: str
    slot: int
    slots: int
    height: int
    width: int
    composite: int = 0
    last: bool = False  # a file's last frame (`Frame.last`)
    continues: bool = False  # from a restarted capture, going on with the stream its predecessor began
    live: bool = False  # a live camera's (a file replayed live too): it waits for no frame after it
    at_break: bool = False  # beside a break in the stream (`Frame.at_break`): always detected
    changed: bool = False  # part of the picture changed at once (`Frame.changed`): detected
    pixel_aspect: tuple[int, int] = (1, 1)  # the detector looks at the frame as shown (`StreamInfo.pixel_aspect`)
    came: PackedCells | None = None  # where something came since the frame before (`Frame.came`)
    turned: int = 0  # degrees the capture turned the picture (`CameraConfig.rotate`): advice to turn counts from it


class Detected(Message):
    """A detector's answer for one frame. `persons` is None when detection failed or the slot was stale."""

    frame: FrameRef
    status: DetectStatus
    persons: PackedDetections | None = None
    worker: str = ""
    batch: int = 1


class ScheduleState(Message):
    """A camera's detection schedule (`schedule.DetectionSchedule`), kept in the run folder by the detector
    that runs it, for the one that takes over if it dies: not sent on a socket."""

    last_seq: int | None
    gap: int  # frames from the last detection to the next (DetectionSchedule.gap)
    known: PackedDetections | None
    decided: tuple[tuple[int, int, bool], ...]  # (seq, pts, wanted) of the latest frames
    recent: tuple[tuple[float, ...], ...] = ()  # the boxes (x0, y0, x1, y1, ...) of the last detections known


class LivePosition(Message):
    """Where a live camera's stream stands, kept in the run folder by its capture for the one that takes over
    if it dies, so that its frames carry on after the dead one's (numbers, timestamps): not sent on a socket.
    Every frame numbered so far is below `next_seq`, and none is later than `time` (both are reserved ahead)."""

    next_seq: int
    time: float  # seconds on the stream's timeline
    wall: float  # time.monotonic() when a frame at `time` is due (one clock for every process of the machine)


class KeptTrack(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One of a mask hold's tracks (`tracking.Track`), its look and where its look last found it."""

    state: tuple[float, ...]  # 8: the corners' places, then their speeds
    covariance: tuple[float, ...]  # 4
    matched_at: int
    matched_box: tuple[float, ...]  # 4
    hits: int
    weak: bool
    confirmed: bool
    seen_at: int
    look: bytes | None = None  # `tracking.Look.picture`, grey uint8
    look_shape: tuple[int, int] = (0, 0)
    look_size: tuple[float, float] = (0.0, 0.0)
    look_at: int = 0  # `Look.detected_at`
    standing: tuple[float, ...] | None = None  # 4: where its look found it (`MaskHold.standing`)
    recent: tuple[tuple[float, ...], ...] = ()  # (frame, x0, y0, x1, y1) of its recent matches (`Track.recent`)
    pose: tuple[float, ...] | None = None  # 51: its last confident skeleton's keypoints (`Track.pose`)
    pose_box: tuple[float, ...] = ()  # 4
    pose_at: int = -1
    clear_at: int = -1  # `Track.clear_at`; -1: its last match (a predecessor that did not keep it)


class HoldState(Message):
    """A camera's mask hold (`tracking.MaskHold`) after frame `seq`, kept in the run folder by its compositor for the
    one that takes over if it dies: not sent on a socket. Without it the successor knew no one: a person half
    behind another, whose box the detector drew too narrow, showed a strip (held wider, as they had been seen
    before), and someone standing still whom only their look kept hidden was shown."""

    camera: str
    stream: str  # `StreamInfoMsg.stream`: a camera attached again takes no earlier attachment's
    seq: int
    frame: int  # the hold's clock
    tracker_frame: int | None
    coasted: int
    tracks: tuple[KeptTrack, ...]


class StreamEnd(Message):
    """No frame of `camera` has seq >= `frames`. With `error`, the stream failed: discard its output.

    `interrupted`: a file stopped before its end (detached, or the engine stopped): its output is kept,
    playable, under its `.partial` name, never the final one.
    """

    camera: str
    frames: int
    error: str | None = None
    interrupted: bool = False


class Progress(Message):
    """The encoder has written every frame of `camera` before `next_seq` (sent to the launcher): where a
    restarted capture of that camera resumes."""

    camera: str
    next_seq: int


class Redeliver(Message):
    """From the launcher to a capture: a stage downstream restarted; announce the stream again and offer
    every frame in flight now, rather than after `redeliver_after_s`."""


class Release(Message):
    """The slot of frame `seq` may be reused by its owner."""

    camera: str
    seq: int
    slot: int


class Received(Message):
    """The encoder has frame `seq` (copied out of its slot, not yet on disk): the compositor lets the
    capture's slot go, and keeps its own until the frame is on disk (`Release`)."""

    camera: str
    seq: int


class OutFrame(Message):
    """An anonymized frame, in a slot of the compositor's ring, with what was found in it."""

    frame: FrameRef
    obscured: bool
    persons: list[dict] = msgspec.field(default_factory=list)
    motion: list[list[int]] = msgspec.field(default_factory=list)  # patches hidden for what moves there (x0, y0, x1, y1)


class CameraDone(Message):
    """The encoder finished `camera`'s output (sent to the launcher)."""

    camera: str
    frames: int
    output: str | None
    complete: bool = True  # False: the stream was interrupted and `output` is the `.partial` file
    error: str | None = None  # the output could not be finished (a full disk): why, in one line
    # Of `frames`, those that went out obscured whole (their detections late or failed) as far as the encoder
    # knows: a predecessor's frames count only where their metadata was kept.
    obscured: int = 0


class SourceStatus(Message):
    """A live source's state (connecting, running, reconnecting, stopped), sent to the launcher on change."""

    camera: str
    state: SourceState
    error: str | None
    reconnects: int


class Histogram(msgspec.Struct, forbid_unknown_fields=True):
    """Observations counted into buckets, as Prometheus keeps them: `counts[i]` of them were at most
    `bounds[i]` and more than the bound before (the last count: above every bound)."""

    bounds: tuple[float, ...]
    counts: list[int]
    total: float = 0.0  # the sum of every observation

    @classmethod
    def of(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(tuple(bounds), [0] * (len(bounds) + 1))

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class Stats(Message):
    """A stage's counters, sent to the launcher now and then (since the stage started: totals, not
    increments), with the same counters split by camera where a stage serves several."""

    stage: str
    name: str
    counters: dict[str, int]
    pid: int = 0  # also the stage's heartbeat: the launcher kills a stage silent for engine.stall_s
    cameras: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    histograms: dict[str, Histogram] = msgspec.field(default_factory=dict)


class Attach(Message):
    """Control: add a camera (`camera` is a CameraConfig's fields, validated by the launcher)."""

    camera: dict


class Detach(Message):
    camera: str


class StatusRequest(Message):
    pass


class Reply(Message):
    """The launcher's answer to a control request."""

    ok: bool
    error: str | None = None
    status: dict | None = None


class TapHeader(Message):
    """What the tap sends with each anonymized frame."""

    camera: str
    seq: int
    pts: int
    time: float
    width: int
    height: int
    format: str
    obscured: bool
    persons: list[dict] = msgspec.field(default_factory=list)
    motion: list[list[int]] = msgspec.field(default_factory=list)  # patches hidden for what moves there (x0, y0, x1, y1)
    pixel_aspect: tuple[int, int] = (1, 1)  # a pixel's width and height as shown (anamorphic video: not square)
    # This frame's number among the camera's frames its encoder offered the tap, from 0 (-1: not counted): frames a
    # subscriber missed are the gaps in it, where `seq` also jumps when a live camera's capture restarts.
    offered: int = -1


class Kept(Message):
    """A stage's state kept in the run folder for the one that takes over if it dies (`Service.keep`), with the run
    that kept it: a stage takes over its own run's only. The stages of a Procfile, started again after honcho had
    killed a capture still draining, took the killed run's for theirs: a live camera's new recording began at frame
    1175, 32.9 s in, its first 22 frames grey (an operator's trial)."""

    run: str
    state: ScheduleState | LivePosition | HoldState


AnyMessage = Union[StreamInfoMsg, FrameRef, Detected, StreamEnd, Release, Received, Progress, Redeliver,
                   OutFrame, CameraDone, SourceStatus, Stats, Attach, Detach, StatusRequest, Reply, TapHeader,
                   ScheduleState, LivePosition, HoldState, Kept]
MESSAGE_TYPES = {cls.__name__: cls for cls in AnyMessage.__args__}

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


def encode(message: Message) -> bytes:
    if not isinstance(message, Message):
        raise TypeError(f"not a message type: {type(message).__name__}")
    return _encoder.encode(message)


def decode(data: bytes) -> Message:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MessageError(f"malformed message: {exc}") from None


def pack_detections(det: Detections) -> PackedDetections:
    masks = None
    if det.masks is not None:
        masks = np.packbits(det.masks.reshape(len(det), -1), axis=1).tobytes()
    return PackedDetections(tuple(det.frame_shape), det.boxes.tobytes(), det.scores.tobytes(),
                            det.keypoints.tobytes(), masks)


def pack_cells(cells: np.ndarray | None) -> PackedCells | None:
    return None if cells is None else PackedCells(cells.shape, np.packbits(cells).tobytes())


def unpack_cells(packed: PackedCells | None) -> np.ndarray | None:
    """The map; None for none. Bits that do not fill their shape (a sender's fault) are read as something come in
    every cell of a 32x18 map: the frame is detected, unless the persons known cover all of it."""
    if packed is None:
        return None
    rows, columns = packed.shape
    bits = np.unpackbits(np.frombuffer(packed.bits, np.uint8))
    if rows < 1 or columns < 1 or len(bits) < rows * columns or len(bits) - rows * columns >= 8:
        return np.ones((18, 32), bool)
    return bits[: rows * columns].reshape(rows, columns).astype(bool)


def unpack_detections(packed: PackedDetections) -> Detections:
    h, w = packed.shape
    boxes = np.frombuffer(packed.boxes, np.float32).reshape(-1, 4).copy()
    n = len(boxes)
    masks = None
    if packed.masks is not None:
        bits = np.frombuffer(packed.masks, np.uint8).reshape(n, -1)
        masks = np.unpackbits(bits, axis=1, count=h * w).reshape(n, h, w).astype(bool)
    return Detections(
        frame_shape=(h, w),
        boxes=boxes,
        scores=np.frombuffer(packed.scores, np.float32).copy(),
        keypoints=np.frombuffer(packed.keypoints, np.float32).reshape(n, NUM_KEYPOINTS, 3).copy(),
        masks=masks,
    )
