"""Video in and out with PyAV: decoded frames keep their timestamps, outputs appear only when complete."""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import statistics
import struct
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.codec.hwaccel import HWAccel
from av.sidedata.sidedata import Type as SideDataType

from anonengine.config import EncoderConfig, SourcesConfig
from anonengine.errors import ConfigError, InputError, OutputError, SourceNotOpenable, UnknownProtocol
from anonengine.locks import FileLock, LockBusy, output_lock_path
from anonengine.paths import OUTPUT_CONTAINERS, URL_SCHEME, partial_path, sequence_photo
from anonengine.sources import (
    PLAYLIST_FORMATS,
    Source,
    SourceKind,
    classify,
    fitted,
    malformed_url,
    unknown_protocol,
)

# The end of an MPEG-TS file is probed for a stream begun past its anonymized one (`_new_stream_follows`) as far as
# this; such a stream goes on for this many packets at least.
NEW_STREAM_PROBE_BYTES = 64 * 2**20
NEW_STREAM_PACKETS = 3
TYPICAL_OVER_AVERAGE = 1.5  # `frame_rate`: a spacing's rate this far over the average tells of gaps
CUT_SHORT_TOLD = 5  # photos cut short named one by one; past this, counted
log = logging.getLogger("anonengine.video")


@dataclass
class Frame:
    """One decoded frame of a camera; `pts` counts `time_base` units, `seq` counts frames from 0."""

    camera: str
    seq: int
    pts: int
    time_base: Fraction
    image: np.ndarray
    pts_guessed: bool = False  # the stream gave no timestamp: counted at the nominal rate
    last: bool = False  # the last frame of a file (or the last decoded before it failed)
    # Beside a break in the stream (time starting again, another size, a live source's reconnection): persons
    # may be anywhere across it, so what is seen on one side tells nothing of the other (`schedule`).
    at_break: bool = False
    pixel_aspect: Fraction = Fraction(1)  # a pixel's width over its height, as shown (`StreamInfo.pixel_aspect`)
    # Part of the picture changed at once since the frame before (`ChangeFinder`): someone came or went between two
    # frames (an edit's jump cut, a sprint across), a person the detector's stride could leave unseen (`schedule`).
    changed: bool = False
    # Where something came since the frame before (`PictureChange.cells`); the schedule detects the frame where that
    # is away from the persons known.
    came: np.ndarray | None = None

    @property
    def time(self) -> float:
        return float(self.pts * self.time_base)


UNSPECIFIED = 2  # FFmpeg's AVCOL_PRI_UNSPECIFIED, AVCOL_TRC_UNSPECIFIED, AVCOL_SPC_UNSPECIFIED
BT601_MATRIX = 6  # AVCOL_SPC_SMPTE170M: OpenCV's Y'CbCr <-> BGR formula (`to_yuv420p`)
# What H.264 can say (FFmpeg's numbers; 0 and 3 are reserved, a matrix of 0 says RGB): anything else a source says
# is passed on as unspecified, not handed to an encoder that may refuse it.
PRIMARIES = {1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 22}
TRANSFERS = {1, *range(4, 19)}
MATRICES = {1, *range(4, 15)}
LIMITED_RANGE, FULL_RANGE = 1, 2  # AVCOL_RANGE_MPEG, AVCOL_RANGE_JPEG


@dataclass(frozen=True)
class Colour:
    """What an output's values mean, as FFmpeg numbers them: colour primaries, transfer characteristic and Y'CbCr
    matrix (`UNSPECIFIED`: not said), in the limited range `to_yuv420p` writes.

    The primaries and the transfer are the source's (BGR is its picture, not turned to sRGB); the matrix is the
    one the output's values were made with: the source's where `to_bgr` kept its values (OpenCV's BT.601 both
    ways), else BT.601 (the source turned to BGR by its own matrix, written by OpenCV's). A phone's HDR video
    (BT.2020, HLG) came out unlabelled, and players showed it as SDR BT.709: flat and pale beside the original."""

    primaries: int = UNSPECIFIED
    transfer: int = UNSPECIFIED
    matrix: int = UNSPECIFIED

    @classmethod
    def of(cls, codec_context, values_kept: bool) -> Colour:
        """A stream's, from its decoder (which knows them once it decoded a frame) and whether `to_bgr` kept its
        frames' values (`by_opencv`)."""
        matrix = int(codec_context.colorspace) if values_kept else BT601_MATRIX
        primaries, transfer = int(codec_context.color_primaries), int(codec_context.color_trc)
        return cls(primaries if primaries in PRIMARIES else UNSPECIFIED,
                   transfer if transfer in TRANSFERS else UNSPECIFIED, matrix if matrix in MATRICES else UNSPECIFIED)

    def tag(self, codec_context) -> None:
        """Labels an encoder's output with these colours."""
        codec_context.color_primaries, codec_context.color_trc = self.primaries, self.transfer
        codec_context.colorspace, codec_context.color_range = self.matrix, LIMITED_RANGE


@dataclass(frozen=True)
class StreamInfo:
    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    frames: int  # container's count; 0 when unknown (live sources, some files)
    live: bool
    colour: Colour = Colour()
    # A pixel's width over its height, as shown: 1 but for anamorphic video (a PAL 16:9 DVD's 720x576 frames are
    # shown 1024x576: 64/45; HDV's 1440x1080 as 1920x1080: 4/3). The output keeps it, and the detector looks at
    # the picture as shown (`as_shown`).
    pixel_aspect: Fraction = Fraction(1)


def main_video(container: av.container.InputContainer):
    """The video stream a file is: FFmpeg's pick (`av_find_best_stream`), which passes over a cover picture; the
    first stream was a 1-frame cover in a file whose video came second, and that frame was all that came out."""
    return container.streams.best("video") or container.streams.video[0]


def open_source(source: Source, cfg: SourcesConfig) -> av.container.InputContainer:
    """Opens a classified source (file, webcam, stream URL) with the timeouts a live source needs, to be
    decoded where `cfg.decoder` says."""
    url, fmt, options, timeout = source.open_arguments(cfg)
    if (malformed := malformed_url(url)) is not None:  # no retry can mend it: an engine's camera fails at once
        raise UnknownProtocol(f"cannot open video {source.spec}: {malformed}")
    # NVDEC's frames come down to memory as NV12 with their properties: PyAV copies them, a phone's display
    # matrix with them, since 18.1 (PyAV#2321; before, only the timestamp, and a portrait video stayed on
    # its side for the detector).
    device = decoding_device(cfg.decoder)
    hwaccel = None if device == "cpu" else cuda_decoder(device)
    try:
        return av.open(url, format=fmt, options=options, timeout=timeout, hwaccel=hwaccel)
    except av.FFmpegError as exc:
        error = (UnknownProtocol if isinstance(exc, UNKNOWN_TO_FFMPEG) else
                 SourceNotOpenable if isinstance(exc, NOT_OPENABLE) else InputError)
        named = source.spec if url == source.spec else f"{source.spec} ({url})"
        reason = _unfinished_file(url) if isinstance(exc, av.InvalidDataError) else None
        timed_out = f"no answer in {timeout[0]:g} s" if timeout else None
        unresolved = _unresolved_host(url) if isinstance(exc, OSError) and exc.errno == errno.EIO else None
        if error is UnknownProtocol:  # with a swapped or doubled letter named, as validation and attach say it
            reason = unknown_protocol(url)
        raise error(f"cannot open video {named}: {reason or unresolved or _ffmpeg_reason(exc, timed_out)}") from None


def _unresolved_host(url: str) -> str | None:
    """Why a network URL failed where FFmpeg says only "Input/output error" (its UDP and RTP protocols of a name
    that does not resolve, as an operator's `udp://nosuchhost.invalid:5607`): the name's lookup failing; None
    where it resolves, or names no host."""
    import socket
    from urllib.parse import urlsplit

    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        return f"the host name {host} does not resolve ({exc.strerror})"
    except (OSError, UnicodeError):
        return None
    return None


