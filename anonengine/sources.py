"""Video sources: the one place that tells files, RTSP, HTTP/HLS, V4L2 and other streams apart, and the
feed that keeps a live source coming for ever.

A live source drops, stalls and comes back; an engine left running for months must follow. `LiveFeed`
reads a live source in a thread of its own, reconnects with exponential backoff and jitter when it
fails, ends or stalls (no frame for `stall_s`), and hands out frames with timestamps that keep
increasing across reconnects (an outage shows as a gap in time; no frame is invented for it).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import gc
import logging
import math
import os
import queue
import random
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import cv2
import numpy as np

from anonengine.config import SourcesConfig
from anonengine.errors import InputError, SourceNotOpenable, UnknownProtocol
from anonengine.messages import SourceState
from anonengine.paths import URL_SCHEME, is_sequence, sequence_number, sequence_parts, sequence_photo

if TYPE_CHECKING:
    from anonengine.video import Frame

log = logging.getLogger("anonengine.sources")


class SourceKind(str, enum.Enum):
    FILE = "file"
    SEQUENCE = "sequence"  # numbered photos (`frames/%06d.png`), read as a video
    RTSP = "rtsp"  # rtsp://, rtsps://
    HTTP = "http"  # http(s)://: progressive video or HLS playlists
    V4L2 = "v4l2"  # a webcam: its index (0 = /dev/video0) or a /dev/videoN path
    STREAM = "stream"  # any other URL FFmpeg reads (rtmp, srt, udp, tcp)


@dataclass(frozen=True)
class Source:
    spec: str
    kind: SourceKind
    rtsp_transport: str = "tcp"
    rotate: int = 0  # degrees clockwise, after the container's display matrix (`CameraConfig.rotate`)
    said_stream: bool | None = None  # an http(s) source's `CameraConfig.stream`: what it is, without asking it
    numbers: range | None = None  # an image sequence's photos' numbers
    fps: float | None = None  # an image sequence's frame rate (`CameraConfig.fps`; None: SEQUENCE_FPS)

    @property
    def live(self) -> bool:
        """A camera (read for ever, reconnected, never waited for) rather than a recording (read to its end,
        every frame). Over HTTP(S) either comes: a video file or an HLS playlist that ends is a recording,
        unless the camera's config says which (`resolve_stream` says it once for every process of an engine:
        each asking the URL was a connection of its own, 4 for one run, which a camera taking one client
        at a time refuses)."""
        if self.kind is SourceKind.HTTP:
            if self.said_stream is not None:
                return self.said_stream
            return not serves_recording(self.url, SourcesConfig().connect_timeout_s)
        return self.kind not in (SourceKind.FILE, SourceKind.SEQUENCE)

    @property
    def looked_at(self) -> bool:
        """Whether FFmpeg looks at the stream for `buffer_s` before its first frame (`open_arguments`): the frames of
        that look come out at once after it (`LiveFeed._burst_over`)."""
        return self.kind in (SourceKind.RTSP, SourceKind.STREAM)

    def turned(self, rotate: int) -> Source:
        return dataclasses.replace(self, rotate=rotate)

    @property
    def url(self) -> str:
        if self.kind is SourceKind.V4L2 and self.spec.isdigit():
            return f"/dev/video{self.spec}"
        return self.spec

    def open_arguments(self, cfg: SourcesConfig) -> tuple[str, str | None, dict[str, str], tuple[float, float] | None]:
        """(url, format, FFmpeg options, (connect, read) timeouts in seconds) for av.open."""
        if self.kind is SourceKind.FILE:
            return self.url, None, {}, None
        if self.kind is SourceKind.SEQUENCE:
            rate = str(Fraction(self.fps or SEQUENCE_FPS).limit_denominator(1001))  # 29.97002997: 30000/1001
            # FFmpeg reads a `%` anywhere in the path as the number's: one in a folder's name is written `%%`.
            folder, name = os.path.split(self.url)
            url = os.path.join(folder.replace("%", "%%"), name)
            return url, "image2", {"framerate": rate, "start_number": str(self.numbers.start)}, None
        timeouts = (cfg.connect_timeout_s, cfg.stall_s)
        if self.kind is SourceKind.V4L2:
            return self.url, "v4l2", {}, timeouts
        # FFmpeg's look at a stream before its first frame comes out, no longer than the feed keeps (`buffer_s`):
        # all the frames it looked at come out at once after it, and a look of 20 frames (FFmpeg's own: 2.5 s of a
        # 10-frames/s camera) lost 16 of them at every connection of an RTSP camera, 4 of a UDP stream's. A frame's
        # size is its own, told by the frames themselves.
        options: dict[str, str] = {"analyzeduration": str(int(max(cfg.buffer_s, MIN_PROBE_S) * 1e6))}
        if self.kind is SourceKind.RTSP:
            # FFmpeg's RTSP socket timeout (microseconds): a server that stops sending is noticed.
            options |= {"rtsp_transport": self.rtsp_transport, "timeout": str(int(cfg.stall_s * 1e6))}
        elif self.kind is SourceKind.HTTP:
            options = {"rw_timeout": str(int(cfg.stall_s * 1e6))}
        return self.url, None, options, timeouts


# A live source's frames kept while the consumer is behind: `sources.buffer_s` of them by their arrival, at most
# what its frame rate gives for that long (at least MIN_BUFFER_FRAMES; FFmpeg's rate of an MJPEG or RTSP stream
# can be 25 for a 5-fps camera, or 90000, so it is taken up to MAX_RATE only) and BUFFER_MEMORY bytes.
MIN_BUFFER_FRAMES = 4
MIN_PROBE_S = 0.5
MAX_RATE = 120
BUFFER_MEMORY = 256 * 2**20
# A connection that runs, yet gave no picture for `stall_s` and this much more, is stuck: data keeps coming, so its
# read timeout never fires, but none of it is a picture of its stream (a sender over UDP restarted with other
# MPEG-TS stream ids: FFmpeg adds the new stream, whose packets PyAV's read skips without a word). Nothing
# interrupts that read; the process reading it must start afresh (`LiveFeed.stuck`). A camera that sends a picture
# less often than that (a time-lapse) needs a `stall_s` longer than its pictures' interval, as it did for its
# stalls.
STUCK_MARGIN_S = 5.0
ENDED = "the stream ended"  # why a live connection ended where its source said it had
SEQUENCE_FPS = 25.0  # an image sequence's frame rate unless its camera's `fps` says
PLAYLIST_FORMATS = frozenset({"hls", "dash"})  # FFmpeg's demuxers whose own file is a playlist, not the video


def _single_picture(format_name: str) -> bool:
    """A still image (`image2`, `jpeg_pipe`...): a camera's snapshot URL, polled as a live source."""
    return any(name == "image2" or name.endswith("_pipe") for name in format_name.split(","))


