"""Messages between stages: typed dataclasses with one msgpack codec.

Frames never travel here, only references to shared-memory slots. Every message names its type, and
decoding checks that the fields are the expected ones, so a malformed message is an error that says
what was expected rather than a KeyError three functions later. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction

import msgpack
import numpy as np

from anonengine.detections import NUM_KEYPOINTS, Detections


@dataclass(frozen=True)
class StreamInfoMsg:
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
    privacy_zones: list = field(default_factory=list)

    @property
    def rate_fraction(self) -> Fraction:
        return Fraction(*self.rate)

    @property
    def time_base_fraction(self) -> Fraction:
        return Fraction(*self.time_base)


@dataclass(frozen=True)
class FrameRef:
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


@dataclass(frozen=True)
class Detected:
    """A detector's answer for one frame. `persons` is None when detection failed or the slot was stale."""

    frame: FrameRef
    status: str  # "ok" | "failed" | "stale"
    persons: dict | None = None
    worker: str = ""
    batch: int = 1


@dataclass(frozen=True)
class StreamEnd:
    """No frame of `camera` has seq >= `frames`. With `error`, the stream failed: discard its output.

    `interrupted`: a file stopped before its end (detached, or the engine stopped): its output is kept,
    playable, under its `.partial` name, never the final one.
    """

    camera: str
    frames: int
    error: str | None = None
    interrupted: bool = False


@dataclass(frozen=True)
class Dropped:
    """A live capture reused the slot of frame `seq` before it was done: skip it."""

    camera: str
    seq: int


@dataclass(frozen=True)
class Release:
    """The slot of frame `seq` may be reused by its owner."""

    camera: str
    seq: int
    slot: int


@dataclass(frozen=True)
class OutFrame:
    """An anonymized frame, in a slot of the compositor's ring, with what was found in it."""

    frame: FrameRef
    obscured: bool
    persons: list = field(default_factory=list)


@dataclass(frozen=True)
class CameraDone:
    """The encoder finished `camera`'s output (sent to the launcher)."""

    camera: str
    frames: int
    output: str | None
    complete: bool = True  # False: the stream was interrupted and `output` is the `.partial` file


@dataclass(frozen=True)
class Stats:
    """A stage's counters, sent to the launcher now and then."""

    stage: str
    name: str
    counters: dict


MESSAGE_TYPES = {cls.__name__: cls for cls in (StreamInfoMsg, FrameRef, Detected, StreamEnd, Dropped, Release, OutFrame,
                                                CameraDone, Stats)}


def encode(message) -> bytes:
    kind = type(message).__name__
    if kind not in MESSAGE_TYPES:
        raise TypeError(f"not a message type: {kind}")
    return msgpack.packb([kind, _to_plain(message)], use_bin_type=True)


def decode(data: bytes):
    try:
        kind, fields = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ValueError(f"malformed message: expected msgpack [type, fields]: {exc}") from None
    cls = MESSAGE_TYPES.get(kind)
    if cls is None or not isinstance(fields, dict):
        raise ValueError(f"unknown message type {kind!r}: expected one of {sorted(MESSAGE_TYPES)}")
    return _from_plain(cls, fields)


def _to_plain(message) -> dict:
    out = {}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        out[f.name] = _to_plain(value) if dataclasses.is_dataclass(value) else value
    return out


def _from_plain(cls, fields: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if not required <= fields.keys() or not fields.keys() <= names:
        raise ValueError(f"{cls.__name__}: expected fields {sorted(names)}, got {sorted(fields)}")
    if isinstance(fields.get("frame"), dict):  # Detected and OutFrame carry a FrameRef
        fields = {**fields, "frame": _from_plain(FrameRef, fields["frame"])}
    for key in ("rate", "time_base"):
        if key in fields and isinstance(fields[key], list):
            fields[key] = tuple(fields[key])
    return cls(**fields)


def pack_detections(det: Detections) -> dict:
    """Detections as compact bytes; per-person masks as packed bits."""
    packed = {
        "shape": list(det.frame_shape),
        "boxes": det.boxes.tobytes(),
        "scores": det.scores.tobytes(),
        "keypoints": det.keypoints.tobytes(),
        "masks": None,
    }
    if det.masks is not None:
        packed["masks"] = np.packbits(det.masks.reshape(len(det), -1), axis=1).tobytes()
    return packed


def unpack_detections(packed: dict) -> Detections:
    h, w = packed["shape"]
    boxes = np.frombuffer(packed["boxes"], np.float32).reshape(-1, 4).copy()
    n = len(boxes)
    masks = None
    if packed["masks"] is not None:
        bits = np.frombuffer(packed["masks"], np.uint8).reshape(n, -1)
        masks = np.unpackbits(bits, axis=1, count=h * w).reshape(n, h, w).astype(bool)
    return Detections(
        frame_shape=(h, w),
        boxes=boxes,
        scores=np.frombuffer(packed["scores"], np.float32).copy(),
        keypoints=np.frombuffer(packed["keypoints"], np.float32).reshape(n, NUM_KEYPOINTS, 3).copy(),
        masks=masks,
    )