def _unfinished_file(path: str) -> str | None:
    """Why FFmpeg finds no data in a local file where it is plain: it is empty, or an MP4/MOV whose index (the
    `moov` box, written last by most cameras and phones) never was. FFmpeg says "Invalid data found" of both."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                return "the file is empty (0 bytes)"
            boxes, _ = top_level_boxes(file, size, most=64)
    except (OSError, struct.error):
        return None
    if boxes and boxes[0] == b"ftyp" and b"moov" not in boxes:
        return ("an MP4/MOV without its index (no moov box): a recording cut short before it was finished (the "
                "camera stopped, the copy was cut); tools such as untrunc rebuild one from a good file of the same camera")
    return None


def top_level_boxes(file, size: int, most: int | None = None) -> tuple[list[bytes], int | None]:
    """The kinds of an MP4's or MOV's top-level boxes in order (at most `most`), read from the open `file` of `size`
    bytes, and the offset where the last one read ends (None where one is malformed: a length under 8)."""
    kinds, offset = [], 0
    while offset + 8 <= size and (most is None or len(kinds) < most):
        file.seek(offset)
        length, kind = struct.unpack(">I4s", file.read(8))
        if length == 1 and offset + 16 <= size:
            length = struct.unpack(">Q", file.read(8))[0]
        elif length == 0:  # to the file's end
            length = size - offset
        kinds.append(kind)
        if length < 8:
            return kinds, None
        offset += length
    return kinds, offset


# A live stream's packets FFmpeg cannot decode are skipped (joined between two keyframes) until no picture came for
# this long: then the connection is given up, and tried again.
LIVE_UNDECODABLE_S = 30.0

# What FFmpeg answers when the source as named cannot be opened, now or later: no such protocol or demuxer,
# no such device or path, no access, credentials refused. A camera that is off or still booting answers
# otherwise (connection refused, timed out, no route) and is waited for.
UNKNOWN_TO_FFMPEG = (av.error.ProtocolNotFoundError, av.error.DemuxerNotFoundError)
NOT_OPENABLE = (av.error.ProtocolNotFoundError, av.error.DemuxerNotFoundError, av.error.FileNotFoundError,
                av.error.PermissionError, av.error.HTTPNotFoundError, av.error.HTTPUnauthorizedError,
                av.error.HTTPForbiddenError, av.error.HTTPBadRequestError)


def decoding_device(decoder: str) -> str:
    """Where `sources.decoder` decodes on this machine: "cpu" or "cuda:N". ConfigError for a CUDA device
    FFmpeg cannot open; `auto` is cuda:0 where it can, the CPU otherwise."""
    if decoder == "cpu":
        return "cpu"
    device = "cuda:0" if decoder in ("auto", "cuda") else decoder
    why_not = _cuda_decoder_missing(device)
    if why_not is None:
        return device
    if decoder == "auto":
        return "cpu"
    raise ConfigError(f"sources.decoder {decoder}: FFmpeg cannot open that CUDA device for decoding ({why_not})")


def cuda_decoder(device: str) -> HWAccel:
    """PyAV's settings to decode on `device` ("cuda:N")."""
    return HWAccel("cuda", device=device.partition(":")[2])


@functools.cache
def _cuda_decoder_missing(device: str) -> str | None:
    """None where FFmpeg opens `device` to decode H.264 on (NVDEC), else why not: asked once a process,
    since a live source reopens for ever."""
    try:
        cuda_decoder(device).create(av.Codec("h264", "r"))
    except (av.FFmpegError, OSError, NotImplementedError) as exc:
        # FFmpeg reports a machine without NVIDIA's driver as EPERM ("Operation not permitted").
        return f"no NVIDIA driver or GPU: {exc.strerror}" if isinstance(exc, PermissionError) else str(exc)
    return None


