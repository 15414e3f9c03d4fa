"""A source's audio and container tags, carried to its anonymized video by remuxing (no re-encoding).

The anonymizer writes a video-only file. `carry_over` joins it with what else the source holds: its
container tags that say when and with what it was filmed (creation time, the camera's make and model:
`tags="basic"`; every tag but where it was filmed with `tags="all"`), and, with `audio="keep"`, its audio
streams, packet for packet. Audio is dropped by default:
voices identify people as well as faces do. Frames keep their source timestamps through the
anonymizer, so audio packets copied with theirs stay in sync.

One mechanism for every path: `--inline`, the engine (whose encoder joins its segments into the video
first) and batches all write the video, then call `carry_over`. A container that cannot hold the audio
unchanged (MOV: Opus, FLAC, Vorbis; MPEG-TS: PCM, FLAC, Vorbis, ALAC) is refused by `check_audio_fits`:
for a single file before any work, and by `carry_over` before it writes anything.
"""

from __future__ import annotations

import heapq
import io
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av

from anonengine.errors import AnonError, ConfigError, InputError, OutputError
from anonengine.paths import OUTPUT_CONTAINERS, partial_path
from anonengine.video import container_format, copied_video_stream, main_video

log = logging.getLogger(__name__)
# Audio packets the muxer refuses before it takes one, at most, before the audio is deemed not copyable at all (not
# damaged here and there): `_mux_in_time_order`.
DAMAGED_AUDIO_FIRST = 8

AudioPolicy = Literal["drop", "keep"]
TagPolicy = Literal["basic", "all", "none"]


@dataclass(frozen=True)
class CarryPolicy:
    """What of a source besides its video its anonymized copy takes: its audio, and which of its tags."""

    audio: AudioPolicy = "drop"
    tags: TagPolicy = "basic"


DEFAULT_CARRY = CarryPolicy()


# Written by the muxer itself (Matroska's as ENCODER); the source's values would describe the source's file, not ours.
MUXER_TAGS = frozenset({"major_brand", "minor_version", "compatible_brands", "encoder"})
# Keys that place the recording on a map: `location` (QuickTime's ©xyz, also as `location-eng`),
# `com.apple.quicktime.location.ISO6709`, Android's `com.android.gps...`, and the like.
LOCATION_KEY = re.compile(r"location|gps|iso6709|geo|latitude|longitude|coordinates|xyz", re.IGNORECASE)
# A value written as ISO 6709 coordinates (`+48.8584+002.2945/`, `+48.8584+002.2945+035.000/`), whatever its key.
ISO6709_VALUE = re.compile(r"^\s*[+-]\d{1,3}(\.\d+)?[+-]\d{1,3}(\.\d+)?([+-]\d+(\.\d+)?)?(CRS[^/]*)?/?\s*$")


def is_location_tag(key: str, value: str) -> bool:
    """True for a tag that says where the recording was made."""
    return bool(LOCATION_KEY.search(key) or ISO6709_VALUE.match(str(value)))


# What `tags="basic"` keeps: when, and with what, the recording was made. Free text (a title, a comment, an author,
# an artist, a description, keywords; a stream's title) may name the persons the video no longer shows: a privacy
# red team's file was titled "Surveillance of John Smith", its comment a phone number, its audio "Jane voice".
BASIC_TAGS = frozenset({
    "creation_time", "date", "date_recorded", "timecode", "language", "make", "model", "software", "firmware",
    "com.apple.quicktime.creationdate", "com.apple.quicktime.make", "com.apple.quicktime.model",
    "com.apple.quicktime.software", "com.android.version", "com.android.capture.fps", "com.android.manufacturer",
    "com.android.model",
})


def kept_tags(tags: dict[str, str], policy: TagPolicy = "basic") -> dict[str, str]:
    """The tags `policy` carries over: none; `basic` ones; or all. Never the muxer's own, never a location."""
    if policy == "none":
        return {}
    return {k: v for k, v in tags.items() if k.lower() not in MUXER_TAGS and not is_location_tag(k, v)
            and (policy == "all" or k.lower() in BASIC_TAGS)}


