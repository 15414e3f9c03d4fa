"""Client of the engine's output tap: anonymized frames and their metadata, never original frames.

    for header, image in subscribe(f"ipc://{run_dir}/{instance}/tap.sock"):
        print(header["camera"], header["seq"], len(header["persons"]))

A tap on TCP is a CURVE server that lets in listed client keys only: give `curve`, the client's key pair
and the server's public key (`CurveClient.from_files("me.key_secret", "server.key")`). A tap that refuses the
handshake (a client key it does not list, another server key, keys or none where it wants the other) raises
`TapRefused`, as `anonengine tap` says in one line: libzmq tells it through the socket's monitor events.

Each message is (camera topic, header, payload); the header is a `messages.TapHeader`. A subscriber that falls behind misses frames
(the engine never waits for it); the gaps show in the per-camera `seq`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import msgspec
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from anonengine import messages
from anonengine.curve import CurveClient
from anonengine.errors import AnonError

log = logging.getLogger("anonengine.tap")
# A tap message carries a whole frame: a raw 8K frame is about 100 MB; anything larger is refused.
MAX_TAP_MESSAGE_BYTES = 128 * 1024 * 1024
UNTIL_POLL_MS = 100  # how often a subscription with `until` looks at it
# A handshake the server breaks off without a word (it could not open the client's CURVE HELLO: another server
# key) is taken for a refusal once it failed so many times in a row (libzmq retries every 0.1 s): one failure
# could be a server that stopped mid-handshake.
BROKEN_OFF_HANDSHAKES = 3
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
ZAP_DENIED = 400  # the ZAP handler's answer for a key it does not allow (300: temporary, 500: internal error)


class TapRefused(AnonError):
    """The tap refused this subscriber's handshake: it will send it nothing, however long it waits."""