class VideoReader:
    """Decodes the first video stream of a source into upright BGR frames with their presentation timestamps.

    Frames are turned as the container's display matrix says (a phone filming in portrait stores its
    frames landscape, tagged "rotate 90"), then by the source's own `rotate` (a camera mounted upside
    down tags nothing): the detector must see people upright, and the output is written upright with
    no tag. The first frame is decoded on opening, so `info` has the size of the
    frames as they come out, whatever the container declares.
    """

    def __init__(self, source: str, camera: str = "cam0", *, kind: Source | None = None,
                 sources_cfg: SourcesConfig | None = None, on_answer: Callable[[], None] | None = None) -> None:
        """`on_answer`: called once the source is open, before its first picture is decoded (a live stream joined
        between two keyframes decodes nothing until the next)."""
        self.source = source
        self.camera = camera
        kind = kind or classify(source)
        self.rotate = kind.rotate
        self.numbers = kind.numbers  # an image sequence's photos' numbers: its frames
        sources_cfg = sources_cfg or SourcesConfig()
        # Where a recording is read again for what PyAV cannot tell while reading it (`_new_stream_follows`): its
        # file, or its URL on a web server.
        self.recording: Recorded | None = None
        if kind.kind is SourceKind.FILE or (kind.kind is SourceKind.HTTP and not kind.live):
            self.recording = Recorded(kind.url, sources_cfg)
        # What a read that waited for PyAV's timeout means: the stream stopped sending.
        self.stalled = f"nothing came for {sources_cfg.stall_s:g} s" if kind.live else None
        self.container = open_source(kind, sources_cfg)
        if on_answer is not None:
            on_answer()
        try:
            self.info = self._open(kind.live)
        except BaseException:
            self.container.close()
            raise

    def _open(self, live: bool) -> StreamInfo:
        if not self.container.streams.video:
            raise InputError(f"no video stream in {self.source}")
        self.stream = main_video(self.container)
        if len(self.container.streams.video) > 1:
            log.warning("%s: %d video streams; stream %d is anonymized, the others (another angle, a cover picture) "
                        "are left out", self.source, len(self.container.streams.video), self.stream.index)
        # AUTO adds frame threading to FFmpeg's default slice threading: much faster decode.
        self.stream.thread_type = "AUTO"
        self.live = live
        self.discarded = 0  # packets an edit list leaves out (decoded, never shown)
        self.undecodable = 0  # packets FFmpeg could not decode (damaged), left out
        self.demuxed = 0  # the video's packets read (not empty)
        self.damage = ""  # what a file read to its end lost (`_tell_losses`): "" where nothing
        self._decoded = self._decode()
        self._first = next(self._decoded, None)
        if self._first is None:
            raise InputError(f"no decodable video frames in {self.source}")
        height, width = self._first.image.shape[:2]
        rate = frame_rate(self.stream)
        return StreamInfo(
            width=width,
            height=height,
            rate=Fraction(rate),
            time_base=Fraction(self.stream.time_base or Fraction(1, 90000)),
            frames=int(self.stream.frames or len(self.numbers or ())),
            live=live,
            colour=Colour.of(self.stream.codec_context, self._first.values_kept),
            pixel_aspect=self._first.pixel_aspect,
        )

    def _stored_pixel_aspect(self) -> Fraction:
        """The stream's pixel aspect as stored (the container's, else the codec's; known once it was opened)."""
        aspect = self.stream.sample_aspect_ratio or self.stream.codec_context.sample_aspect_ratio
        aspect = Fraction(aspect) if aspect and aspect > 0 else Fraction(1)
        if not 1 / MAX_PIXEL_ASPECT <= aspect <= MAX_PIXEL_ASPECT:
            log.warning("%s: a pixel aspect of %s is no camera's: taken as square", self.source, aspect)
            return Fraction(1)
        return aspect

    def _image(self, av_frame: av.VideoFrame, stored_aspect: Fraction) -> DecodedImage:
        orientation = display_matrix(av_frame, self.photo(av_frame.pts) or self.source)
        image = turn(upright(to_bgr(av_frame), orientation), self.rotate)
        # A quarter turn (by the tag, or `rotate`) makes a pixel's width its height.
        quarter = (orientation is not None and orientation[1] != 0) != (self.rotate in (90, 270))
        return DecodedImage(av_frame.pts, image, by_opencv(av_frame), 1 / stored_aspect if quarter else stored_aspect)

    def photo(self, index: int | None) -> str | None:
        """An image sequence's photo that frame `index` (its pts: image2 counts them) is; None for a video."""
        if self.numbers is None or index is None or not 0 <= index < len(self.numbers):
            return None
        return str(Path(self.source).with_name(sequence_photo(self.source, self.numbers[index])))

    def _bad_photo(self, near: int) -> str:
        """Which of an image sequence's photos its decoder failed on, for the user's error: the first gone, empty
        or unreadable from `near` (the frames decoded: a decoder's threads hold a few more), or else any gone
        or empty; "" for a video, or none found."""
        if self.numbers is None:
            return ""
        from PIL import Image

        start = max(0, near - 4)
        for index in [*range(start, len(self.numbers)), *range(start)]:
            path = Path(self.photo(index))
            try:
                if path.stat().st_size == 0:
                    return f" ({path.name} is empty)"
            except OSError:
                return f" ({path.name} is gone)"
            if start <= index < near + 16:
                try:
                    with Image.open(path) as image:
                        image.load()
                except Exception:  # noqa: BLE001 - Pillow raises many types for a damaged file
                    return f" ({path.name} cannot be read)"
        return ""

    def _index_out_of_reach(self, decoded: int) -> str:
        """Why an MP4 or MOV on a web server may fail at its first frame, for the user's error: its index (`moov`) is
        at its end, where FFmpeg reads it only with byte ranges, which some servers (Python's `http.server`) do not
        serve ("Input/output error"); "" otherwise."""
        if decoded or not self.source.lower().startswith(("http://", "https://")) or \
                "mp4" not in self.container.format.name:
            return ""
        return ("; if its index is at its end, the server must serve byte ranges, or the file be made to start with "
                "it: ffmpeg -i IN -c copy -movflags +faststart OUT")

    def _packets(self) -> Iterator[av.Packet]:
        """The video stream's packets. A stream that begins in the middle of the file (MPEG-TS files joined with
        other PIDs, an HLS discontinuity) is none the container listed when opened: PyAV skips its packets without
        a word, so every frame after the listed stream's end would be lost. PyAV then fails at the file's end
        (IndexError) only where a byte past its own list of streams, read out of bounds, happens not to be 0: the
        end of a file that can start streams midway is opened apart to tell."""
        packets, seconds, position = self.container.demux(self.stream), 0.0, -1
        start = float((self.stream.start_time or 0) * (self.stream.time_base or 0))
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                new_stream = self._new_stream_follows(position)
            except IndexError:
                new_stream = True
            else:
                if packet.pts is not None and packet.time_base:
                    seconds = max(seconds, float(packet.pts * packet.time_base) - start)
                if packet.pos is not None and packet.pos >= 0:
                    position = max(position, packet.pos)
                self.demuxed += bool(packet.size)
                yield packet
                continue
            if new_stream:
                raise InputError(
                    f"cannot decode {self.source} past {seconds:.2f} s: a new stream begins there (files joined, a "
                    "broadcast's new program), which its start did not list: cut it there (ffmpeg -t, -ss) and "
                    "anonymize each part") from None
            return

    def _new_stream_follows(self, position: int) -> bool:
        """Whether a recording goes on, past the anonymized stream's last packet (at byte `position`), with video of
        a stream the container did not list when it was opened. Of the formats FFmpeg reads as files, MPEG-TS is
        the one whose streams begin anywhere (its programs are announced again and again, and may change), and an
        HLS playlist's segments are MPEG-TS (`_playlist_stream_changes`). Where that cannot be read again, it is
        said."""
        if self.recording is None:
            return False
        try:
            if self.container.format.name == "hls":
                return self._playlist_stream_changes(self.recording)
            if position < 0 or "mpegts" not in self.container.format.name:
                return False
            return self.recording.new_stream_in_end(position, {stream.id for stream in self.container.streams.video})
        except Unreadable as exc:
            log.warning("%s: not checked for a stream begun midway, which would be left out (%s)", self.source, exc)
            return False

    def _playlist_stream_changes(self, where: Recorded, variants: bool = True) -> bool:
        """Whether an HLS playlist's video goes on in other MPEG-TS streams past a discontinuity (another encoder's
        segments, joined in the playlist): its segment after each `#EXT-X-DISCONTINUITY` is probed for video of
        stream ids its first segment has none of. A playlist of playlists (one for each bit rate, as a web server's
        usually is; FFmpeg reads them as one) has each of them checked."""
        playlist = Playlist.read(where)
        if playlist.variants:
            return variants and any(self._playlist_stream_changes(each, variants=False) for each in playlist.variants)
        after = [segment for segment, after_break, _ in playlist.segments if after_break]
        if not after:
            return False
        listed = playlist.segments[0][0].video_ids()
        return any(segment.new_stream_in_end(0, listed) for segment in after)

    def _decode(self) -> Iterator[DecodedImage]:
        decoded = damaged_count = corrupt = 0
        undecodable_reason = ""  # why the last packet left out was
        last_picture = time.monotonic()
        deinterlacer = Deinterlacer(self.stream.time_base or Fraction(1, 90000))
        stored_aspect = self._stored_pixel_aspect()
        damaged = None  # a file's packet flagged corrupt, held until what follows tells whether the file ends there
        # FFmpeg decodes a JPEG photo cut short without a word (the packet is the whole file, not flagged), its
        # missing part grey-green or the photo before's: a sequence's photos are checked for their end.
        jpegs, cut_short = self.numbers is not None and self.stream.codec_context.name == "mjpeg", []
        try:
            for packet in self._packets():
                # FFmpeg flags a packet cut short by the end of the file as corrupt and decodes what is
                # there without an error. A fragmented MP4 declares no frame count, so for a file this
                # flag is the only sign that it was truncated: its last packet corrupt, the file is refused.
                # One followed by more (MPEG-TS files joined, a recording that lost a packet: FFmpeg flags
                # the break) is decoded as FFmpeg can, as for a live source, which loses packets and goes on.
                if damaged is not None:
                    if not packet.size:  # the end of the file, right after it: cut short
                        break
                    damaged_count += 1
                    if damaged_count == 1:  # a recording of a flaky feed may have hundreds: told once, counted
                        log.warning("%s: a damaged packet at frame %d, decoded as FFmpeg can", self.source, decoded)
                    packets, damaged = (damaged, packet), None
                elif packet.is_corrupt and packet.size and not self.live:
                    damaged = packet
                    continue
                else:
                    packets = (packet,)
                # A cut made without re-encoding (`ffmpeg -ss 1.3 -c copy`) keeps the pictures before the cut
                # that the first one shown needs, and an edit list that leaves them out: counted in the header's
                # frames, never shown (a 42-frame cut declares 75, and was refused as truncated).
                self.discarded += packet.is_discard and bool(packet.size)
                if jpegs and packet.size and jpeg_cut_short(bytes(packet)):
                    cut_short.append(self.photo(packet.pts) or f"frame {decoded}")
                    if len(cut_short) <= CUT_SHORT_TOLD:
                        log.warning("%s: %s is cut short (a copy stopped midway?): decoded as FFmpeg can, the rest "
                                    "of its picture made up", self.source, Path(cut_short[-1]).name)
                for held in packets:
                    try:
                        pictures = held.decode()
                    except av.InvalidDataError as exc:
                        # A packet damaged past decoding: a file's bit rot, or a live stream joined between two
                        # keyframes (UDP, RTP: a camera's keyframe every 10 s), whose pictures lack the parameters
                        # they need until the next one. It is left out, and the picture after the hole is detected
                        # (`__iter__`); FFmpeg decodes the ones that referred to it as it can.
                        # A file's was refused whole, where FFmpeg's own tools decode every other picture (47 of 48
                        # of a clip with 4 kB of it overwritten); a live connection was given up, for ever where
                        # each try came mid-way (a user's first trial). A live one is given up once no picture
                        # came for LIVE_UNDECODABLE_S; a file where no picture decodes at all is refused, and so is an
                        # image sequence's photo that does not (named, `_bad_photo`: it can be mended and run again).
                        if (self.live and time.monotonic() - last_picture > LIVE_UNDECODABLE_S
                                or not self.live and self.numbers is not None):
                            raise
                        self.undecodable += 1
                        undecodable_reason = _ffmpeg_reason(exc)
                        if self.undecodable == 1:  # decoder threads tell it a few packets late: near, not at
                            at = "" if held.pts is None else f" near {float(held.pts * held.time_base):.2f} s"
                            log.warning("%s: a packet FFmpeg cannot decode%s (%s): left out, the pictures after it "
                                        "decoded as FFmpeg can", self.source,
                                        " (joined between two keyframes?)" if self.live else at, undecodable_reason)
                        continue
                    for av_frame in itertools.chain.from_iterable(map(deinterlacer.take, pictures)):
                        last_picture = time.monotonic()
                        if av_frame.is_corrupt:
                            # Damage inside an MP4's packet is flagged on the picture only: it went without a word.
                            corrupt += 1
                            if corrupt == 1 and not damaged_count:
                                log.warning("%s: a damaged picture at frame %d, decoded as FFmpeg can", self.source,
                                            decoded)
                        yield self._image(av_frame, stored_aspect)
                        decoded += 1
            if damaged is None:  # the end: the deinterlacer's last frame
                for av_frame in deinterlacer.flush():
                    yield self._image(av_frame, stored_aspect)
                    decoded += 1
        except av.FFmpegError as exc:
            # What a live source's decoder threads and bwdif hold was decoded: it goes out before the failure is
            # told (a sender that stopped: its last two frames were lost at the stall). A file's output is given up
            # at a failure, and its decoder may hold pictures from after the failed one.
            for av_frame in self._held_back(deinterlacer) if self.live else self._flushed(deinterlacer):
                yield self._image(av_frame, stored_aspect)
                decoded += 1
            reason = _ffmpeg_reason(exc, timed_out=self.stalled)
            if reason == self.stalled:  # a sender that stopped: nothing failed to decode
                # Counted on this connection: the camera's own numbers run on across connections and captures (an
                # operator read "after frame 269" of a camera at frame 4250).
                raise InputError(f"{self.source}: {reason}, after {decoded} frames on this connection") from None
            raise InputError(f"cannot decode {self.source} at frame {decoded}{self._bad_photo(decoded)}: "
                             f"{reason}{self._index_out_of_reach(decoded)}") from None
        if damaged is not None:
            raise InputError(f"{self.source} is truncated or corrupt at frame {decoded}")
        if self.undecodable and not decoded:
            raise InputError(f"cannot decode {self.source}: none of its pictures decodes ({undecodable_reason})")
        if self.undecodable > 1:
            log.warning("%s: %d packets FFmpeg cannot decode left out in all", self.source, self.undecodable)
        if damaged_count > 1:
            log.warning("%s: %d damaged packets in all, decoded as FFmpeg can", self.source, damaged_count)
        elif corrupt > 1 and not damaged_count:
            log.warning("%s: %d damaged pictures in all, decoded as FFmpeg can", self.source, corrupt)
        if len(cut_short) > CUT_SHORT_TOLD:
            log.warning("%s: %d photos cut short in all, decoded as FFmpeg can", self.source, len(cut_short))

    @property
    def live_paced(self) -> bool:
        """A live source whose frames come as they are filmed, so that their arrival tells their time; not a live
        playlist's (HLS, DASH), which come a segment at a time."""
        return self.info.live and self.container.format.name not in PLAYLIST_FORMATS

    def _held_back(self, deinterlacer) -> list:
        """The pictures the decoder and the deinterlacer hold, at a failure after which nothing more is read."""
        held = []
        with contextlib.suppress(av.FFmpegError):  # a decoder that cannot drain: what it holds is lost, as before
            for picture in self.stream.codec_context.decode(None):
                held += deinterlacer.take(picture)
        return held + self._flushed(deinterlacer)

    @staticmethod
    def _flushed(deinterlacer) -> list:
        """What the deinterlacer holds, at a failure."""
        with contextlib.suppress(av.FFmpegError):
            return deinterlacer.flush()
        return []

    def __iter__(self) -> Iterator[Frame]:
        seq = 0
        frame_ticks = max(1, round(1 / (self.info.rate * self.info.time_base)))
        last_pts = None
        restart = 0  # added to the stream's timestamps once they went back (they must only increase)
        size = decoded_size = (self.info.width, self.info.height)  # the stages' size; the stream's, as it goes
        decoded = self._decoded if self._first is None else itertools.chain([self._first], self._decoded)
        self._first = None
        # A file's frame is handed on once the next one is decoded, so that its last frame says so (with a
        # detector stride, it is detected: no detection comes after it to hide a person moving on).
        held: Frame | None = None
        changes = ChangeFinder()
        holes = HoleFinder(frame_ticks)  # of a file's times with no picture
        try:
            for item in decoded:
                pts, guessed = item.pts, item.pts is None
                at_break = False
                if guessed:  # some streams carry no timestamps: count frames at the nominal rate
                    pts = 0 if last_pts is None else last_pts + frame_ticks
                elif last_pts is not None and last_pts - frame_ticks < pts + restart <= last_pts:
                    # The same time as the frame before, or a little before it (a muxer's rounding, a stream
                    # that doubled its frames and not their times): this frame goes a tick after the last, and
                    # the frames after keep their own times. (Taken for time starting again, every such frame
                    # pushed the rest a frame later: a 2-s clip of doubled timestamps came out 4 s long.)
                    pts = last_pts + 1 - restart
                elif last_pts is not None and pts + restart <= last_pts and self.live_paced:
                    # A live sender restarted (UDP: no connection to lose): its time is left to go back, for the
                    # feed takes it up from the wall clock (`LiveFeed._follows_on`). Rebased here to go on a frame
                    # after the last, a sender's pause was lost from the output's time.
                    at_break = True
                elif last_pts is not None and pts + restart <= last_pts:
                    # Time starts again (MPEG-TS files joined, a camera's recorder restarted): what follows
                    # keeps its own pace, from a frame after the last; every stage and muxer needs time to go on.
                    restart, at_break = last_pts + frame_ticks - pts, True
                pts = pts if guessed else pts + restart
                # Frames far apart in time: what the detector saw before tells nothing of this frame. Nor does it of
                # the frame after a hole a packet left out leaves (`_decode`; decoder threads tell the loss a few
                # pictures late, so the hole in the times tells where it was).
                at_break |= last_pts is not None and (pts - last_pts) * self.info.time_base > MAX_FRAME_GAP_S
                if last_pts is not None and not self.info.live:
                    at_break |= pts - last_pts > HOLE_FRAMES * frame_ticks
                    holes.add(last_pts, pts)
                last_pts = pts
                image = item.image
                if image.shape[1::-1] != decoded_size:  # another size than the frame before's
                    at_break, decoded_size = True, image.shape[1::-1]
                    if decoded_size != size:  # said: a portrait photo among landscape ones comes out smaller
                        log.warning("%s: frame %d is %dx%d, fitted into the first frame's %dx%d", self.source, seq,
                                    *decoded_size, *size)
                if image.shape[1::-1] != size:
                    # A stream that changes resolution midway (a camera reconfigured): every stage was set up for
                    # the first size, so later frames are fitted into it whole (black bars where the shapes
                    # differ) rather than refused; stretched, a 4:3 part's persons were a third wider.
                    image = fitted(image, *size)
                change = changes.look(image)
                at_break = change.share >= CUT_SHARE or at_break  # a cut: likewise
                frame = Frame(self.camera, seq, int(pts), self.info.time_base, image, guessed, at_break=at_break,
                              pixel_aspect=self.info.pixel_aspect, changed=change.share >= CHANGE_SHARE,
                              came=change.cells)
                seq += 1
                if self.info.live:
                    yield frame
                    continue
                if held is not None:
                    held.at_break = held.at_break or at_break  # the frame before a break too
                    yield held
                held = frame
        except Exception:
            if held is not None:  # what was decoded before the failure still goes out, as the last
                held.last = True
                yield held
            raise
        if held is not None:
            held.last = True
            yield held
        if not self.info.live and self.info.frames and self.demuxed < self.info.frames:
            if "mp4" in self.container.format.name and boxes_whole(self.source):
                # Every box there to its last byte: not cut short, its index wrong (bit rot in the sample table).
                raise InputError(f"{self.source} is damaged: its index lists {self.info.frames} pictures, of which "
                                 f"{self.demuxed} could be read ({seq} decoded); the file is whole to its end")
            raise InputError(
                f"{self.source} is truncated: {seq} of {self.info.frames} frames could be decoded"
                f"{self._bad_photo(seq)}"
            )
        if not self.info.live:
            self._tell_losses(seq, [(float(start * self.info.time_base), float(ticks * self.info.time_base))
                                    for start, ticks in holes.found()])
        if self.recording is not None and self.container.format.name == "hls":  # a recording: never live
            self._whole_playlist_read(seq)
        declared = None if self.info.live or self.info.frames or restart else self._declared_end()
        if declared is not None and last_pts is not None:
            ends = float((last_pts + frame_ticks) * self.info.time_base)
            if ends < declared - max(TRUNCATED_SLACK_S, 2 * frame_ticks * self.info.time_base):
                said = f"{self.source} is truncated: its frames end at {ends:.2f} s of the {declared:.2f} s it declares"
                if not self.damage:
                    raise InputError(said)
                # Damaged throughout, its last pictures among those lost: it was refused, all its other frames with it.
                log.warning("%s (damaged there too?)", said)
                self.damage += f"; its frames end at {ends:.2f} s of the {declared:.2f} s it declares"

    def _tell_losses(self, shown: int, holes: list[tuple[float, float]]) -> None:
        """Warns of a file's pictures read and not decoded (damaged: a decoder drops the pictures that refer to one
        it could not decode, to the next keyframe; a damaged file was refused as truncated, 215 of 240 frames there
        after its first keyframe was damaged) and of holes in its times (a Matroska demuxer skips a damaged block to
        the next cluster without a word: 0.64 s lost, exit 0, nothing said), and keeps what was lost in `damage` (a
        hole counts: a recording paused is told, and cannot be told apart)."""
        lost = self.demuxed - self.discarded - shown
        lost_said = said = ""
        if lost > 0:
            lost_said = f"{lost} of its {self.demuxed - self.discarded} pictures could not be decoded (damaged?)"
            log.warning("%s: %s: left out", self.source, lost_said)
        if holes:
            start, seconds = max(holes, key=lambda hole: hole[1])
            said = f"{len(holes)} hole(s) in its times, the longest {seconds:.2f} s after {start:.2f} s"
            log.warning("%s: %d hole(s) in its times where no picture is (a recording paused, or parts damaged or "
                        "missing?), the longest %.2f s after %.2f s: the picture before is shown meanwhile",
                        self.source, len(holes), seconds, start)
        self.damage = "; ".join(part for part in (lost_said, said) if part)
        if self.undecodable and not self.damage:
            self.damage = f"{self.undecodable} packet(s) could not be decoded"

    def _whole_playlist_read(self, frames: int) -> None:
        """Raises InputError where a playlist's frames fall short of its segments' durations: FFmpeg skips a segment
        it cannot read with a warning alone (a web server's 404, a file gone), and 60 frames of 180 were lost
        without a word (a review's trial). Short by half a segment (the median's) and 3 frames at least."""
        try:
            playlist = Playlist.read(self.recording)
            if playlist.variants:  # a playlist of playlists: they last alike
                playlist = Playlist.read(playlist.variants[0])
        except Unreadable as exc:
            log.warning("%s: not checked for segments left out (%s)", self.source, exc)
            return
        durations = [seconds for _, _, seconds in playlist.segments if seconds is not None]
        if not playlist.ends or not durations:
            return
        listed, decoded = sum(durations), frames / float(self.info.rate)
        if listed - decoded > max(3 / float(self.info.rate), 0.5 * statistics.median(durations)):
            raise InputError(f"{self.source} is incomplete: its frames last {decoded:.2f} s of the {listed:.2f} s its "
                             "segments do (one missing, or unreadable?)")

    def _declared_end(self) -> float | None:
        """When the video ends as a Matroska file's header states it (its `DURATION` tag, which FFmpeg's and
        mkvmerge's muxers write: the end of its last frame, in seconds; None where not stated), which a copy cut
        short keeps: such a file declares no frame count, and decodes to its end without an error (an MKV cut at
        half its length came out half as long, without a word). An MPEG-TS file states none: FFmpeg times it by
        its last packets, which a cut file lacks too."""
        if "matroska" not in self.container.format.name:
            return None
        hours, _, rest = self.stream.metadata.get("DURATION", "").partition(":")
        minutes, _, seconds = rest.partition(":")
        try:
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return None

    def close(self) -> None:
        # The decoding generator refers to this reader (a cycle): closed here, its frames and FFmpeg's
        # buffers go now, not at some later garbage collection (a camera reconnects for months).
        self._decoded.close()
        self._first = None
        self.container.close()