def left_out_tags(tags: dict[str, str], policy: TagPolicy) -> list[str]:
    """The keys of the source's tags `policy` leaves out, but for the muxer's own."""
    kept = kept_tags(tags, policy)
    return sorted(k for k in tags if k.lower() not in MUXER_TAGS and k not in kept)


@dataclass
class SourceExtras:
    """What a source holds besides its video: audio streams (codec names) and its container tags."""

    audio: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # all of them, location included
    stripped: list[str] = field(default_factory=list)  # tag keys `carry_over` leaves out (location)
    subtitles: list[str] = field(default_factory=list)  # subtitle streams (codec names): never carried over

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)

    def needs_remux(self, policy: CarryPolicy) -> bool:
        """Whether the video-only output lacks something of the source that `carry_over` would add."""
        return (policy.audio == "keep" and self.has_audio) or bool(kept_tags(self.tags, policy.tags))


def source_tags(container) -> dict[str, str]:
    """A source's tags: its container's, and its video's timecode, which QuickTime keeps with the video (and its
    `tmcd` track) rather than the file: left out without a word even with `--tags all` (a user's trial). Put
    with the file's tags, an MP4 or MOV muxer writes it as the anonymized video's timecode again."""
    tags = dict(container.metadata)
    if container.streams.video and "timecode" not in tags:
        timecode = main_video(container).metadata.get("timecode")
        if timecode:
            tags["timecode"] = timecode
    return tags


def probe(source: str | os.PathLike) -> SourceExtras:
    """The audio streams and tags of a file; InputError when it cannot be opened."""
    try:
        with av.open(str(source)) as container:
            tags = source_tags(container)
            audio = [stream.codec_context.name for stream in container.streams.audio]
            subtitles = [stream.codec_context.name for stream in container.streams.subtitles]
    except (av.FFmpegError, OSError) as exc:
        raise InputError(f"cannot open {source}: {exc}") from None
    located = sorted(k for k, v in tags.items() if k.lower() not in MUXER_TAGS and is_location_tag(k, v))
    return SourceExtras(audio, tags, located, subtitles)


def dropped_line(name: str, extras: SourceExtras) -> str:
    """The one line said when a source's audio is left out."""
    return (f"anonengine: {name}: audio dropped ({', '.join(extras.audio)}; voices identify people; "
            f"--audio keep copies it unchanged)")


def left_out_lines(name: str, extras: SourceExtras, policy: CarryPolicy) -> list[str]:
    """What is said of the source `name` its anonymized copy leaves out: its audio, free-text tags, subtitles."""
    said = [dropped_line(name, extras) if extras.has_audio and policy.audio == "drop" else None,
            tags_line(name, extras, policy.tags),
            subtitles_line(name, extras) if extras.subtitles else None]
    return [line for line in said if line is not None]


def tags_line(name: str, extras: SourceExtras, policy: TagPolicy) -> str | None:
    """The one line said of a source's free-text tags that `basic` leaves out (None: it left none out). Location
    tags go whatever the policy, without a word (README, Batches)."""
    if policy != "basic":
        return None
    free = [k for k in left_out_tags(extras.tags, policy) if k not in extras.stripped]
    if not free:
        return None
    return f"anonengine: {name}: tags left out ({', '.join(free)}: free text may name people; --tags all keeps them)"


def subtitles_line(name: str, extras: SourceExtras) -> str:
    """The one line said of a source's subtitles, which no output carries (they were left out without a word)."""
    return (f"anonengine: {name}: subtitles left out ({', '.join(extras.subtitles)}; their text may name people; "
            "the output has none)")


# The containers by the name a user knows them by, and the suffix that asks for each.
CONTAINER_NAMES = {"mp4": "MP4", "mov": "MOV", "matroska": "Matroska", "mpegts": "MPEG-TS"}
TRIAL_PACKETS = 16  # packets of each audio stream remuxed to see whether a container holds it


