"""Recording in segments: what survives an encoder's death.

A camera's anonymized frames go to fragmented-MP4 segments of about `encoder.segment_s`, one fragment a
frame, so a frame is on disk, and the file playable up to it, as soon as it leaves the encoder (and the
next one is muxed). The caller learns which frames are durable and only then lets their slots go: until
then a restarted encoder gets them again. The codec runs without B-frames, so frames leave the encoder
in order and a durable frame is followed by nothing it depends on; its look-ahead is cut to fit the frames
the engine can hold (slots held past that close the segment early, never deadlock the rings).

Each segment names its run, camera and first frame in its own header (written before any frame), so a
restarted encoder finds what its run has on disk: it repairs the segment it was writing (torn last
fragment dropped), skips the frames already there, and writes the rest to a new segment.

At the end, the segments are joined into the output by remuxing (no re-encoding) and removed; with
`keep_segments` they are the recording (an NVR), pruned by age and size, oldest first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np

from anonengine.config import EncoderConfig
from anonengine.errors import OutputError
from anonengine.paths import partial_metadata_path, partial_path
from anonengine.video import (
    HeldElsewhere,
    StreamInfo,
    VideoWriter,
    claim_output,
    container_format,
    copied_video_stream,
    earlier_recording,
    encoder_options,
)

log = logging.getLogger(__name__)

SEGMENT_MUXER_OPTIONS = {"movflags": "frag_every_frame+empty_moov+default_base_moof", "flush_packets": "1"}
TAG_PREFIX = "anonengine-segment "
# x264's rc-lookahead per preset: frames it holds before letting one out.
X264_LOOKAHEAD = {"ultrafast": 0, "superfast": 0, "veryfast": 10, "faster": 20, "fast": 30, "medium": 40,
                  "slow": 50, "slower": 60, "veryslow": 60, "placebo": 60}  # fmt: skip


def segment_codec_options(cfg: EncoderConfig, max_pending: int) -> dict[str, str]:
    """The encoder's options for segments: no B-frames, and a look-ahead the held frames can cover
    (the encoder's delay is its look-ahead plus one frame, plus one more until the muxer writes it)."""
    options = encoder_options(cfg)
    if cfg.codec.startswith("libx26"):
        lookahead = max(1, min(X264_LOOKAHEAD.get(cfg.speed_preset, 40), max_pending - 3))
        key = "x264-params" if cfg.codec == "libx264" else "x265-params"
        options[key] = ":".join(filter(None, (options.get(key), "bframes=0", f"rc-lookahead={lookahead}")))
    elif cfg.is_nvenc:
        options["bf"] = "0"
    return options


def segments_folder(output: Path, keep: bool) -> Path:
    """Where an output's segments go: the recording itself (`rec/cam1/`) when kept, else a hidden working
    folder beside the output."""
    return output.with_suffix("") if keep else output.with_name(f".{output.name}.segments")


@dataclass
class Segment:
    """A segment file and what its header says of it."""

    path: Path
    run: str
    camera: str
    first_seq: int
    first_pts: int
    time_base: Fraction

    @property
    def counter(self) -> int:
        return segment_counter(self.path)

    @property
    def metadata(self) -> Path:
        return metadata_path(self.path)

    def packets(self, opened: av.container.InputContainer | None = None) -> Iterator[tuple[av.Packet, int, int]]:
        """The packets that reached the disk whole, each with its pts and dts in the stream's time base; from
        the segment `opened` already, if given (opening one parses every fragment's header: 30 ms for 200
        frames here)."""
        try:
            with contextlib.nullcontext(opened) if opened is not None else av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                origin = None
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue
                    if packet.is_corrupt:
                        return  # the fragment being written when the encoder died
                    origin = packet.pts if origin is None else origin
                    yield packet, self._source_time(packet.pts - origin, packet.time_base), self._source_time(
                        (packet.dts if packet.dts is not None else packet.pts) - origin, packet.time_base)
        except (av.FFmpegError, OSError, IndexError):
            return  # cut short (killed mid-write): what came before stands

    def _source_time(self, ticks: int, time_base: Fraction) -> int:
        return self.first_pts + round(ticks * time_base / self.time_base)


def segment_counter(path: Path) -> int:
    try:
        return int(path.name.split(".")[0].rsplit("-", 1)[-1])
    except ValueError:
        return -1


def metadata_path(segment: Path) -> Path:
    return segment.with_name(segment.name.split(".")[0] + ".jsonl")


def read_segment(path: Path) -> Segment | None:
    """The segment's header, or None if the file is not a segment (or was killed before its header)."""
    try:
        with av.open(str(path)) as container:
            comment = container.metadata.get("comment", "")
    except (av.FFmpegError, OSError):
        return None
    if not comment.startswith(TAG_PREFIX):
        return None
    try:
        tag = json.loads(comment[len(TAG_PREFIX):])
        return Segment(path, tag["run"], tag["camera"], int(tag["first_seq"]), int(tag["first_pts"]),
                       Fraction(tag["time_base"]))
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def list_segments(folder: Path) -> list[Segment]:
    """The segments in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [read_segment(path) for path in folder.glob("*.mp4")]
    return sorted((s for s in found if s is not None), key=lambda s: s.counter)


def join_segments(segments: list[Segment], output: Path, container: str = "mp4", rate: Fraction | None = None) -> int:
    """Remuxes the segments into one file of the `container` format (no re-encoding), dropping frames a later
    segment repeats; returns the frames written. The file's time 0 is its first frame (as `VideoWriter`'s).
    `rate`: the frame rate the file declares (`copied_video_stream`)."""
    written, last_pts, origin = 0, None, None
    with av.open(str(output), mode="w", format=container) as out:
        stream = None
        for segment in segments:
            with av.open(str(segment.path)) as opened:
                template = opened.streams.video[0]
                if stream is None:
                    stream = copied_video_stream(out, template, rate)
                    stream.time_base = segment.time_base
                    extradata = template.codec_context.extradata
                elif template.codec_context.extradata != extradata:
                    raise OutputError(f"cannot join {segment.path}: its encoder settings differ from the first segment's")
                for packet, pts, dts in segment.packets(opened):
                    if last_pts is not None and pts <= last_pts:
                        continue  # written by an encoder before it died, and again by the one after
                    # Its duration too goes to the source's time base with its pts: left in the segment's, an
                    # AVI's last frame (time base 1/25, against 1/12800) lasted 512 frames, 20 s of a 1.2-s clip.
                    duration = round(packet.duration * packet.time_base / segment.time_base) if packet.duration else 0
                    origin = pts if origin is None else origin
                    packet.stream = stream
                    packet.pts, packet.time_base = pts - origin, segment.time_base
                    packet.dts = dts - origin
                    packet.duration = duration
                    out.mux(packet)
                    last_pts = pts
                    written += 1
    return written


def join_metadata(segments: list[Segment], output: Path) -> None:
    records: dict[int, str] = {}
    for segment in segments:
        for line in _lines(segment.metadata):
            records.setdefault(json.loads(line)["index"], line)
    staged = output.with_name(f".{output.name}.joining")  # never a torn file under the output's name
    try:
        with open(staged, "w") as out:
            out.writelines(records[index] + "\n" for index in sorted(records))
        os.replace(staged, output)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def _lines(path: Path) -> list[str]:
    """A metadata file's whole lines (a torn last one, written as the encoder died, is not one)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    lines = text.split("\n")[:-1]  # whatever follows the last newline is torn
    good = []
    for line in lines:
        try:
            json.loads(line)["index"]
        except (ValueError, KeyError, TypeError):
            continue
        good.append(line)
    return good