MAX_PIXEL_ASPECT = 4  # wider or narrower pixels than this are a damaged header's (anamorphic video: 2 at most)
# A frame more than this after the one before it (a camera at under 10 frames/s, a gap in a variable-rate stream)
# is detected whatever the detector's stride: over such a time a person can come and go between two detections.
MAX_FRAME_GAP_S = 0.1
# A file's frames further apart than this many frame times have a hole between them (a picture lost: damaged, or
# cut out): the one after it is detected. Holes of TOLD_HOLE_FRAMES frame times and more are told (a variable-rate
# phone video's frames are up to twice as far apart as its average here and there), and as many times the pace
# around them (HoleFinder).
HOLE_FRAMES = 1.5
TOLD_HOLE_FRAMES = 2.5
HOLE_PACE_GAPS = 4  # the gaps on either side of one that give the pace around it
# A Matroska file whose frames end this much (or 2 frames) before its stated length is cut short.
TRUNCATED_SLACK_S = 0.25
CUT_LEVELS = 40  # a cell of the 32x18 grey copy changed by more than this changed
CUT_SHARE = 0.3  # a frame with this share of its cells changed since the frame before is a cut
# and with this share, something came or went: a person cut in or out, or sprinting across (6 to 34% of a 640x360
# street clip's cells); persons walking, crossing, standing, and the street bench clip's shake and pan: under 3%;
# a hand-held shake of 6 px a frame, up to 13% (its frames are detected more often)
CHANGE_SHARE = 0.04
CELLS = (64, 36)  # the grey copy whose cells tell where something came (`PictureChange.cells`), as (width, height)
# A cell of it changed by more than this came: a person a fifth of the picture tall cut in over the street (brick,
# windows, a bus) changes 10 to 29 of its cells by more, by 84 to 173 at most; a 1.5-px shake, none by more than 15.
CAME_LEVELS = 25