def _cannot_hold(source: Path, stream_index: int, codec: str, container: str) -> str | None:
    """Why `container` cannot hold the source's audio stream `stream_index` (`codec`) as it is, for every player
    (None: it can). FFmpeg writes PCM into MP4 as `ipcm`, which it reads back right, but few players read at all,
    and FFmpeg before 6.1 (Debian 12's 5.1) reads 24-bit as 16: a camera's MOV kept into `.mp4` played as
    full-scale noise (a user's trial)."""
    if container == "mp4" and codec.startswith("pcm_"):
        return "MP4's PCM is read by few players, and as noise by FFmpeg before 6.1"
    return _trial_remux(source, stream_index, container)


def _trial_remux(source: Path, stream_index: int, container: str) -> str | None:
    """Why `container` cannot hold the source's audio stream `stream_index` as it is (None: it can), found by
    remuxing its first packets in memory and reading them back. FFmpeg refuses some pairs outright (MOV:
    Opus, FLAC, Vorbis); others it writes as a data stream no player takes for audio (MPEG-TS: PCM, FLAC,
    Vorbis, which it has no stream type for), so the copy is read back and must be audio."""
    buffer = io.BytesIO()
    with av.open(str(source)) as original:
        stream = original.streams[stream_index]
        try:
            with av.open(buffer, "w", format=container) as out:
                copied = out.add_stream_from_template(stream)
                start, written = None, 0
                for packet in original.demux(stream):
                    if packet.dts is None and packet.pts is None:
                        continue
                    stamp = packet.dts if packet.dts is not None else packet.pts
                    start = stamp if start is None else start  # from 0: a priming packet's time may be below it
                    packet.pts = None if packet.pts is None else packet.pts - start
                    packet.dts = None if packet.dts is None else packet.dts - start
                    packet.stream = copied
                    out.mux(packet)
                    written += 1
                    if written >= TRIAL_PACKETS:
                        break
        except (av.FFmpegError, ValueError):  # "Invalid argument": FFmpeg logs its why, it does not raise it
            return "FFmpeg refuses it"
    buffer.seek(0)
    try:
        with av.open(buffer, "r", format=container) as back:
            got = back.streams[0] if back.streams else None
            # As audio, its codec as the container names it (MP4 reads MPEG-1 Layer II back as Layer III).
            if got is None or got.type != "audio":
                return f"it would be written as {'nothing' if got is None else got.type}, not audio"
    except (av.FFmpegError, ValueError) as exc:
        return f"FFmpeg cannot read it back: {_reason(exc)}"
    return None


def _reason(exc: Exception) -> str:
    """FFmpeg's reason, without the file name and the call it came from ("Invalid argument")."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return str(reason).split(": '")[0].strip()


def check_audio_fits(source: str | os.PathLike, output: str | os.PathLike, batch: bool = False) -> None:
    """For `--audio keep`: OutputError, one line, when the output's container cannot hold one of the source's
    audio streams unchanged (the audio is copied, never re-encoded), naming the containers that can. Tried
    on the FFmpeg in use (a few packets remuxed in memory), so it agrees with what `carry_over` would write.
    A source that cannot be opened is left to the run to report. `batch`: the output's container is not the
    user's to choose there (a batch writes MP4): the file alone can be."""
    source, output = Path(source), Path(output)
    container = container_format(output)
    try:
        with av.open(str(source)) as original:
            streams = [(s.index, s.codec_context.name) for s in original.streams.audio]
    except (av.FFmpegError, OSError):
        return
    for index, codec in streams:
        reason = _cannot_hold(source, index, codec, container)
        if reason is None:
            continue
        suffix = {c: s for s, c in reversed(OUTPUT_CONTAINERS.items()) if s}  # each container's first: .mp4
        holders = [suffix[f] for f in CONTAINER_NAMES if f != container and _cannot_hold(source, index, codec, f) is None]
        can = f"{_or(holders)} can hold it" if holders else "no output container can hold it"
        if batch and holders:  # named alone, not in the output folder: a batch's own outputs are MP4
            can = f"anonymized alone, --output-video {source.stem}_anonymized{holders[0]} can hold it"
        raise OutputError(f"{CONTAINER_NAMES.get(container, container)} ({output.name}) cannot hold the {codec} audio "
                          f"of {source.name} unchanged ({reason}): {can}, or --audio drop leaves it out")


