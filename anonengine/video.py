"""Video in and out with PyAV: decoded frames keep their timestamps, outputs appear only when complete."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from anonengine.config import EncoderConfig
from anonengine.errors import InputError, OutputError

URL_PATTERN = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://", re.IGNORECASE)


@dataclass
class Frame:
    """One decoded frame of a camera; `pts` counts `time_base` units, `seq` counts frames from 0."""

    camera: str
    seq: int
    pts: int
    time_base: Fraction
    image: np.ndarray

    @property
    def time(self) -> float:
        return float(self.pts * self.time_base)


@dataclass(frozen=True)
class StreamInfo:
    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    frames: int  # container's count; 0 when unknown (live sources, some files)
    live: bool


def open_source(source: str) -> tuple[av.container.InputContainer, bool]:
    """Opens a file path, a webcam index (`0` = first V4L2 device) or a stream URL; returns (container, live)."""
    try:
        if source.isdigit():
            return av.open(f"/dev/video{source}", format="v4l2"), True
        if URL_PATTERN.match(source):
            options = {"rtsp_transport": "tcp", "timeout": "5000000"} if source.lower().startswith("rtsp") else {}
            return av.open(source, options=options, timeout=10.0), True
        path = Path(source)
        if not path.exists():
            raise InputError(f"video source not found: {source}")
        if not path.is_file():
            raise InputError(f"video source is not a file: {source}")
        return av.open(str(path)), False
    except av.FFmpegError as exc:
        raise InputError(f"cannot open video {source}: {_ffmpeg_reason(exc)}") from None


class VideoReader:
    """Decodes the first video stream of a source into BGR frames with their presentation timestamps."""

    def __init__(self, source: str, camera: str = "cam0") -> None:
        self.source = source
        self.camera = camera
        self.container, live = open_source(source)
        if not self.container.streams.video:
            self.container.close()
            raise InputError(f"no video stream in {source}")
        self.stream = self.container.streams.video[0]
        # AUTO adds frame threading to FFmpeg's default slice threading: much faster decode.
        self.stream.thread_type = "AUTO"
        ctx = self.stream.codec_context
        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
        if not ctx.width or not ctx.height:
            self.container.close()
            raise InputError(f"cannot decode {source}: video stream has no frame size")
        self.info = StreamInfo(
            width=ctx.width,
            height=ctx.height,
            rate=Fraction(rate),
            time_base=Fraction(self.stream.time_base or Fraction(1, 90000)),
            frames=int(self.stream.frames or 0),
            live=live,
        )

    def __iter__(self) -> Iterator[Frame]:
        seq = 0
        frame_ticks = max(1, round(1 / (self.info.rate * self.info.time_base)))
        last_pts = None
        try:
            for packet in self.container.demux(self.stream):
                # FFmpeg flags a packet cut short by the end of the file as corrupt and decodes what is
                # there without an error. A fragmented MP4 declares no frame count, so for a file this
                # flag is the only sign that it was truncated. Live sources lose packets and go on.
                if packet.is_corrupt and not self.info.live:
                    raise InputError(f"{self.source} is truncated or corrupt at frame {seq}")
                for av_frame in packet.decode():
                    pts = av_frame.pts
                    if pts is None:  # some streams carry no timestamps: count frames at the nominal rate
                        pts = 0 if last_pts is None else last_pts + frame_ticks
                    last_pts = pts
                    yield Frame(self.camera, seq, int(pts), self.info.time_base, to_bgr(av_frame))
                    seq += 1
        except av.FFmpegError as exc:
            raise InputError(f"cannot decode {self.source} at frame {seq}: {_ffmpeg_reason(exc)}") from None
        if seq == 0:
            raise InputError(f"no decodable video frames in {self.source}")
        if not self.info.live and self.info.frames and seq < self.info.frames:
            raise InputError(
                f"{self.source} is truncated: {seq} of {self.info.frames} frames could be decoded"
            )

    def close(self) -> None:
        self.container.close()


def to_bgr(av_frame: av.VideoFrame) -> np.ndarray:
    """BGR uint8 image; for yuv420p, OpenCV's conversion is several times faster than libswscale's."""
    if av_frame.format.name == "yuv420p" and av_frame.width % 2 == 0 and av_frame.height % 2 == 0:
        planes = av_frame.to_ndarray()  # (h*3/2, w) I420 with the plane padding removed
        return cv2.cvtColor(planes, cv2.COLOR_YUV2BGR_I420)
    return av_frame.to_ndarray(format="bgr24")


class VideoWriter:
    """Encodes BGR frames to a video file at the given timestamps.

    Frames go to `<name>.partial<suffix>` and the file takes its final name only in `close()`, so a
    failed or interrupted run never leaves an output that looks complete.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        rate: Fraction,
        time_base: Fraction,
        cfg: EncoderConfig | None = None,
    ) -> None:
        cfg = cfg or EncoderConfig()
        self.path = Path(path)
        self.partial = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix or '.mp4'}")
        if width % 2 or height % 2:
            raise OutputError(f"cannot encode {width}x{height}: H.264 4:2:0 needs even width and height")
        if not self.path.parent.is_dir():
            raise OutputError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        if self.path.is_dir():  # else only the final rename in close() would fail, after all the work
            raise OutputError(f"cannot write {self.path}: it is a folder")
        try:
            # FFmpeg opens the file only when the first packet is muxed, possibly after the whole clip
            # was decoded and detected; creating it now reports an unwritable path before any work.
            open(self.partial, "wb").close()
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from None
        try:
            self.container = av.open(str(self.partial), mode="w", format=_format_for(self.path))
        except (av.FFmpegError, OSError) as exc:
            self.partial.unlink(missing_ok=True)
            raise OutputError(f"cannot write {self.path}: {_ffmpeg_reason(exc)}") from None
        try:
            self.stream = self.container.add_stream(cfg.codec, rate=rate)
        except (av.FFmpegError, ValueError) as exc:
            self.abort()
            raise OutputError(f"encoder {cfg.codec!r} unavailable: {_ffmpeg_reason(exc)}") from None
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        # Pts given to `write` count in this time base. The muxer may change the stream's time base
        # when it writes the header (MP4 raises 1/1000 to 1/16000), so frames must not take theirs from it.
        self.time_base = time_base
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        self.stream.options = encoder_options(cfg)
        if cfg.keyframe_interval:
            self.stream.codec_context.gop_size = cfg.keyframe_interval
        if cfg.threads:
            self.stream.codec_context.thread_count = cfg.threads
        try:
            # FFmpeg opens an encoder at the first frame; opening it now reports a missing GPU or an
            # option value the encoder refuses before any frame was decoded and detected.
            self.stream.codec_context.open()
        except (av.FFmpegError, OSError, ValueError) as exc:
            self.abort()
            raise OutputError(f"encoder {cfg.codec!r} cannot start: {_ffmpeg_reason(exc)}") from None
        self.frames = 0

    def write(self, image: np.ndarray, pts: int) -> None:
        frame = av.VideoFrame.from_numpy_buffer(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        frame.pts = pts
        frame.time_base = self.time_base
        try:
            self.container.mux(self.stream.encode(frame))
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.path}: {_ffmpeg_reason(exc)}") from None
        self.frames += 1

    def close(self) -> Path:
        """Flushes the encoder, finalises the container and gives the file its final name."""
        try:
            self.container.mux(self.stream.encode(None))
            self.container.close()
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise OutputError(f"cannot finish {self.path}: {_ffmpeg_reason(exc)}") from None
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        """Closes without finalising and removes the partial file."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - the file is deleted next; its state no longer matters
            pass
        self.partial.unlink(missing_ok=True)


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


def _format_for(path: Path) -> str:
    return {".mkv": "matroska", ".mov": "mov", ".avi": "avi", ".ts": "mpegts"}.get(path.suffix.lower(), "mp4")


def _ffmpeg_reason(exc: Exception) -> str:
    reason = getattr(exc, "strerror", None) or str(exc)
    return str(reason).split(": '")[0].strip()