@dataclass(frozen=True)
class PictureChange:
    """What changed since the frame before (`ChangeFinder`): the `share` of the 32x18 grey copy's cells changed by
    more than CUT_LEVELS, and the `cells` of the 64x36 copy changed by more than CAME_LEVELS, where something came
    (a bool map, rows first; None for a first frame)."""

    share: float
    cells: np.ndarray | None


class HoleFinder:
    """The holes in a file's times that are told: gaps of TOLD_HOLE_FRAMES frame times and more, and as many times
    the median of the HOLE_PACE_GAPS gaps on either side. A phone video slows down where light is low, 10 frames/s
    for a 25 frames/s rate: each of those frames had been told as a hole, and a batch recorded the file as damaged."""

    def __init__(self, frame_ticks: int):
        self.frame_ticks = frame_ticks
        self._gaps: deque[tuple[int, int]] = deque()  # (from, ticks) of the gaps still to judge, and those around
        self._judged = 0  # of `_gaps`, those judged already (the gaps before the one to judge next)
        self._holes: list[tuple[int, int]] = []

    def add(self, last_pts: int, pts: int) -> None:
        self._gaps.append((last_pts, pts - last_pts))
        while len(self._gaps) - self._judged > HOLE_PACE_GAPS:
            self._judge()

    def found(self) -> list[tuple[int, int]]:
        """The holes, (from, ticks) each, once every gap is added."""
        while self._judged < len(self._gaps):
            self._judge()
        return self._holes

    def _judge(self) -> None:
        start, ticks = self._gaps[self._judged]
        if ticks >= TOLD_HOLE_FRAMES * self.frame_ticks:
            around = [gap for i, (_, gap) in enumerate(self._gaps) if i != self._judged]
            if not around or ticks >= TOLD_HOLE_FRAMES * statistics.median(around):
                self._holes.append((start, ticks))
        self._judged += 1
        if self._judged > HOLE_PACE_GAPS:
            self._gaps.popleft()
            self._judged -= 1