def _or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def carry_over(video: Path, source: Path, output: Path, policy: CarryPolicy, write_to: Path | None = None) -> int:
    """Writes `output`: the packets of `video` (video-only, the anonymized frames), plus the source's
    container tags `policy.tags` keeps and, with `policy.audio="keep"`, its audio packets unchanged.

    Written to `write_to` (default: `output`'s `.partial` name) and renamed to `output` when complete; the caller
    removes `video` if it is another file. Returns the audio packets copied. OutputError, one line, when
    the container cannot take the source's audio without re-encoding it.
    """
    staged = write_to or partial_path(output)
    keep_audio: list = []
    audio = policy.audio
    if audio == "keep":
        check_audio_fits(source, output)  # before: MPEG-TS took PCM as a data stream, the audio silently lost
    try:
        with av.open(str(video)) as anonymized, av.open(str(source)) as original:
            keep_audio = list(original.streams.audio) if audio == "keep" else []
            tags = kept_tags(source_tags(original), policy.tags)
            container = container_format(output)
            # QuickTime's own keys (com.apple.quicktime.make, ...) are written only in the `mdta` form.
            options = {"movflags": "use_metadata_tags"} if tags and container in ("mp4", "mov") else {}
            with av.open(str(staged), "w", format=container, options=options) as out:
                out.metadata.update(tags)
                video_in = anonymized.streams.video[0]
                video_out = copied_video_stream(out, video_in)
                # Each container's own stream indexes (the source's audio may be its stream 0 too).
                video_pairs, audio_pairs = {video_in.index: (0, video_out)}, {}
                for n, stream in enumerate(keep_audio, start=1):
                    copied = out.add_stream_from_template(stream)
                    copied.metadata.clear()
                    copied.metadata.update(kept_tags(dict(stream.metadata), policy.tags))
                    audio_pairs[stream.index] = (n, copied)
                # The anonymized video starts at 0 (`VideoWriter`): the audio moves with it.
                shift = (_first_frame_time(video) - _first_frame_time(source)) if keep_audio else Fraction(0)
                copied_audio, damaged = _mux_in_time_order(out, [_packets(anonymized, [video_in], video_pairs),
                                                                 _packets(original, keep_audio, audio_pairs, shift)])
                if damaged:
                    log.warning("%s: %d damaged audio packet(s) left out (the sound skips there)", source, damaged)
    except (av.FFmpegError, ValueError) as exc:
        staged.unlink(missing_ok=True)
        what = f"audio ({', '.join(s.codec_context.name for s in keep_audio)})" if audio == "keep" else "tags"
        raise OutputError(f"cannot copy the {what} of {source} into {output.name}: {_reason(exc)}") from None
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    if staged != output:
        os.replace(staged, output)
    return copied_audio


def _first_frame_time(path: Path) -> Fraction:
    """When the file's first video frame is shown, in seconds: the first decoded, as the engine's first frame
    (a TS cut mid-GOP starts with packets that decode to nothing)."""
    with av.open(str(path)) as container:
        stream = main_video(container)
        frame = next((f for f in container.decode(stream) if f.pts is not None), None)
        return Fraction(0) if frame is None else frame.pts * stream.time_base