@functools.lru_cache(maxsize=64)
def serves_recording(url: str, timeout_s: float) -> bool:
    """Whether an HTTP(S) URL serves a recording rather than a live stream (MJPEG, a live HLS playlist,
    MPEG-TS as it is sent, a camera's snapshot): one FFmpeg gives a duration (an MP4, an HLS playlist with its
    end), or a file the server gives the length of (its Content-Length) that is neither a playlist nor a
    still picture. An MPEG-TS file served
    without byte ranges (Python's http.server) has no duration, and was read again at its end for ever;
    a live stream is sent without a length. Asked once a process; a URL that does not answer is taken for
    a camera, which may come later."""
    import av

    try:
        with av.open(url, timeout=(timeout_s, timeout_s)) as container:
            name = container.format.name
            if not container.streams.video or _single_picture(name):
                return False
            if container.duration and container.duration > 0:
                return True
            # A size unknown: -1 before PyAV 18.1.1, None since.
            return name not in PLAYLIST_FORMATS and (container.size or 0) > 0
    except (av.FFmpegError, OSError):
        return False


def is_live(spec: str, live: bool | None, stream: bool | None = None) -> bool:
    """Whether a camera runs live (never waits, its stop is its end): a stream or device always, whatever
    `live` says (it cannot be waited for), and a file or a recording over http(s) replayed as a camera
    (`live: true`, read at its own frame rate). `stream`: the camera's `stream`, see `classify`."""
    return bool(live) or classify(spec, stream=stream).live


def resolve_stream(camera) -> None:
    """Says once, in `camera` (a `CameraConfig`), whether its http(s) source is a live stream or a recording,
    for every process that reads the config after: the URL is asked here, not again by each. Raises
    InputError as `classify` does (a file source that is not there)."""
    source = classify(camera.source)
    if camera.stream is None and source.kind is SourceKind.HTTP:
        camera.stream = source.live


def source_of(camera) -> Source:
    """The source of `camera` (a `CameraConfig`), classified with everything its config says of it."""
    return classify(camera.source, camera.rtsp_transport, camera.stream, fps=camera.fps).turned(camera.rotate)