@dataclass
class Pending:
    token: Any  # the caller's handle on the frame (the engine: its ring reference)
    seq: int
    pts: int
    record: dict | None
    obscured: bool = False


class SegmentedRecording:
    """One camera's recording in segments; `add` returns the frames that became durable.

    `run` tells this run's segments from those of an earlier one: a restarted encoder of the same run
    resumes them; a new run removes a dead run's working folder (its output is being written anew) or,
    with `keep_segments`, adds to the recording.
    """

    def __init__(self, output: str | os.PathLike, stream: StreamInfo, cfg: EncoderConfig, camera: str, run: str,
                 metadata: str | None = None, max_pending: int = 16, lock: bool = True) -> None:
        self.output, self.stream, self.cfg = Path(output), stream, cfg
        self.camera, self.run, self.metadata = camera, run, Path(metadata) if metadata else None
        self.max_pending = max(2, max_pending)
        self.folder = segments_folder(self.output, cfg.keep_segments)
        self.hold_lock = lock  # False: the caller holds the output's lock (see VideoWriter)
        self.lock = HeldElsewhere()  # until setup takes it
        self.codec_options = segment_codec_options(cfg, self.max_pending)
        self.writer: VideoWriter | None = None
        self.segment_first_pts = 0
        self.segment_meta = None
        self.pending: deque[Pending] = deque()
        self.muxed_last: int | None = None  # muxed, not on disk until the next packet is muxed
        self.on_disk: set[int] = set()
        self.durable_pts: int | None = None  # every frame up to here is in a segment of this run
        # Records are written in frame order, once a frame is on disk: up to here they are all there.
        self.recorded_through = -1
        self.frames = 0
        self.obscured = 0  # of `frames`, those obscured whole (a predecessor's: where their metadata says)
        self.pruned = 0  # segments retention removed, by this recording
        self.counter = 0
        self._cut_warned = False

    # --- lifecycle -----------------------------------------------------------------------------
    def setup(self) -> None:
        partials = (partial_metadata_path(self.metadata),) if self.metadata else ()
        metadata = str(self.metadata) if self.metadata else None
        keep = earlier_recording(metadata, self.stream.live, self.cfg.keep_segments)
        self.lock = claim_output(self.output, self.hold_lock, partials, keep)  # held here: no launcher (Procfile)
        try:
            self.folder.mkdir(exist_ok=True)
            self._recover()
        except OSError as exc:
            self.lock.release()
            raise OutputError(f"cannot write {self.folder}: {exc.strerror}") from None

    def _recover(self) -> None:
        for path in self.folder.glob("*.partial.mp4"):  # a segment being written when its encoder died
            segment = read_segment(path)
            if segment is None:
                path.unlink(missing_ok=True)  # killed before its header: it holds no frame
            elif segment.run == self.run or self.cfg.keep_segments:
                self._repair(segment)
        segments = list_segments(self.folder)
        if not self.cfg.keep_segments:
            for stale in [s for s in segments if s.run != self.run or s.camera != self.camera]:
                self._remove(stale)
        self.counter = 1 + max((segment_counter(p) for p in self.folder.glob("*.mp4")), default=0)
        ours = self._run_segments()
        for segment in ours[:-1]:
            self.frames += sum(1 for _ in segment.packets())
        if ours:
            last = [pts for _, pts, _ in ours[-1].packets()]  # read once: counted, and where it ends
            self.frames += len(last)
            self.durable_pts = max(last, default=None)
            for segment in ours[-2:]:
                for line in _lines(segment.metadata):
                    self.recorded_through = max(self.recorded_through, json.loads(line)["index"])
            # As `frame_record` writes it: a look for the words, not a parse of every line of a long run.
            self.obscured = sum('"obscured": true' in line for segment in ours for line in _lines(segment.metadata))
            log.info("%s: resuming the recording after %d frames on disk", self.camera, self.frames)

    def _run_segments(self) -> list[Segment]:
        """This run's segments of this camera, oldest first."""
        return [s for s in list_segments(self.folder) if s.run == self.run and s.camera == self.camera]

    def _repair(self, segment: Segment) -> None:
        """Rewrites a segment cut short by a kill with the frames that reached the disk whole."""
        final = segment.path.with_name(segment.path.name.replace(".partial", ""))
        staged = final.with_name(final.stem + ".repair.mp4")
        packets = list(segment.packets())
        if packets:
            with av.open(str(segment.path)) as source, av.open(
                    str(staged), "w", format="mp4", options=SEGMENT_MUXER_OPTIONS) as out:
                out.metadata["comment"] = source.metadata["comment"]
                stream = copied_video_stream(out, source.streams.video[0])
                for packet, _, _ in packets:
                    packet.stream = stream
                    out.mux(packet)
            os.replace(staged, final)
        segment.path.unlink(missing_ok=True)
        meta = metadata_path(segment.path)
        if meta.exists():  # a torn last record goes too
            metadata_path(final).write_text("".join(line + "\n" for line in _lines(meta)))
            if meta != metadata_path(final):
                meta.unlink()

    # --- writing -------------------------------------------------------------------------------
    def add(self, token, seq: int, pts: int, image: np.ndarray, record: dict | None, obscured: bool = False) -> list:
        """Encodes a frame (unless this run already has it on disk); returns the tokens of the frames
        that are now durable, in order. `obscured`: the frame went out obscured whole."""
        if self.durable_pts is not None and pts <= self.durable_pts:
            if seq > self.recorded_through:  # the video had it; its metadata died with the encoder, or was none
                self.obscured += obscured
                if record is not None:
                    self._record(record)
            return [token]
        if self.writer is not None and (pts - self.segment_first_pts) * self.stream.time_base >= self.cfg.segment_s:
            durable = self.cut()
        else:
            durable = []
        if self.writer is None:
            self._open_segment(seq, pts)
        self.pending.append(Pending(token, seq, pts, record, obscured))
        self._muxed(self.writer.write(image, pts))
        durable += self._take_durable()
        if len(self.pending) >= self.max_pending:
            if not self._cut_warned:
                self._cut_warned = True
                log.warning("%s: the encoder holds %d frames, more than the rings leave it: segments are cut "
                            "short (raise engine.ring_slots)", self.camera, len(self.pending))
            durable += self.cut()
        return durable

    def _open_segment(self, seq: int, pts: int) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.folder / f"{stamp}-{self.counter:08d}.mp4"
        self.counter += 1
        tag = {"run": self.run, "camera": self.camera, "first_seq": seq, "first_pts": pts,
               "time_base": str(self.stream.time_base)}
        self.writer = VideoWriter(path, self.stream.width, self.stream.height, self.stream.rate, self.stream.time_base,
                                  self.cfg, lock=False, muxer_options=SEGMENT_MUXER_OPTIONS,
                                  codec_options=self.codec_options, comment=TAG_PREFIX + json.dumps(tag),
                                  source_clock=True, colour=self.stream.colour,
                                  pixel_aspect=self.stream.pixel_aspect,
                                  said_as=None if self.cfg.keep_segments else self.output)
        self.segment_first_pts = pts
        if self.metadata is not None:
            try:
                self.segment_meta = open(metadata_path(path), "a")
            except OSError as exc:
                raise OutputError(f"cannot write {metadata_path(path)}: {exc.strerror}") from None

    def _muxed(self, pts_list: list[int]) -> None:
        for pts in pts_list:
            if self.muxed_last is not None:
                self.on_disk.add(self.muxed_last)
            self.muxed_last = pts

    def _take_durable(self) -> list:
        durable = []
        while self.pending and self.pending[0].pts in self.on_disk:
            frame = self.pending.popleft()
            self.on_disk.discard(frame.pts)
            if frame.record is not None:
                self._record(frame.record)
            self.durable_pts = frame.pts
            self.frames += 1
            self.obscured += frame.obscured
            durable.append(frame.token)
        return durable

    def _record(self, record: dict) -> None:
        meta = self.segment_meta
        try:
            if meta is None:  # a frame of the segment before a restart: its record joins the next segment's
                segments = self._run_segments()
                meta = open(segments[-1].metadata if segments else self.folder / "orphans.jsonl", "a")
            meta.write(json.dumps(record) + "\n")
            meta.flush()
        except OSError as exc:  # a full disk: one line, as the video's own writes say it
            if meta is self.segment_meta:
                self._close_segment_meta()  # its unwritten record would fail the close again
            raise OutputError(f"cannot write {getattr(meta, 'name', self.folder)}: {exc.strerror}") from None
        finally:
            if meta is not None and meta is not self.segment_meta:
                with contextlib.suppress(OSError):  # flushed, or failing already
                    meta.close()
        self.recorded_through = max(self.recorded_through, record["index"])

    def _close_segment_meta(self) -> None:
        meta, self.segment_meta = self.segment_meta, None
        if meta is None:
            return
        try:
            meta.close()
        except OSError as exc:  # its last records could not be written: the disk filled up
            with contextlib.suppress(OSError):
                meta.close()  # the file descriptor, which the failed flush left open
            raise OutputError(f"cannot write {meta.name}: {exc.strerror}") from None

    def cut(self) -> list:
        """Flushes the encoder and closes the open segment: every frame in it is durable."""
        writer, self.writer = self.writer, None
        if writer is None:
            return []
        path = writer.close()  # the muxer writes every remaining packet
        self.on_disk.update(p.pts for p in self.pending)
        if self.muxed_last is not None:
            self.on_disk.add(self.muxed_last)
        self.muxed_last = None
        durable = self._take_durable()
        self.on_disk.clear()
        self._close_segment_meta()
        if self.cfg.keep_segments:
            self._prune(keep=path)
        return durable

    # --- the end -------------------------------------------------------------------------------
    def close(self, complete: bool = True) -> Path | None:
        """Closes the open segment; joins the run's segments into the output (its `.partial` name when not
        `complete`) unless they are kept. Returns the recording, or None when it holds no frame."""
        try:
            self.cut()
            if self.cfg.keep_segments:
                return self.folder if self.frames else None
            ours = self._run_segments()
            if not self.frames:
                return None
            target = self.output if complete else partial_path(self.output)
            staged = partial_path(self.output).with_name(f".{self.output.name}.joining.mp4")
            try:
                join_segments(ours, staged, container_format(self.output), self.stream.rate)
                if self.metadata is not None:  # joined first: a full disk fails before the video takes its name
                    meta_target = self.metadata if complete else partial_metadata_path(self.metadata)
                    join_metadata(ours, meta_target)
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
            os.replace(staged, target)
            return target
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot finish {self.output}: {getattr(exc, 'strerror', None) or exc}") from None
        finally:
            if not self.cfg.keep_segments:
                shutil.rmtree(self.folder, ignore_errors=True)
            self.lock.release()

    def abort(self) -> None:
        """A failed stream: its frames are not an output. Kept segments stay (they are recordings)."""
        writer, self.writer = self.writer, None
        if writer is not None and self.cfg.keep_segments:
            writer.close()
        elif writer is not None:
            writer.abort()
        with contextlib.suppress(OutputError):  # a failed stream's metadata is not an output either
            self._close_segment_meta()
        if not self.cfg.keep_segments:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.lock.release()

    # --- retention -----------------------------------------------------------------------------
    def _prune(self, keep: Path) -> None:
        """Deletes the oldest closed segments while the camera's recording is older or larger than allowed."""
        hours, gb = self.cfg.retain_hours, self.cfg.retain_gb
        if not (hours or gb):
            return
        closed = sorted((p for p in self.folder.glob("*.mp4") if not p.name.endswith(".partial.mp4")),
                        key=segment_counter)
        sizes = {p: p.stat().st_size + (metadata_path(p).stat().st_size if metadata_path(p).exists() else 0)
                 for p in closed}
        total, now = sum(sizes.values()), time.time()
        for path in closed:
            if path == keep:
                break
            too_old = hours is not None and now - path.stat().st_mtime > hours * 3600
            too_big = gb is not None and total > gb * 1e9
            if not (too_old or too_big):
                break
            total -= sizes[path]
            path.unlink(missing_ok=True)
            metadata_path(path).unlink(missing_ok=True)
            log.info("%s: retention removed %s", self.camera, path.name)
            self.pruned += 1

    def _remove(self, segment: Segment) -> None:
        segment.path.unlink(missing_ok=True)
        segment.metadata.unlink(missing_ok=True)