def _packets(container, streams: list, pairs: dict, shift: Fraction = Fraction(0)) -> Iterator[tuple[Fraction, int, av.Packet]]:
    """(time in seconds, output stream's order, packet) of `streams` in file order, each moved by `shift`
    seconds; flush packets skipped."""
    if not streams:
        return
    for packet in container.demux(streams):
        if packet.dts is None and packet.pts is None:
            continue  # the demuxer's end-of-stream packet
        order, out_stream = pairs[packet.stream.index]
        if shift:
            ticks = round(shift / packet.time_base)
            packet.pts = None if packet.pts is None else packet.pts + ticks
            packet.dts = None if packet.dts is None else packet.dts + ticks
        stamp = packet.dts if packet.dts is not None else packet.pts
        time = stamp * packet.time_base
        packet.stream = out_stream
        yield time, order, packet


def _mux_in_time_order(out, sources: list[Iterator]) -> tuple[int, int]:
    """Muxes the packets of several demuxers interleaved by time (a player reads the file front to back);
    returns how many were audio, and how many audio packets were left out as damaged: the muxer refuses an AAC
    packet whose ADTS header is damaged (as an MPEG-TS's bit rot leaves it: "Invalid data", "Not yet implemented"),
    and the output, its frames all anonymized, was removed for it. Where it refuses every audio packet, the audio
    cannot be copied at all: that is the error."""
    audio = damaged = 0
    for _, order, packet in heapq.merge(*sources, key=lambda item: (item[0], item[1])):
        try:
            out.mux(packet)
        except av.FFmpegError:
            if order == 0 or not audio and damaged >= DAMAGED_AUDIO_FIRST:
                raise  # the anonymized video's own; or no audio packet at all taken
            damaged += 1
            continue
        audio += order > 0
    return audio, damaged


def finish_single_file(camera, policy: CarryPolicy) -> Callable[[], int]:
    """For `anonengine run` on one file: looks at its source now, and returns what to do once its output is
    complete (say what of the source is left out; add the audio and tags). Returns the exit code, 0.

    A live source has no audio read: `--audio keep` is refused for it. The output takes its audio and tags
    in place (remuxed to a hidden file, renamed over it), so between the two it is the complete video
    without them. A source that cannot be probed is left to the run to report.
    """
    def nothing() -> int:
        return 0

    from anonengine.interrupts import INTERRUPTS
    from anonengine.sources import is_live

    try:
        live = is_live(camera.source, camera.live, camera.stream)
    except AnonError:
        return nothing
    if live:
        if policy.audio == "keep":
            raise ConfigError("--audio keep needs a file: a live source's audio is not recorded")
        return nothing
    if not camera.output:
        return nothing
    try:
        extras = probe(camera.source)
    except InputError:
        return nothing
    if policy.audio == "keep" and extras.has_audio:
        check_audio_fits(camera.source, camera.output)  # before any work: one line, nothing written

    def finish() -> int:
        source, output = Path(camera.source), Path(camera.output)
        for line in left_out_lines(source.name, extras, policy):
            print(line, file=sys.stderr)
        if extras.needs_remux(policy) and output.is_file():
            try:
                with INTERRUPTS.deferred():  # short (0.11 s for a 60 s 720p file): a stop waits for it
                    carry_over(output, source, output, policy, write_to=output.with_name(f".{output.name}.remux.mp4"))
            except BaseException as exc:
                # Without its audio (or tags) the output is not complete, and must not stand at its final name
                # (before, a silent video did, exit 2): it goes, as a failed run's output does, and its
                # frames' metadata with it.
                output.unlink(missing_ok=True)
                if camera.metadata:
                    Path(camera.metadata).unlink(missing_ok=True)
                if isinstance(exc, AnonError):
                    raise type(exc)(f"{exc}; {output.name} removed") from None
                raise
        return 0

    return finish


__all__ = ["DEFAULT_CARRY", "AudioPolicy", "CarryPolicy", "SourceExtras", "TagPolicy", "carry_over", "check_audio_fits",
           "dropped_line", "finish_single_file", "is_location_tag", "kept_tags", "left_out_lines", "probe", "tags_line"]