# URL schemes FFmpeg reads through a demuxer of their own rather than a protocol (`avio_enum_protocols` lists none).
DEMUXER_SCHEMES = frozenset({"rtsp", "rtsps", "satip", "sap"})


@functools.lru_cache(maxsize=1)
def ffmpeg_protocols() -> frozenset[str]:
    """The input protocols of the FFmpeg PyAV carries (its `avio_enum_protocols`); empty where that library
    cannot be told for sure (OpenCV's wheel loads an FFmpeg of its own, with other protocols)."""
    import ctypes
    import re

    import av

    try:
        with open("/proc/self/maps") as maps:
            mapped = set(re.findall(r"(/\S*libavformat[^/\s]*\.so[^/\s]*)", maps.read()))
        wheel = str(Path(av.__file__).resolve().parent.parent / "av.libs") + os.sep
        ours = [path for path in mapped if path.startswith(wheel)] or (list(mapped) if len(mapped) == 1 else [])
        if len(ours) != 1:
            return frozenset()
        enum_protocols = ctypes.CDLL(ours[0]).avio_enum_protocols
    except (OSError, AttributeError):
        return frozenset()
    enum_protocols.restype, enum_protocols.argtypes = ctypes.c_char_p, [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    opaque, names = ctypes.c_void_p(None), []
    while (name := enum_protocols(ctypes.byref(opaque), 0)) is not None:
        names.append(name.decode())
    return frozenset(names)


def unknown_protocol(spec: str) -> str | None:
    """Why FFmpeg cannot read the URL `spec` whatever the network does (a scheme it knows nothing of: `rtps://`,
    `udpp://`), as FFmpeg says it, with what it may have meant: "Protocol not found (udp:// meant?)"; None when it
    may (or where the protocols cannot be asked). An
    engine's camera so named fails once started (`UnknownProtocol`); `launch --validate-config` and `attach`
    say it first (validation passed `udpp://`, attach answered ok)."""
    match = URL_SCHEME.match(spec)
    known = ffmpeg_protocols() | DEMUXER_SCHEMES
    if not match or known == DEMUXER_SCHEMES:
        return None
    scheme = match.group(1).lower().split("+")[0]  # `crypto+https://`: FFmpeg goes by the first
    if scheme in known:
        return None
    # A typo's usual shapes: two letters swapped (rtps), one too many (udpp). Not one missing: srt:// is a protocol
    # this FFmpeg lacks, not a misspelt srtp://.
    near = (sorted(k for k in known if len(k) == len(scheme) and sorted(k) == sorted(scheme))
            + sorted(k for k in known if any(scheme[:i] + scheme[i + 1 :] == k for i in range(len(scheme)))))
    return f"Protocol not found{f' ({near[0]}:// meant?)' if near else ''}"


# Protocols whose URL must name a host: `rtsp://` alone was tried for ever ("Connection refused").
NEEDS_HOST = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "tcp", "srt"})


def malformed_url(spec: str) -> str | None:
    """Why the URL `spec` names no source whatever the network does (a port out of range, no host where its
    protocol needs one), or None. An operator's `udp://127.0.0.1:99999` passed validation and attach, and said
    "no answer in 10 s" for ever."""
    match = URL_SCHEME.match(spec)
    if not match:
        return None
    try:
        parts = urllib.parse.urlsplit(spec)
        parts.port  # noqa: B018 - raises where the port is out of range or no number
    except ValueError as exc:
        return f"its port is wrong ({exc})"
    scheme = match.group(1).lower().split("+")[0]
    if scheme in NEEDS_HOST and not parts.hostname:
        return f"it names no host ({scheme}://HOST/...)"
    return None


def classify(spec: str, rtsp_transport: str = "tcp", stream: bool | None = None, fps: float | None = None) -> Source:
    """What kind of source `spec` names; a file path is checked to exist, an image sequence to be whole. `stream`:
    whether an http(s) source is a live stream rather than a recording, as its camera's config says (None:
    asked; see `Source.live`). `fps`: an image sequence's frame rate."""
    match = URL_SCHEME.match(spec)
    if match:
        scheme = match.group(1).lower()
        kind = {"rtsp": SourceKind.RTSP, "rtsps": SourceKind.RTSP, "http": SourceKind.HTTP,
                "https": SourceKind.HTTP, "file": SourceKind.FILE}.get(scheme, SourceKind.STREAM)
        if kind is SourceKind.FILE:
            return classify(spec[len("file://"):], rtsp_transport, fps=fps)
        return Source(spec, kind, rtsp_transport, said_stream=stream if kind is SourceKind.HTTP else None)
    if spec.isdigit() or spec.startswith("/dev/video"):
        return Source(spec, SourceKind.V4L2)
    path = Path(spec)
    if is_sequence(spec) and not path.exists():
        return Source(spec, SourceKind.SEQUENCE, numbers=sequence_numbers(spec), fps=fps)
    if not path.exists():
        raise InputError(f"video source not found: {spec}")
    if not path.is_file():
        raise InputError(f"video source is not a file: {spec}")
    return Source(spec, SourceKind.FILE)