class ChangeFinder:
    """How much of the picture changed at once since the frame before, and where: at CUT_SHARE a cut (`at_break`:
    the frames on either side of it are detected), at CHANGE_SHARE someone came or went (`Frame.changed`: it is
    detected). At the detector's stride, a shot of a frame or two between detections was never looked at, and
    whoever was in it came out as filmed (8 of 50 frames of a clip with such shots cut in); so was a person cut in
    for two frames over the same scene, or sprinting across it. A person of a third of the picture's height cut in
    for a frame or two changes only 0.3 to 1.7% of the cells, too little to tell from walkers and a shaking camera:
    where something came is told too (`cells`, `Frame.came`), and a frame where that is away from the persons known
    is detected (`schedule.came_apart`). A moving camera brings cells too, where the scene has edges: its frames
    are detected more often. (Cells allowed to match any cell near them in the frame before, to let a moving camera
    by, let a person over brick and windows by as well: a red team's crops showed, up to 99.9% of them.) Compared
    on grey copies averaged over every pixel, so that a shaking camera's texture changes them as little as it can
    (a copy of every 8th pixel aliases: 1.5 px of shake brought cells all over a street): 0.5 ms a 720p frame,
    1.0 ms at 1080p."""

    def __init__(self) -> None:
        self.previous: tuple[np.ndarray, np.ndarray] | None = None  # the frame before's copies: 64x36, 32x18

    def look(self, image: np.ndarray) -> PictureChange:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        fine = cv2.resize(grey, CELLS, interpolation=cv2.INTER_AREA)
        coarse = cv2.resize(fine, (CELLS[0] // 2, CELLS[1] // 2), interpolation=cv2.INTER_AREA)
        previous, self.previous = self.previous, (fine, coarse)
        if previous is None:
            return PictureChange(0.0, None)
        fine_before, coarse_before = previous
        share = float((cv2.absdiff(coarse, coarse_before) > CUT_LEVELS).mean())
        return PictureChange(share, cv2.absdiff(fine, fine_before) > CAME_LEVELS)


class Deinterlacer:
    """Interlaced frames (two fields a field's time apart, woven into one frame: a broadcast's or a camcorder's
    1080i, a DVD's 576i) made progressive by FFmpeg's bwdif, a frame for each, as players show them. Left woven,
    an output said to be progressive was shown combed wherever something moved, and the detector looked at combed
    persons. Frames not flagged interlaced pass untouched (a stream may mix both); once one was, every frame goes
    through bwdif, one frame behind."""

    def __init__(self, time_base: Fraction) -> None:
        self.time_base = time_base
        self.graph: av.filter.Graph | None = None
        self.input: tuple[int, int, str] | None = None  # (width, height, format) the graph takes
        self.unable = False  # bwdif refused the stream's frames

    def take(self, frame: av.VideoFrame) -> list[av.VideoFrame]:
        """The frames ready to show after `frame`: itself, or once deinterlacing, bwdif's frame before it."""
        if self.graph is None and not frame.interlaced_frame or self.unable:
            return [frame]
        ready = []
        if self.input != (frame.width, frame.height, frame.format.name):  # the first, or the stream changed
            ready = self.flush()
            try:
                self._start(frame)
            except av.FFmpegError as exc:  # bwdif takes frames of 3 lines or more, in planar formats
                log.warning("interlaced %dx%d %s frames cannot be deinterlaced (%s): they stay woven",
                            frame.width, frame.height, frame.format.name, _ffmpeg_reason(exc))
                self.graph, self.input, self.unable = None, None, True
                return [*ready, frame]
        self.graph.push(frame)
        return ready + self._pull()

    def _start(self, frame: av.VideoFrame) -> None:
        self.graph = av.filter.Graph()
        source = self.graph.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                                       time_base=self.time_base)
        bwdif = self.graph.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced")
        source.link_to(bwdif)
        bwdif.link_to(self.graph.add("buffersink"))
        self.graph.configure()
        self.input = (frame.width, frame.height, frame.format.name)

    def flush(self) -> list[av.VideoFrame]:
        """The frames still held, at the end or before the stream changes."""
        if self.graph is None:
            return []
        self.graph.push(None)
        ready = self._pull()
        self.graph, self.input = None, None
        return ready

    def _pull(self) -> list[av.VideoFrame]:
        ready = []
        while True:
            try:
                frame = self.graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return ready
            # bwdif counts time in half the stream's units (it could send a frame a field): back to the stream's.
            if frame.pts is not None and frame.time_base and frame.time_base != self.time_base:
                frame.pts = round(frame.pts * frame.time_base / self.time_base)
                frame.time_base = self.time_base
            ready.append(frame)


@dataclass
class DecodedImage:
    pts: int | None
    image: np.ndarray
    values_kept: bool  # turned to BGR by the formula the encoder takes back (`by_opencv`)
    pixel_aspect: Fraction  # of the image as turned


# 4:2:0 layouts whose planes OpenCV converts itself: yuv420p from the CPU decoder, NV12 from NVDEC.
YUV420_TO_BGR = {"yuv420p": cv2.COLOR_YUV2BGR_I420, "nv12": cv2.COLOR_YUV2BGR_NV12}


def jpeg_cut_short(data: bytes) -> bool:
    """Whether a JPEG file ends before its end-of-image marker (a copy or download stopped midway).

    The marker segments are walked to the first scan; from there the first FF D9 is the end of the image: a
    scan's data never holds one (an FF in it is followed by 00 or a restart marker), and neither does what lies
    between a progressive JPEG's scans. An EXIF thumbnail's end (in a segment before the scan) and what a
    motion photo appends after the end (its video) are not taken for it. Not a JPEG: False (FFmpeg judges).
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return False  # not where a marker must be: FFmpeg says what it makes of it
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            at += 2
        elif marker == 0xD9:
            return False
        else:
            length = int.from_bytes(data[at + 2 : at + 4], "big")
            if marker == 0xDA:  # the first scan
                return data.find(b"\xff\xd9", at + 2 + length) < 0
            at += 2 + length
    return True  # the file ends among its headers


def boxes_whole(path: str) -> bool:
    """Whether a local MP4 or MOV's top-level boxes follow one another to the file's last byte, its index (`moov`)
    and data (`mdat`) among them: a file cut short ends within one. An archivist's trial had one whose index was
    damaged called "truncated"."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            kinds, end = top_level_boxes(f, size)
    except (OSError, struct.error):
        return False
    return end == size and {b"moov", b"mdat"} <= set(kinds)


def to_bgr(av_frame: av.VideoFrame) -> np.ndarray:
    """BGR uint8 image. 8-bit 4:2:0 in limited range by OpenCV's BT.601 formula (several times faster than
    libswscale), which `to_yuv420p` takes back, the frame's own matrix notwithstanding; the rest by libswscale,
    by the frame's own matrix and range (OpenCV's limited-range formula clipped a full-range frame's darkest and
    brightest levels). `Colour` labels the output accordingly."""
    if by_opencv(av_frame):
        planes = av_frame.to_ndarray()  # (h*3/2, w): the luma plane, then chroma, their padding removed
        return cv2.cvtColor(planes, YUV420_TO_BGR[av_frame.format.name])
    if may_be_transparent(av_frame.format):
        # Laid over black: dropping the alpha channel showed what lay under a transparent part (a cut-out's old
        # background, an edit's hidden layer), which a video cannot hide otherwise.
        bgra = av_frame.to_ndarray(format="bgra")
        alpha = cv2.cvtColor(bgra[:, :, 3], cv2.COLOR_GRAY2BGR)
        return cv2.multiply(bgra[:, :, :3], alpha, scale=1 / 255)
    return av_frame.to_ndarray(format="bgr24")


def may_be_transparent(pixel_format: av.VideoFormat) -> bool:
    """Whether frames in this pixel format may have transparent parts: an alpha channel, or a palette (a PNG's
    palette holds each colour's transparency)."""
    return pixel_format.has_palette or any(component.is_alpha for component in pixel_format.components)


def by_opencv(av_frame: av.VideoFrame) -> bool:
    """Whether `to_bgr` turns the frame by OpenCV's BT.601 formula (it keeps the frame's values through to the
    output), rather than by libswscale and the frame's own matrix."""
    return (av_frame.format.name in YUV420_TO_BGR and av_frame.color_range != FULL_RANGE
            and av_frame.width % 2 == 0 and av_frame.height % 2 == 0)


Orientation = tuple[int, int, int, int]


# A photo's EXIF orientation (1 to 8) as the display matrix FFmpeg gives it (checked against OpenCV's imread).
EXIF_ORIENTATION = {1: None, 2: (-1, 0, 0, 1), 3: (-1, 0, 0, -1), 4: (1, 0, 0, -1), 5: (0, 1, 1, 0),
                    6: (0, 1, -1, 0), 7: (0, -1, -1, 0), 8: (0, -1, 1, 0)}


def display_matrix(av_frame: av.VideoFrame, source: str | None = None) -> Orientation | None:
    """The linear part (a, b, c, d) of the frame's display matrix, each -1, 0 or 1; None when untagged.

    FFmpeg's convention (libavutil/display.h): a pixel at (x, y) is shown at (a*x + c*y, b*x + d*y),
    moved back into the picture. `source`: the file the frame is from, whose EXIF orientation says it where
    PyAV cannot read the frame's side data.
    """
    try:
        # Looked up by its type: PyAV 18.1.1 iterates the side data's types (a Mapping), 18.1.0 the entries.
        matrix = av_frame.side_data.get(SideDataType.DISPLAYMATRIX)
    except ValueError:
        # PyAV 18 names no side data newer than itself, and then reads none: FFmpeg 8.1 gives a photo's EXIF
        # block as a frame's side data (type 31), and every phone photo failed as an internal error.
        return exif_orientation(source)
    if matrix is None:
        return None
    a, b, _, c, d, *_ = struct.unpack("<9i", bytes(matrix))
    # Cameras write right angles and mirrors only; any other angle is taken to the nearest one.
    if abs(a) + abs(d) >= abs(b) + abs(c):
        return (_sign(a), 0, 0, _sign(d))
    return (0, _sign(b), _sign(c), 0)


@functools.lru_cache(maxsize=16)
def exif_orientation(source: str | None) -> Orientation | None:
    """A local image file's turn by its EXIF orientation; None where it has none. A source that is no image
    file Pillow reads (a video, a URL) is refused: guessed upright, a turned picture's persons would lie on
    their side, which the detector misses."""
    from PIL import Image

    try:
        with Image.open(source) as image:
            return EXIF_ORIENTATION.get(image.getexif().get(0x0112, 1))
    except (OSError, ValueError, TypeError, AttributeError):
        raise InputError(f"cannot tell how {source} is turned: its frames carry side data PyAV does not know, "
                         "and it is no image file whose EXIF says it") from None


def _sign(value: int) -> int:
    return 1 if value >= 0 else -1


# cv2.flip codes: 1 mirrors left-right, 0 top-bottom, -1 both (a half turn).
_FLIP_CODE = {(1, 1): None, (-1, 1): 1, (1, -1): 0, (-1, -1): -1}


def upright(image: np.ndarray, orientation: Orientation | None) -> np.ndarray:
    """`image` as a player shows it, given the linear part of its display matrix."""
    if orientation is None:
        return image
    a, b, c, d = orientation
    if b == 0:  # no quarter turn: shown at x' = a*x, y' = d*y
        turned, flip = image, _FLIP_CODE[(a, d)]
    else:  # a quarter turn: shown at x' = c*y, y' = b*x, the transpose mirrored where c or b is negative
        turned, flip = cv2.transpose(image), _FLIP_CODE[(c, b)]
    return turned if flip is None else cv2.flip(turned, flip)


_ROTATE_CODE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def as_shown(image: np.ndarray, pixel_aspect: Fraction) -> np.ndarray:
    """`image` in square pixels, as a player shows it: stretched across where its pixels are wider than tall
    (`StreamInfo.pixel_aspect`), down where narrower. Squeezed as stored, persons are harder to find: at a PAL
    16:9 DVD's 64/45, the detector found 147 of the street clip's 200 persons (every 5th frame), against 168."""
    if pixel_aspect == 1:
        return image
    h, w = image.shape[:2]
    size = (round(w * pixel_aspect), h) if pixel_aspect > 1 else (w, round(h / pixel_aspect))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def far_from_square(pixel_aspect: Fraction) -> bool:
    """Whether pixels are so far from square that persons are looked for as stored too, not only as shown: a
    video tagged 1:2 or 4:1 (mis-tagged, or filmed so) showed its persons stretched past what the detector
    finds (a standing figure shown in all 75 frames at 1:2, a face in 56 of 75 at 4:1, the audit passing
    the first). Anamorphic video (PAL 16:9's 64:45, NTSC's 40:33) is looked at as shown only."""
    return not Fraction(2, 3) <= pixel_aspect <= Fraction(3, 2)


# Standard definition's 16:9 pixel aspects (PAL 576 lines, NTSC 480), by a frame's height.
WIDE_SD_PIXEL_ASPECT = {576: Fraction(64, 45), 480: Fraction(32, 27)}


def wide_tag_lost(shape: tuple[int, ...], pixel_aspect: Fraction) -> Fraction | None:
    """The pixel aspect a standard-definition frame in square pixels (720 or 704 by 576 or 480) would have as 16:9
    video, whose tag a copy lost (a DVD's or a capture card's); None for any other frame. Shown so, its persons
    are 1.42 times as tall as they are, thinner than the detector finds: a walker was found in 6 of 75 frames (a
    user's trial, the audit passing it); looked at as a 16:9 player shows it, in every one."""
    h, w = shape[:2]
    return WIDE_SD_PIXEL_ASPECT.get(h) if pixel_aspect == 1 and w in (704, 720) else None


def other_looks(shape: tuple[int, ...], pixel_aspect: Fraction) -> tuple[Fraction, ...]:
    """The pixel aspects a frame is looked at with besides its own (`as_shown`), the persons of every look kept:
    as stored too where its pixels are far from square (`far_from_square`), as 16:9 too where a standard-definition
    frame's tag may have been lost (`wide_tag_lost`)."""
    wide = wide_tag_lost(shape, pixel_aspect)
    return ((Fraction(1),) if far_from_square(pixel_aspect) else ()) + ((wide,) if wide is not None else ())


def turn(image: np.ndarray, degrees: int) -> np.ndarray:
    """`image` turned clockwise by 0, 90, 180 or 270 degrees."""
    return image if degrees == 0 else cv2.rotate(image, _ROTATE_CODE[degrees])


class HeldElsewhere:
    """The lock of an output whose owner (the launcher) took it for this writer."""

    def acquire(self) -> HeldElsewhere:
        return self

    def release(self) -> None:
        pass


def claim_output(path: Path, lock: bool = True, partials: tuple[Path, ...] = (),
                 keep: tuple[Path, ...] | None = None) -> FileLock | HeldElsewhere:
    """Checks that `path` can be written and takes its lock (`lock=False`: the caller holds it);
    OutputError, one line, if not. Taking the lock, it also sets aside an earlier run's partial files
    (`set_aside`): the video's, and the `partials` given (its metadata's). `keep`: a live camera's earlier
    recording is set aside too, the video and these files with it (its metadata), under one number: restarted,
    an engine wrote a camera's recording of hours over with its first seconds, without a word (an operator's
    trial). A file's output is replaced, as a command run again is expected to."""
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
    refuse_unreplaceable(path)
    if not lock:
        return HeldElsewhere()
    claimed = FileLock(output_lock_path(path))
    try:
        claimed.acquire()
    except LockBusy as busy:
        raise OutputError(f"cannot write {path}: another anonengine is writing it{busy.owner}") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    earlier = [("an earlier run's {}", [partial]) for partial in (partial_path(path), *partials)]
    if keep is not None:  # this engine's too, a camera detached and attached again
        earlier.append(("{}, an earlier recording,", [path, *keep]))
    for what, files in earlier:
        try:
            set_aside(*files, what=what)
        except OSError as exc:
            claimed.release()
            raise OutputError(f"cannot write {path}: cannot keep an earlier {files[0].name}: {exc.strerror}") from None
    return claimed


def earlier_recording(metadata: str | None, kept: bool, segments: bool = False) -> tuple[Path, ...] | None:
    """`claim_output`'s `keep`: where an earlier recording at the output's name is `kept` (a live camera's), what is
    kept with its video: its metadata. None where the output is replaced (a file's, run again), and with `segments`
    (`encoder.keep_segments`: the segments are the recording, a flat file of that name none of its own; an earlier
    run's was renamed for nothing)."""
    if not kept or segments:
        return None
    return (Path(metadata),) if metadata else ()


def refuse_unreplaceable(path: Path, what: str = "") -> None:
    """OutputError, one line, where `path` is no file a finished output may be renamed over: a folder (else
    only the final rename would fail, after all the work), a link (it would become a file) or a device,
    pipe or socket (run as root, /dev/null became a video file)."""
    if path.is_dir():
        raise OutputError(f"cannot write {what}{path}: it is a folder")
    if path.is_symlink():
        raise OutputError(f"cannot write {what}{path}: it is a symbolic link (give the file it points to, "
                          f"{path.resolve()})")
    if path.exists() and not path.is_file():
        raise OutputError(f"cannot write {what}{path}: it is not a regular file (a device, a pipe or a socket)")


def set_aside(path: Path, *together: Path, what: str = "an earlier run's {}") -> Path | None:
    """Moves an earlier run's file at `path` (an interrupted run's playable partial, which the user was
    told to find there) to the first free `STEM.N.SUFFIX`, so this run, which writes `path` and removes
    it if it fails, cannot destroy it; and the files `together` with it, under the same N, where there;
    said as `what` it is (of the file's name). Call with the output's lock held. Returns where `path` went."""
    if not path.exists():
        return None
    n = 1
    while any(numbered(file, n).exists() for file in (path, *together)):
        n += 1
    for file in (path, *together):
        if file.exists():
            os.replace(file, numbered(file, n))
            log.warning("%s is kept as %s", what.format(file.name), numbered(file, n))
    return numbered(path, n)


def numbered(path: Path, n: int) -> Path:
    return path.with_name(f"{path.stem}.{n}{path.suffix}")


class VideoWriter:
    """Encodes BGR frames to a video file at the given timestamps.

    Frames go to `<name>.partial<suffix>` and the file takes its final name only in `close()`, so a
    failed or interrupted run never leaves an output that looks complete. One writer at a time: the
    output's lock (`.NAME.lock` beside it) is held from the start until `close` or `abort`; with
    `lock=False` the caller holds it (the engine's launcher, for its encoders). `partials`: files written
    beside it (its metadata's partial), whose earlier run's copies are set aside with its own; `keep`: a live
    camera's, whose earlier recording is set aside too, these files with it (`claim_output`).

    The file's time 0 is its first frame, whatever the source's clock said: an MP4's frames at negative times
    (a stream cut from a TS) are muxed behind an edit list that starts at 0, and players and FFmpeg skipped
    them (21 of 75 frames of a TS starting at -0.82 s, lost without a word); a TS camera's clock at 1001 s
    gave a 3-s output an MP4 duration of 1004 s. `source_clock`: the frames keep the source's times (a
    recording's segments, joined by them). Either way `write` takes and returns times on the source's clock.
    `colour` and `pixel_aspect`: the source's, which the file is labelled with (`Colour`, `StreamInfo`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        rate: Fraction,
        time_base: Fraction,
        cfg: EncoderConfig | None = None,
        lock: bool = True,
        muxer_options: dict[str, str] | None = None,
        codec_options: dict[str, str] | None = None,
        comment: str | None = None,
        partials: tuple[Path, ...] = (),
        source_clock: bool = False,
        colour: Colour = Colour(),
        pixel_aspect: Fraction = Fraction(1),
        keep: tuple[Path, ...] | None = None,
        said_as: str | os.PathLike | None = None,
    ) -> None:
        """`said_as`: what errors call the file (the output the user named, where this is a working file of it: a
        segment, a batch's staged video; a full disk named those hidden files)."""
        cfg = cfg or EncoderConfig()
        self.colour, self.pixel_aspect = colour, pixel_aspect
        self.origin: int | None = 0 if source_clock else None  # the source's time at the file's 0 (the first frame's)
        self.muxer_options, self.comment = muxer_options or {}, comment
        self.codec_options = codec_options if codec_options is not None else encoder_options(cfg)
        self.path = Path(path)
        self.said = Path(said_as) if said_as is not None else self.path
        self.partial = partial_path(self.path)
        self.width, self.height = width, height
        self.lock = claim_output(self.path, lock, partials, keep)
        try:
            self._open(rate, time_base, cfg)
        except BaseException:  # an error, or a stop signal while the encoder starts
            self.partial.unlink(missing_ok=True)
            self.lock.release()
            raise
        self.frames = 0

    def _open(self, rate: Fraction, time_base: Fraction, cfg: EncoderConfig) -> None:
        width, height = self.width, self.height
        try:
            # FFmpeg opens the file only when the first packet is muxed, possibly after the whole clip
            # was decoded and detected; creating it now reports an unwritable path before any work.
            open(self.partial, "wb").close()
        except OSError as exc:
            raise OutputError(f"cannot write {self.said}: {exc.strerror}") from None
        try:
            self.container = av.open(str(self.partial), mode="w", format=container_format(self.path),
                                     options=self.muxer_options)
        except (av.FFmpegError, OSError) as exc:
            self.partial.unlink(missing_ok=True)
            raise OutputError(f"cannot write {self.said}: {_ffmpeg_reason(exc)}") from None
        if self.comment:
            self.container.metadata["comment"] = self.comment
        try:
            self.stream = self.container.add_stream(cfg.codec, rate=rate)
        except (av.FFmpegError, ValueError) as exc:
            self.abort()
            raise OutputError(f"encoder {cfg.codec!r} unavailable: {_ffmpeg_reason(exc)}") from None
        # 4:2:0 chroma covers 2x2 pixels, so encoders need even sizes: an odd width or height is padded by
        # repeating the last column or row (one pixel more in the output), never refused.
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        # Pts given to `write` count in this time base. The muxer may change the stream's time base
        # when it writes the header (MP4 raises 1/1000 to 1/16000), so frames must not take theirs from it.
        self.time_base = time_base
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        self.stream.options = self.codec_options
        if cfg.keyframe_interval:
            self.stream.codec_context.gop_size = cfg.keyframe_interval
        if cfg.threads:
            self.stream.codec_context.thread_count = cfg.threads
        self.colour.tag(self.stream.codec_context)
        if self.pixel_aspect != 1:
            self.stream.codec_context.sample_aspect_ratio = self.pixel_aspect
        try:
            # FFmpeg opens an encoder at the first frame; opening it now reports a missing GPU or an
            # option value the encoder refuses before any frame was decoded and detected.
            self.stream.codec_context.open()
        except (av.FFmpegError, OSError, ValueError) as exc:
            self.abort()
            raise OutputError(f"encoder {cfg.codec!r} cannot start: {_ffmpeg_reason(exc)}") from None
        self.frames = 0

    def write(self, image: np.ndarray, pts: int) -> list[int]:
        """Encodes a frame; returns the pts of the frames the encoder let out (and muxed) meanwhile."""
        frame = to_yuv420p(image, self.stream.width, self.stream.height)
        if self.origin is None:
            self.origin = pts
        frame.pts = pts - self.origin
        frame.time_base = self.time_base
        self.frames += 1
        return self._mux(self.stream.encode(frame))

    def _mux(self, packets: list[av.Packet]) -> list[int]:
        muxed = [packet.pts + self.origin for packet in packets]  # read before muxing, which rescales them
        try:
            self.container.mux(packets)
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.said}: {_ffmpeg_reason(exc)}") from None
        return muxed

    def close(self, complete: bool = True) -> Path:
        """Flushes the encoder and finalises the container, which is then playable.

        `complete`: the file takes its final name. Otherwise (a run stopped before the end of its source)
        it keeps its `.partial` name, so it cannot pass for the whole video. Returns where it is.
        """
        try:
            self.container.mux(self.stream.encode(None))
            self.container.close()
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise OutputError(f"cannot finish {self.said}: {_ffmpeg_reason(exc)}") from None
        try:
            if not complete:
                return self.partial
            os.replace(self.partial, self.path)
            return self.path
        finally:
            self.lock.release()

    def abort(self) -> None:
        """Closes without finalising and removes the partial file."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - the file is deleted next; its state no longer matters
            pass
        self.partial.unlink(missing_ok=True)
        self.lock.release()


@dataclass
class Playlist:
    """What an HLS playlist lists: its segments (each `(where, after a discontinuity, seconds)`), or the playlists
    of a playlist of playlists (one for each bit rate); and whether it ends (`#EXT-X-ENDLIST`: none is added)."""

    segments: list[tuple[Recorded, bool, float | None]]
    variants: list[Recorded]
    ends: bool

    @classmethod
    def read(cls, where: Recorded) -> Playlist:
        playlist, after_break, variant_next, seconds = cls([], [], False), False, False, None
        for line in map(str.strip, where.text().splitlines()):
            if line.startswith("#EXT-X-DISCONTINUITY"):
                after_break = True
            elif line.startswith("#EXT-X-STREAM-INF"):
                variant_next = True
            elif line.startswith("#EXTINF:"):
                with contextlib.suppress(ValueError):
                    seconds = float(line[len("#EXTINF:"):].split(",")[0])
            elif line.startswith("#EXT-X-ENDLIST"):
                playlist.ends = True
            elif line and not line.startswith("#"):
                if variant_next:
                    playlist.variants.append(where.beside(line))
                else:
                    playlist.segments.append((where.beside(line), after_break, seconds))
                after_break, variant_next, seconds = False, False, None
        return playlist


class Unreadable(Exception):
    """A recording read again apart from its reader (`Recorded`) could not be: why."""


@dataclass(frozen=True)
class Recorded:
    """A recording's file, or its URL on a web server (http, https), read again apart from its reader, as FFmpeg
    reads it (a server's self-signed certificate, credentials in the URL: Python's own client refused both, and
    the check was skipped without a word)."""

    location: str
    cfg: SourcesConfig

    @property
    def remote(self) -> bool:
        return URL_SCHEME.match(self.location) is not None

    def beside(self, name: str) -> Recorded:
        """What a playlist names: a URL as it is, or relative to the playlist, as FFmpeg resolves it."""
        if URL_SCHEME.match(name) or not self.remote:
            return Recorded(name if URL_SCHEME.match(name) else str(Path(self.location).parent / name), self.cfg)
        return Recorded(urllib.parse.urljoin(self.location, name), self.cfg)

    def text(self) -> str:
        """Its content (a playlist) as text, up to NEW_STREAM_PROBE_BYTES."""
        try:
            if not self.remote:
                return Path(self.location).read_text(errors="replace")
            with self.open("data") as data:
                kept, size = [], 0
                for packet in data.demux():
                    kept.append(bytes(packet))
                    size += packet.size
                    if size >= NEW_STREAM_PROBE_BYTES:
                        break
                return b"".join(kept).decode(errors="replace")
        except (av.FFmpegError, OSError) as exc:
            raise self._unreadable(exc) from None

    def _unreadable(self, exc: Exception) -> Unreadable:
        reason = _ffmpeg_reason(exc) if isinstance(exc, av.FFmpegError) else exc
        return Unreadable(f"{self.location} could not be read again: {reason}")

    def open(self, fmt: str | None = None, options: dict[str, str] | None = None) -> av.container.InputContainer:
        if not self.remote:
            return av.open(self.location, format=fmt, options=options or {})
        # No limit on the whole open, only on a stalled read: a web server without byte ranges is read from the
        # start up to a probe's place, which on a slow link outlasts any such limit (PyAV's stopped it without an
        # error, the probe listing only the streams it had seen).
        return av.open(self.location, format=fmt, options={"rw_timeout": str(int(self.cfg.stall_s * 1e6)),
                                                           **(options or {})})

    def video_ids(self) -> set[int]:
        try:
            with self.open() as opened:
                return {stream.id for stream in opened.streams.video}
        except (av.FFmpegError, OSError) as exc:
            raise self._unreadable(exc) from None

    def new_stream_in_end(self, position: int, listed: set[int]) -> bool:
        """Whether this MPEG-TS from byte `position` on holds video of a stream whose id is not `listed`, going on
        for NEW_STREAM_PACKETS (a second program begun midway, which ends with the listed one, is not). Probed as
        far as it goes (up to NEW_STREAM_PROBE_BYTES: an audio track may run on for seconds past the video, past
        what FFmpeg probes by default). On a web server that serves no byte ranges, FFmpeg reads its way there."""
        try:
            size = NEW_STREAM_PROBE_BYTES if self.remote else os.path.getsize(self.location) - position
            options = {"skip_initial_bytes": str(position), "analyzeduration": str(2**62),
                       "probesize": str(min(max(size, 1), NEW_STREAM_PROBE_BYTES))}
            with self.open("mpegts", options) as end:
                new = [stream for stream in end.streams.video if stream.id not in listed]
                packets = (packet for packet in end.demux(new[0]) if packet.size) if new else iter(())
                return sum(1 for _ in itertools.islice(packets, NEW_STREAM_PACKETS)) == NEW_STREAM_PACKETS
        except IndexError:
            return False
        except (av.FFmpegError, OSError) as exc:
            raise self._unreadable(exc) from None


def frame_rate(stream) -> Fraction:
    """The rate a video's frames come at, where they come. FFmpeg's average counts the gaps: a recording paused
    for an hour (a camera that records on motion) averaged 0.02 frames/s, and its output's last frame lasted
    48 s, the rate's one frame. The rate of its frames' spacing (`guessed_rate`, FFmpeg's from the first
    frames) is taken where it is more than TYPICAL_OVER_AVERAGE times the average."""
    average, spacing = stream.average_rate, stream.guessed_rate
    if spacing and (not average or spacing > TYPICAL_OVER_AVERAGE * average):
        return Fraction(spacing)
    return Fraction(average or Fraction(25))


def copied_video_stream(out: av.container.OutputContainer, template, rate: Fraction | None = None):
    """A stream of `out` for `template`'s packets as they are (no re-encoding), declaring `rate` (default the
    template's average). PyAV's copy of a template takes its decoder's frame rate, which FFmpeg sets to one tick
    of the time base: a Matroska file declared 12800 frames/s (its default duration) for a 25-frame/s video."""
    stream = out.add_stream_from_template(template)
    rate = rate or template.average_rate or template.guessed_rate
    if rate:
        stream.codec_context.framerate = rate
    return stream


def to_yuv420p(image: np.ndarray, width: int, height: int) -> av.VideoFrame:
    """A yuv420p frame of the (even) encoder size from a BGR image, odd edges repeated to fill it."""
    pad_y, pad_x = height - image.shape[0], width - image.shape[1]
    if pad_x or pad_y:
        image = cv2.copyMakeBorder(image, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
    # OpenCV's I420 holds each chroma plane as (h/2) x (w/2) bytes back to back. Copied plane by plane
    # into FFmpeg's buffers, whose rows have their own stride: read as one (h*3/2, w) block, the chroma
    # of a height that is 2 modulo 4 starts mid-row and the picture's colours shear.
    i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    frame = av.VideoFrame(width, height, "yuv420p")
    start = 0
    for plane in frame.planes:
        size = plane.width * plane.height
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        rows[:, : plane.width] = i420[start : start + size].reshape(plane.height, plane.width)
        start += size
    return frame


def encoder_options(cfg: EncoderConfig) -> dict[str, str]:
    """FFmpeg options for constant quality, capped by `max_bitrate_kbps` when set."""
    if cfg.is_nvenc:
        options = {"preset": cfg.speed_preset, "rc": "vbr", "cq": str(cfg.crf), "b": "0"}
    elif cfg.codec.startswith("libx26"):
        options = {"preset": cfg.speed_preset, "crf": str(cfg.crf)}
        if cfg.codec == "libx265":
            options["x265-params"] = "log-level=error"  # else x265 prints its settings for every file
    else:
        return {}
    if cfg.max_bitrate_kbps:
        options["maxrate"] = f"{cfg.max_bitrate_kbps}k"
        options["bufsize"] = f"{2 * cfg.max_bitrate_kbps}k"
    return options


def container_format(path: Path) -> str:
    """The container an output named `path` is written in: as its suffix says (`paths.OUTPUT_CONTAINERS`,
    which the configuration holds outputs to), MP4 for a working file's."""
    return OUTPUT_CONTAINERS.get(Path(path).suffix.lower(), "mp4")


def _ffmpeg_reason(exc: Exception, timed_out: str | None = None) -> str:
    """FFmpeg's words for a failure; `timed_out`: what it means where PyAV's timeout ended it (the timeout interrupts
    FFmpeg, which then says "Immediate exit requested", all an operator saw of a stream that stopped sending)."""
    if timed_out is not None and isinstance(exc, av.ExitError):
        return timed_out
    reason = getattr(exc, "strerror", None) or str(exc)
    return str(reason).split(": '")[0].strip()
