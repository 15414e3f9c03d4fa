"""Client of the engine's output tap: anonymized frames and their metadata, never original frames.

    for header, image in subscribe(f"ipc://{run_dir}/{instance}/tap.sock"):
        print(header["camera"], header["seq"], len(header["persons"]))

A tap on TCP is a CURVE server that lets in listed client keys only: give `curve`, the client's key pair
and the server's public key (`CurveClient.from_files("me.key_secret", "server.key")`).

Each message is (camera topic, header, payload); the header is a `messages.TapHeader`. A subscriber that falls behind misses frames
(the engine never waits for it); the gaps show in the per-camera `seq`.
"""

from __future__ import annotations

import logging
import threading
from typing import Iterator

import cv2
import msgspec
import numpy as np
import zmq

from anonengine import messages
from anonengine.curve import CurveClient

log = logging.getLogger("anonengine.tap")
# A tap message carries a whole frame: a raw 8K frame is about 100 MB; anything larger is refused.
MAX_TAP_MESSAGE_BYTES = 128 * 1024 * 1024
UNTIL_POLL_MS = 100  # how often a subscription with `until` looks at it


def subscribe(endpoint: str, cameras: tuple[str, ...] = (), timeout_s: float | None = None,
              hwm: int = 1000, context: zmq.Context | None = None,
              until: threading.Event | None = None,
              curve: CurveClient | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """Yields (header, BGR image) for each frame received; stops after `timeout_s` without one, or,
    once `until` is set, as soon as none is waiting (a consumer thread ending with its program: a
    subscription ended and made again loses what is published in between).

    `hwm` frames wait here at most; a subscriber that wants the latest frames, not all, sets it low.
    A CURVE tap (TCP) needs `curve`; without an allowed key nothing is received, as if no frame came.
    """
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_TAP_MESSAGE_BYTES)
    if hwm < 10:  # and keep the kernel from queueing megabytes of frames behind the high-water mark
        sock.setsockopt(zmq.RCVBUF, 128 * 1024)
    for camera in cameras or ("",):
        sock.setsockopt(zmq.SUBSCRIBE, camera.encode())
    if curve is not None:
        curve.apply(sock)
    sock.connect(endpoint)
    try:
        quiet_s = 0.0
        while True:
            if until is None:
                if not sock.poll(None if timeout_s is None else int(timeout_s * 1000)):
                    return
            elif not sock.poll(UNTIL_POLL_MS):
                quiet_s += UNTIL_POLL_MS / 1000
                if until.is_set() or (timeout_s is not None and quiet_s >= timeout_s):
                    return
                continue
            quiet_s = 0.0
            parts = sock.recv_multipart()
            try:
                _topic, header, payload = parts
                tapped = messages.decode(header)
                if not isinstance(tapped, messages.TapHeader):
                    raise messages.MessageError(f"a {type(tapped).__name__}, not a tap header")
                meta = msgspec.structs.asdict(tapped)
                image = decode_payload(meta, payload)
            except (ValueError, messages.MessageError) as exc:  # not a frame of ours: dropped, never fatal
                log.warning("dropped a malformed tap message: %s", exc)
                continue
            yield meta, image
    finally:
        sock.close()


def decode_payload(meta: dict, payload: bytes) -> np.ndarray:
    if meta["format"] == "jpeg":
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"undecodable JPEG for {meta['camera']} seq {meta['seq']}")
        return image
    return np.frombuffer(payload, np.uint8).reshape(meta["height"], meta["width"], 3)


class SeqGaps:
    """Counts frames a subscriber missed, from the per-camera seq numbers."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.missed = 0

    def see(self, meta: dict) -> int:
        last = self.last.get(meta["camera"])
        gap = 0 if last is None else max(0, meta["seq"] - last - 1)
        self.last[meta["camera"]] = meta["seq"]
        self.missed += gap
        return gap