def sequence_numbers(spec: str) -> range:
    """The numbers of an image sequence's photos (`frames/f%06d.png`), first to last. A gap is refused: FFmpeg
    reads such a sequence up to the first number missing and ends there, which would lose every photo after it
    (a batch of the folder, `--video-source frames --output-dir out`, takes the photos one by one)."""
    path = Path(spec)
    try:
        names = os.listdir(path.parent)
    except OSError as exc:  # said as "no file in nodir is named as ...": the folder was what was wrong
        raise InputError(f"image sequence not found: folder {path.parent}: {exc.strerror or exc}") from None
    numbers = {n for n in (sequence_number(spec, name) for name in names) if n is not None}
    prefix, suffix, _ = sequence_parts(spec)
    if not numbers:
        # Numbered otherwise: `%d` for f0001.png, whose numbers are written 4 wide (`%04d`).
        widths = Counter(len(name) - len(prefix) - len(suffix) for name in names
                         if name.startswith(prefix) and name.endswith(suffix)
                         and name[len(prefix) : len(name) - len(suffix)].isdecimal())
        wide = widths.most_common(1)[0][0] if widths else 0
        hint = f"; they are numbered {wide} digits wide: {prefix}%0{wide}d{suffix}" if wide else ""
        raise InputError(f"image sequence not found: no file in {path.parent} is named as {path.name} says "
                         f"(such as {sequence_photo(spec, 1)}){hint}")
    first, last = min(numbers), max(numbers)
    if len(numbers) != last - first + 1:
        missing = next(n for n in range(first, last + 1) if n not in numbers)
        raise InputError(f"image sequence {spec}: {sequence_photo(spec, missing)} is missing ({len(numbers)} "
                         f"photos numbered {first} to {last}); the sequence would end before it")
    return range(first, last + 1)


@dataclass
class FeedStatus:
    state: SourceState = SourceState.CONNECTING
    last_error: str | None = None
    reconnects: int = 0  # connections lost (and so retried) since the start
    connected_at: float | None = None
    attempts: list[float] = field(default_factory=list)  # monotonic times of the recent connect attempts


def backoff_delays(cfg: SourcesConfig, rng: random.Random | None = None) -> Iterator[float]:
    """Waits between connect attempts: `reconnect_initial_s` doubling up to `reconnect_max_s`, each
    stretched by up to `reconnect_jitter` of itself at random, so cameras that dropped together do not
    come back in lockstep."""
    rng = rng or random.Random()
    delay = cfg.reconnect_initial_s
    while True:
        yield delay * (1 + cfg.reconnect_jitter * rng.random())
        delay = min(cfg.reconnect_max_s, delay * 2)


# A live frame whose time by its stream's clock is this much later than the wall clock since the last frame allows
# is taken for a jump of that clock (`LiveFeed._follows_on`).
CLOCK_JUMP_S = 10.0
# A connection's first frames are held until one comes at the stream's pace (BURST_SLACK_S sooner at most), for
# BURST_WAIT_S, or BURST_FRAMES times the feed's queue (`LiveFeed._burst_over`): FFmpeg's look at a stream gathers
# a little more than `buffer_s` of frames, as long as it takes to decode the first.
BURST_SLACK_S = 0.005
BURST_WAIT_S = 2.0
BURST_FRAMES = 2