class HandshakeWatch:
    """Reads a subscriber socket's monitor events and raises `TapRefused` when the tap refuses its handshake.

    What libzmq 4.3.5 reports to a client: a key the ZAP handler refuses, HANDSHAKE_FAILED_AUTH with the status
    400 (the server's ERROR command; libzmq then never reconnects); another server key, a server that hangs
    up (it cannot open the HELLO) as HANDSHAKE_FAILED_NO_DETAIL, at every reconnect; a client without keys of
    a CURVE tap, HANDSHAKE_FAILED_PROTOCOL (mechanism mismatch) or, when the tap hangs up first,
    HANDSHAKE_FAILED_NO_DETAIL. A tap not there yet, or idle, reports none of these: it is waited for."""

    def __init__(self, endpoint: str, curve: CurveClient | None) -> None:
        self.endpoint, self.curve = endpoint, curve
        self.broken_off = 0

    def read(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            self.see(event["event"], event["value"])

    def see(self, event: int, value: int) -> None:
        tap = f"the tap at {self.endpoint}"
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.broken_off = 0
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            if value == ZAP_DENIED:
                raise TapRefused(f"{tap} refused this client's key (not among its allowed clients)")
            raise TapRefused(f"{tap} could not check this client's key (ZAP status {value}; see the engine's log)")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                if self.curve is None:
                    raise TapRefused(self.no_keys())
                raise TapRefused(f"{tap} is not a CURVE tap: connect to it without keys")
            raise TapRefused(f"{tap} broke off the handshake (ZMTP protocol error {value:#x})")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self.broken_off += 1
            if self.broken_off >= BROKEN_OFF_HANDSHAKES:
                if self.curve is None:  # a CURVE tap hangs up on a client without keys before it sees the greeting
                    raise TapRefused(self.no_keys())
                raise TapRefused(f"{tap} broke off the CURVE handshake: the server key given is not its public key")

    def no_keys(self) -> str:
        """A client without keys of a CURVE tap: told by its greeting (mechanism mismatch) or, as often, by the
        tap hanging up first."""
        return (f"the tap at {self.endpoint} takes CURVE clients only: give this client's key pair and the tap's "
                "public key")


def subscribe(endpoint: str, cameras: tuple[str, ...] = (), timeout_s: float | None = None,
              hwm: int = 1000, context: zmq.Context | None = None,
              until: threading.Event | None = None,
              curve: CurveClient | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """Yields (header, BGR image) for each frame received; stops after `timeout_s` without one, or,
    once `until` is set, as soon as none is waiting (a consumer thread ending with its program: a
    subscription ended and made again loses what is published in between).

    `hwm` frames wait here at most; a subscriber that wants the latest frames, not all, sets it low.
    A CURVE tap (TCP) needs `curve`. A tap that refuses the handshake (a key it does not allow, another
    server key) raises `TapRefused`; one not there yet, or sending nothing, is waited for as for frames.
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
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)  # before connecting: no handshake goes unseen
    monitor.setsockopt(zmq.LINGER, 0)
    watch = HandshakeWatch(endpoint, curve)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    try:
        sock.connect(endpoint)
        quiet_since = time.monotonic()  # the last frame received, or handed over
        while True:
            wait_ms = None
            if timeout_s is not None:
                wait_ms = max(0, int((quiet_since + timeout_s - time.monotonic()) * 1000))
            if until is not None:
                wait_ms = UNTIL_POLL_MS if wait_ms is None else min(wait_ms, UNTIL_POLL_MS)
            ready = dict(poller.poll(wait_ms))
            if monitor in ready:
                watch.read(monitor)  # raises TapRefused: no frame will ever come
            if sock not in ready:
                if (until is not None and until.is_set()) or (
                        timeout_s is not None and time.monotonic() - quiet_since >= timeout_s):
                    return
                continue
            quiet_since = time.monotonic()
            parts = sock.recv_multipart()
            try:
                topic, header, payload = parts
                if cameras and topic.decode(errors="replace") not in cameras:
                    # ZeroMQ subscribes by prefix: `cam1`'s subscriber got `cam10`'s frames too.
                    continue
                tapped = messages.decode(header)
                if not isinstance(tapped, messages.TapHeader):
                    raise messages.MessageError(f"a {type(tapped).__name__}, not a tap header")
                meta = msgspec.structs.asdict(tapped)
                image = decode_payload(meta, payload)
            except (ValueError, messages.MessageError) as exc:  # not a frame of ours: dropped, never fatal
                log.warning("dropped a malformed tap message: %s", exc)
                continue
            yield meta, image
            quiet_since = time.monotonic()
    finally:
        with contextlib.suppress(zmq.ZMQError):  # a context terminated meanwhile: closing is all there is
            sock.disable_monitor()
        monitor.close()
        sock.close()


TAP_TIME_BASE = Fraction(1, 90000)  # a recording's clock: frames carry their time in seconds; 90 kHz keeps common rates exact
# The last frames a recording remembers, to know one sent again (an encoder's restart sends again those it had
# not finished: 2 a camera in a user's trial); older ones are another stream's, which a camera attached again
# numbers and times the same.
RECENT_FRAMES = 16


class TapRecording:
    """One camera's tap frames written to a video file as one recording, across the camera's streams.

    A camera attached again, or an engine started again, sends a new stream whose time starts at 0 again: its
    frames follow the last one written, a frame's time apart (they made the muxer fail, and the file, 200 good
    frames in it, was lost). A frame sent again (an encoder's restart sends its last frames again) is written
    once; one of another size is fitted into the recording's (a camera that came back at another resolution)."""

    def __init__(self, path: str) -> None:
        from anonengine.video import claim_output

        claim_output(Path(path), lock=False)  # a folder that is not there: said before the first frame, not after
        self.path = path
        self.writer = None
        self.offset = 0.0  # added to a frame's time: the streams before it
        self.last: float | None = None  # the time of the last frame written, on the recording's clock
        self.step = 1 / 25  # between the last two frames written: how far a new stream's first follows
        self.recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=RECENT_FRAMES)

    def another_engine(self) -> None:
        """The frames from here on are another engine's: none is one sent again, though its seq and time may be those
        of a frame of the engine before (both streams from 0: a short one's were all still remembered)."""
        self.recent.clear()

    def write(self, meta: dict, image: np.ndarray) -> bool:
        """Writes a frame; False for one written before."""
        from anonengine.video import VideoWriter

        key = (meta["seq"], meta["time"])
        if key in self.recent:
            return False
        self.recent.append(key)
        when = meta["time"] + self.offset
        if self.last is not None and when <= self.last:
            self.offset += self.last + self.step - when
            when = self.last + self.step
        if self.writer is None:
            self.writer = VideoWriter(self.path, image.shape[1], image.shape[0], Fraction(25), TAP_TIME_BASE,
                                      pixel_aspect=Fraction(*meta.get("pixel_aspect", (1, 1))))
        elif image.shape[:2] != (self.writer.height, self.writer.width):
            from anonengine.sources import fitted

            image = fitted(image, self.writer.width, self.writer.height)
        self.writer.write(image, round(when * TAP_TIME_BASE.denominator))
        if self.last is not None:
            self.step = when - self.last
        self.last = when
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def decode_payload(meta: dict, payload: bytes) -> np.ndarray:
    if meta["format"] == "jpeg":
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"undecodable JPEG for {meta['camera']} seq {meta['seq']}")
        return image
    return np.frombuffer(payload, np.uint8).reshape(meta["height"], meta["width"], 3)


class SeqGaps:
    """Counts frames a subscriber missed: the gaps in each camera's frames offered the tap (`offered`), or where
    an engine does not count them, or its encoder restarted and counts anew, in their `seq`. A `seq` that jumps
    where none was missed is a live camera's capture that restarted and numbered on (`renumbered`): counted as
    missed frames, 1022 of them, by a subscriber that had missed none (an operator's trial)."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[int, int]] = {}  # camera -> (seq, offered) of the last frame seen
        self.missed = 0
        self.renumbered = 0

    def see(self, meta: dict) -> int:
        seq, offered = meta["seq"], meta.get("offered", -1)
        last = self.last.get(meta["camera"])
        self.last[meta["camera"]] = (seq, offered)
        if last is None:
            return 0
        if offered >= 0 and last[1] >= 0 and offered > last[1]:
            gap = offered - last[1] - 1
            self.renumbered += seq - last[0] - 1 > gap
        else:
            gap = max(0, seq - last[0] - 1)
        self.missed += gap
        return gap