class LiveFeed:
    """Frames of a live source for ever (until `stop`), read in a thread that reconnects as needed.

    `opener(source)` returns a VideoReader; it is a parameter so tests can give flaky sources.
    Frames come out as `Frame`s of the first connection's size and time base, with pts that only
    increase: each connection's first frame follows the last one after the wall-clock time between them.
    `follows`: (time, clock) of the last frame of a feed before this one (its capture died): the first frame
    follows it the same way.
    """

    def __init__(self, source: Source, camera: str, cfg: SourcesConfig, opener: Callable | None = None,
                 clock: Callable[[], float] = time.monotonic, queue_size: int | None = None,
                 follows: tuple[float, float] | None = None) -> None:
        """`queue_size`: frames kept while the consumer is behind, the oldest dropped past it; by default
        what `cfg.buffer_s` of the first connection's frame rate gives (see MIN_BUFFER_FRAMES). Frames that
        waited longer than `cfg.buffer_s` go too."""
        self.source, self.camera, self.cfg = source, camera, cfg
        self.opener = opener or self._open
        self.clock = clock
        self.status = FeedStatus()
        self.queue_size = queue_size
        self.frames: queue.Queue = queue.Queue()  # (arrival, frame), bounded in `_put`
        self.info = None  # StreamInfo of the first connection: size and time base of every frame out
        self.dropped = 0  # frames dropped here because the consumer was behind (live: never wait)
        self._sizes_told: set[tuple[int, int]] = set()  # sizes other than the first connection's, said once each
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._settled = threading.Event()  # connected, or failed as no retry is likely to mend (SourceNotOpenable)
        self.answered = threading.Event()  # the try under way opened the source (its first picture may be to come)
        self.hopeless: UnknownProtocol | None = None  # why it stopped trying: no try can mend it
        self._thread = threading.Thread(target=self._run, name=f"feed-{camera}", daemon=True)
        self._last_time: float | None = None  # seconds, of the last frame handed out
        self._last_wall: float | None = None
        self._last_picture: float | None = None  # clock, of the last picture of the connection under way
        self._anchor_lag: float | None = None  # the lag its first frames gave the connection under way (`_anchored`)
        self._ahead = 0.0  # seconds the timeline is known to run ahead of the wall clock, to be paid back
        self._lost_at: float | None = None  # clock, when the connection under way was lost (until one works again)
        # A live playlist's text when it ended (`#EXT-X-ENDLIST`: its publisher stopped): opened again, FFmpeg reads
        # it as a recording, from its first segment, and a user's engine replayed its last 12 s three times, each
        # under new times. It is opened again once it has changed.
        self._ended_as: str | None = None
        if follows is not None:
            # Its first connection is a return, said as one after an outage (with the stream's last frame, the clock
            # is this machine's monotonic one, which other processes share).
            self._last_time, self._last_wall = follows
            self._lost_at = self._last_wall

    def start(self) -> LiveFeed:
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        """Whether the source connected within `timeout` seconds; False as soon as it answered that it cannot
        be opened as named (`SourceNotOpenable`, the reason in `status.last_error`) before it ever connected. One
        that answered and has yet to give its first picture (joined between two keyframes, 10 s apart with x264's
        defaults) is waited for as long as the reader waits for a picture."""
        from anonengine.video import LIVE_UNDECODABLE_S

        if not self._settled.wait(timeout) and self.answered.is_set():
            self._settled.wait(LIVE_UNDECODABLE_S)
        return self._connected.is_set()

    def first_picture(self, timeout: float) -> None:
        """Returns once the source connected (`wait_connected`); else stops the feed and raises InputError, the
        source's own answer its reason where it gave one. A job on a live source (`anonengine run`) waits so,
        where an engine's camera tries for ever."""
        if self.wait_connected(timeout):
            return
        self.stop()
        reason = self.status.last_error or (
            "it answers, but no picture decoded" if self.answered.is_set() else f"no answer in {timeout:g} s")
        raise InputError(reason if reason.startswith("cannot") else f"cannot open video {self.source.spec}: {reason}")

    def get(self, timeout: float):
        """The next frame, or None if none came within `timeout` seconds; UnknownProtocol where FFmpeg has none
        such (the feed stopped trying)."""
        if self.hopeless is not None:
            raise self.hopeless
        try:
            return self.frames.get(timeout=timeout)[1]
        except queue.Empty:
            return None

    def filmed(self, seconds: float) -> float:
        """The clock when a frame at `seconds` on the timeline is filmed, by the connection under way (read from
        its reading thread's last frame: a frame's time off at most)."""
        if self._last_time is None or self._last_wall is None:
            return self.clock()
        return self._last_wall + seconds - self._last_time

    def stuck(self) -> str | None:
        """Why the connection under way is stuck (STUCK_MARGIN_S), or None. Its reading thread cannot be stopped:
        whoever reads the feed must leave, and a camera's capture starts afresh."""
        if self.status.state is not SourceState.RUNNING or self._last_picture is None:
            return None
        silent = self.clock() - self._last_picture
        if silent <= self.cfg.stall_s + STUCK_MARGIN_S:
            return None
        return (f"{self.camera}: data comes from {self.source.spec}, but no picture for {silent:.0f} s (its sender "
                "restarted with other stream ids? undecodable?)")

    def stop(self) -> None:
        self._stop.set()
        self.status.state = SourceState.STOPPED

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # --- the reading thread ------------------------------------------------------------------------
    def _open(self, source: Source):
        from anonengine.video import VideoReader

        return VideoReader(source.spec, self.camera, kind=source, sources_cfg=self.cfg, on_answer=self.answered.set)

    def _run(self) -> None:
        delays = backoff_delays(self.cfg)
        while not self._stop.is_set():
            self.status.attempts = [t for t in self.status.attempts if self.clock() - t < 600][-20:]
            self.status.attempts.append(self.clock())
            if self._ended_as is not None:
                if self._playlist_text() == self._ended_as:
                    self._failed(f"{ENDED}; its playlist says so, unchanged since")
                    self._stop.wait(next(delays))
                    continue
                self._ended_as = None
            try:
                reader = self.opener(self.source)
            except InputError as exc:
                self.answered.clear()  # whatever it answered, no picture came of it: no reason to wait on
                self._failed(str(exc))
                if isinstance(exc, SourceNotOpenable) and self.info is None:
                    # Never connected: more likely a typo than a camera that is down, so whoever waits for
                    # the first connection hears it now. The feed itself tries on, as for any camera, unless
                    # FFmpeg has no such protocol: then it is over (`get` raises it).
                    self._settled.set()
                    if isinstance(exc, UnknownProtocol):
                        self.hopeless, self.status.state = exc, SourceState.STOPPED  # not "trying again"
                        return
                self._stop.wait(next(delays))
                continue
            except Exception as exc:  # noqa: BLE001 - any failure of a live source is retried
                self.answered.clear()
                self._failed(f"{type(exc).__name__}: {exc}")
                self._stop.wait(next(delays))
                continue
            delays = backoff_delays(self.cfg)  # a connection that worked starts the backoff afresh
            error = self._read(reader)
            if self._stop.is_set():
                break
            self.status.reconnects += 1
            self._failed(error)
            # The feed says both its losses and its returns, whoever reads it (an engine's capture, `run --inline`):
            # the launcher, which hears of them only at its status's pace, missed a loss and return between two.
            # The outage is counted from its last picture: a stall is told only `stall_s` later (a UDP sender down
            # for 31 s was said back after 15 s).
            self._lost_at = self._last_picture if self._last_picture is not None else self.clock()
            log.warning("camera %s: source lost (%s); reconnecting", self.camera, error)
            self._stop.wait(next(delays))

    def _playlist_text(self) -> str | None:
        from anonengine.video import Recorded, Unreadable

        try:
            return Recorded(self.source.url, self.cfg).text()
        except Unreadable:
            return None

    def _failed(self, error: str) -> None:
        self.status.last_error = error
        self.status.state = SourceState.RECONNECTING if self.info is not None else SourceState.CONNECTING

    def _read(self, reader) -> str:
        """Hands out the frames of one connection; returns why it ended."""
        if self.info is None:
            self.info = reader.info
            if self.queue_size is None:
                frame_bytes = self.info.width * self.info.height * 3
                self.queue_size = max(MIN_BUFFER_FRAMES, min(math.ceil(min(float(self.info.rate), MAX_RATE)
                                                                       * self.cfg.buffer_s),
                                                             BUFFER_MEMORY // frame_bytes))
        self._last_picture = self.status.connected_at = self.clock()  # before RUNNING: `stuck` reads them together
        self.status.state = SourceState.RUNNING
        if self._lost_at is not None:
            log.warning("camera %s: source back after %.0f s", self.camera, self.clock() - self._lost_at)
            self._lost_at = None
        self._connected.set()
        self._settled.set()
        anchor: tuple[float, float] | None = None  # (a frame's stream time, its time on the timeline)
        paced = getattr(reader, "live_paced", True)  # frames that come as filmed, not a playlist's segment at a time
        lag = 0.0  # the least wall clock less timeline time of the frames since the anchor: when a frame's moment came
        # A connection's first frames, (frame, when it came), until the burst FFmpeg's look at the stream gathered has
        # passed: the first of them came that look late (`_anchored`).
        first: list[tuple[Frame, float]] = []
        # The connection's newest frame, handed out once the next comes, or marked `at_break` once the connection ends
        # or its clock jumps: it is detected, and the frames since the detection before are hidden by the boxes on
        # both sides (`_held_out`).
        held: Frame | None = None
        try:
            for frame in reader:
                if self._stop.is_set():
                    return "stopped"
                self._last_picture = now = self.clock()
                if anchor is None:
                    if frame.pts_guessed:
                        # RTSP's first frame often comes before the first timestamp: its time is unknown, and
                        # a guess would shift every frame after it. A live source loses nothing by skipping it.
                        continue
                    first.append((frame, now))
                    if paced and self.source.looked_at and not self._burst_over(first):
                        continue
                    anchor, lag = self._anchored(first, paced)
                    first = []
                    continue
                seconds = anchor[1] + frame.time - anchor[0]
                if not self._follows_on(seconds, now):
                    # The stream's clock jumped (its sender restarted, the connection kept: UDP): after the last
                    # frame, by the wall-clock time since it.
                    self._held_out(held, paced)
                    held = None
                    anchor, lag = self._anchored([(frame, now)], paced)
                    continue
                if held is not None:
                    self._put(held, now, paced)
                held = self._conform(frame, seconds)
                # When it came, by the stream's clock and its least delay yet: the decoder's threads hold the last
                # frames before a sender stops until the stall ends the connection (20 s), and that late a wall
                # clock shortened the outage in the timeline by as much (a soak: 20 to 27 s of recorded time lost
                # at each).
                lag = min(lag, now - self._last_time)
                self._last_wall = self._last_time + lag
            if not paced:
                self._ended_as = self._playlist_text()
            return ENDED
        except InputError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken connection, whatever FFmpeg calls it
            return f"{type(exc).__name__}: {exc}"
        finally:
            if not self._stop.is_set():
                self._held_out(held, paced)
            if first and not self._stop.is_set():  # a connection that ended within its first burst
                self._anchored(first, paced)
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - the connection is being dropped anyway
                pass
            # PyAV's objects hold FFmpeg's buffers in reference cycles, freed only by a full collection,
            # which a process that allocates little may not run for hours: measured, each reconnection
            # kept about 10 MB. A reconnection is rare; a collection is cheap beside it.
            gc.collect()

    def _burst_over(self, first: list[tuple[Frame, float]]) -> bool:
        """Whether a connection's first frames (`_read`) are all here: the last came at the pace of the stream (no
        sooner after the one before than half their time apart, less a few ms), or they span BURST_WAIT_S or
        BURST_FRAMES times the queue. Ended early (a hiccup of the decoder within them), the connection is dated a
        little late, which the next connection's gap pays back (`_anchored`)."""
        if len(first) < 2:
            return False
        (before, came_before), (last, came) = first[-2:]
        return (came - came_before >= (last.time - before.time) / 2 - BURST_SLACK_S
                or came - first[0][1] >= BURST_WAIT_S or len(first) >= BURST_FRAMES * self.queue_size)

    def _held_out(self, held: Frame | None, paced: bool) -> None:
        """Hands out a connection's last frame before a break (it ended, or its clock jumped), marked `at_break`:
        the detector looks at it. The frames since the detection before waited for one after them, which came only
        after the outage: past their deadline, they went out obscured, the whole picture filled (the last 2 frames of
        every reconnection, an operator's trial), and the camera was said degraded, "detections late or failed"."""
        if held is not None:
            held.at_break = True
            self._put(held, self.clock(), paced)

    def _anchored(self, first: list[tuple[Frame, float]], paced: bool) -> tuple[tuple[float, float], float]:
        """Places a connection's first frames (or those after its clock jumped) after the last frame, by the
        wall-clock time since it, and hands them out; returns the anchor and the lag (`_read`).

        When the first was filmed is told by the least delay among them: each came no sooner than it was filmed,
        so the first was filmed no later than any one's coming less the stream time between them. FFmpeg looks at a
        stream for `buffer_s` before handing out its first frame, then the ones it saw meanwhile come at once:
        placed by when it came, every reconnection added that look to the timeline (an operator's cameras,
        reconnecting every 5 s: their recordings 17% longer than the wall clock, a segment's UTC name 48 s off its
        frames after 5 minutes)."""
        start = first[0][0].time
        filmed = min(came - (frame.time - start) for frame, came in first)
        seconds = 0.0
        if self._last_time is not None:
            if self._anchor_lag is not None:
                # Frames of the connection before came sooner still, by the stream's clock, than its first ones
                # told (FFmpeg's queues let its early frames out late; a sender's clock a little fast): it was
                # dated late by as much, paid back from this gap, so that the timeline keeps to the wall clock.
                self._ahead += max(0.0, self._anchor_lag - (self._last_wall - self._last_time))
            tick, gap = float(1 / self.info.rate), filmed - self._last_wall
            paid = min(self._ahead, max(0.0, gap - tick))
            # No sooner than a frame after the last: a timeline that ends ahead of the wall clock (a dead capture's
            # reserved time, `LivePosition`) carries on that much ahead, paid back from later gaps.
            self._ahead += max(0.0, tick - gap) - paid
            seconds = self._last_time + max(gap - paid, tick)
        anchor, lag = (start, seconds), filmed - seconds
        # A live playlist's frames come a segment at a time, sooner than filmed by its clock as they should: nothing
        # of that is paid back.
        self._anchor_lag = lag if paced else None
        first[0][0].at_break = self._last_time is not None  # after an outage: anyone may be anywhere
        # All of them, as come now: they waited here, not for the consumer (held up to BURST_WAIT_S, those that had
        # come first would be dropped as waiting too long).
        now, room = self.clock(), max(len(first), self.queue_size)
        for frame, _ in first:
            self._put(self._conform(frame, seconds + frame.time - start), now, paced, room)
        self._last_wall = self._last_time + lag
        return anchor, lag

    def _follows_on(self, seconds: float, now: float) -> bool:
        """Whether a frame at `seconds` on the timeline (by its connection's clock) follows the last one: later, and
        not later than the wall clock allows (a network delivers in bursts: CLOCK_JUMP_S more). A stream's clock
        that went back (a sender restarted: its times from 0 again, or from 1.4 s as FFmpeg's MPEG-TS) or leapt
        ahead is taken up again from the wall clock."""
        if self._last_time is None:
            return True
        return self._last_time < seconds <= self._last_time + (now - self._last_wall) + CLOCK_JUMP_S

    def _conform(self, frame, seconds: float):
        """The frame at the first connection's size, at `seconds` in its time base, after the last one."""
        info = self.info
        tick = float(info.time_base)
        if self._last_time is not None and seconds <= self._last_time:
            seconds = self._last_time + tick
        self._last_time = seconds
        frame.pts = round(seconds / tick)
        frame.time_base = info.time_base
        frame.pixel_aspect = info.pixel_aspect
        size = frame.image.shape[1::-1]
        if size != (info.width, info.height):
            if size not in self._sizes_told:  # a camera reconfigured: it was scaled without a word
                self._sizes_told.add(size)
                log.warning("%s: the source came back at %dx%d; fitted into the stream's %dx%d", self.camera,
                            *size, info.width, info.height)
            frame.image = fitted(frame.image, info.width, info.height)
        return frame

    def _put(self, frame, now: float, paced: bool = True, room: int | None = None) -> None:
        """Queues a frame that came `now`; past `room` frames waiting (default `queue_size`), or `buffer_s` of
        them, the oldest go."""
        if not paced:
            # A live playlist's frames come a segment at a time, seconds of them at once: how long they wait here
            # is the segment's length, not the engine's lag, and dropped past `buffer_s` they were 22 of every 50
            # (2-s segments) on a machine that kept up. They are read no faster than they are taken: FFmpeg then
            # fetches the next segment later, and skips one that expired meanwhile (an engine truly behind).
            while self.frames.qsize() >= self.queue_size and not self._stop.is_set():
                self._last_picture = self.clock()  # waiting on the engine, not stuck (`stuck`)
                self._stop.wait(0.01)
            self.frames.put_nowait((now, frame))
            return
        with self.frames.mutex:  # the consumer takes from the front meanwhile
            waiting, dropped = self.frames.queue, 0
            while waiting and (len(waiting) >= (room or self.queue_size) or now - waiting[0][0] > self.cfg.buffer_s):
                waiting.popleft()  # a live source waits no longer than that: the oldest goes
                dropped += 1
            if dropped:
                self.dropped += dropped
                # The first frame after the gap is detected: what was dropped may have been a cut's (its
                # `at_break` goes with it), or the time between the frames kept passes the stride's.
                (waiting[0][1] if waiting else frame).at_break = True
        self.frames.put_nowait((now, frame))


def fitted(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to fit `width` x `height` whole, its shape kept, with black bars where it does not fill it:
    a 4:3 camera come back into a 16:9 stream was stretched, its persons a third wider than the detector knows."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    inner_w, inner_h = min(max(round(w * scale), 1), width), min(max(round(h * scale), 1), height)
    inner = cv2.resize(image, (inner_w, inner_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    left, top = (width - inner_w) // 2, (height - inner_h) // 2
    return cv2.copyMakeBorder(inner, top, height - inner_h - top, left, width - inner_w - left, cv2.BORDER_CONSTANT,
                              value=(0, 0, 0))
