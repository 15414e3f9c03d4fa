"""Whether a file is a video or a photo: by what it holds where its name could be wrong.

A file's first bytes tell most files apart (a video container's, a picture format's), without FFmpeg or anything
heavy imported, so that the command line can choose its path before the engine starts; FFmpeg is asked where
they do not tell, or disagree with the name.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from anonengine.paths import (
    FFMPEG_PHOTO_SUFFIXES,
    PHOTO_SIGNATURES,
    PHOTO_SUFFIXES,
    UNREADABLE_PHOTO_SUFFIXES,
    URL_SCHEME,
    VIDEO_SUFFIXES,
    is_photo,
)

# Files named otherwise that are surely not video: not opened to find out.
NOT_VIDEO_SUFFIXES = frozenset({".txt", ".md", ".json", ".jsonl", ".xml", ".csv", ".srt", ".vtt", ".ass", ".db",
                                ".ini", ".log", ".pdf", ".zip", ".mp3", ".wav", ".flac", ".m4a", ".aac", ".ogg",
                                ".opus", ".py", ".yaml", ".yml", ".html", ".thm", ".lock", ".partial"})
PHOTO_INPUTS = PHOTO_SUFFIXES | FFMPEG_PHOTO_SUFFIXES | UNREADABLE_PHOTO_SUFFIXES  # those it reads, and reports
IMAGE_DEMUXERS = frozenset({"image2", "ico"})  # and every `*_pipe`: FFmpeg's demuxers of one picture
# First bytes (at an offset) of pictures, and of video containers. ISO media (`ftyp`) is either, by its brand: an
# AVIF or HEIF is a picture.
PICTURE_MAGIC = (*((0, signature) for signature, _ in PHOTO_SIGNATURES), (0, b"BM"), (0, b"II*\x00"),
                 (0, b"MM\x00*"), (8, b"WEBP"), (0, b"\x00\x00\x00\x0cjP  "), (0, b"qoif"))
JPEG_MAGIC = b"\xff\xd8\xff"  # a camera's MJPEG (JPEGs one after another) begins so too
VIDEO_MAGIC = ((0, b"\x1a\x45\xdf\xa3"), (0, b"\x00\x00\x01\xba"), (8, b"AVI "), (0, b"FLV"), (0, b"OggS"),
               (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"))
PICTURE_BRANDS = frozenset({b"avif", b"avis", b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"})
ISO_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})  # an MP4's or MOV's first box
TS_PACKET = 188


def named_kind(path: Path) -> str | None:
    """"video" or "photo" as `path`'s suffix names it; None for a suffix that names neither."""
    suffix = path.suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES else "photo" if suffix in PHOTO_INPUTS else None


def sniffed_kind(path: Path) -> str | None:
    """"video" or "photo" by the file's first bytes, where they tell; None where they do not (or it cannot be read)."""
    return kind_of_head(first_bytes(path))


def first_bytes(path: Path) -> bytes:
    """As many of the file's first bytes as `kind_of_head` looks at; none where it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read(TS_PACKET + 1)
    except OSError:
        return b""


def kind_of_head(head: bytes) -> str | None:
    """"video" or "photo" by a file's first bytes (`first_bytes`), where they tell."""
    if head[4:8] in ISO_BOXES:
        return "photo" if head[4:8] == b"ftyp" and head[8:12] in PICTURE_BRANDS else "video"
    if any(head[at : at + len(magic)] == magic for at, magic in PICTURE_MAGIC):
        return "photo"
    if any(head[at : at + len(magic)] == magic for at, magic in VIDEO_MAGIC):
        return "video"
    if len(head) > TS_PACKET and head[0] == head[TS_PACKET] == 0x47:  # MPEG-TS: a sync byte each 188
        return "video"
    return None


def media_kind(path: Path) -> str | None:
    """"video", "photo" or None (neither), by what the file holds where its name could be wrong. A single picture
    is a photo, whatever its name; moving pictures are a video, named as a photo too; a picture attached to a song
    is neither. A file whose name says neither is told so too: left out by its name alone, a batch's `.gif`,
    `.mxf`, `.vob` and suffix-less videos stayed as filmed while the summary said nothing failed; taken for a
    video, a suffix-less JPEG was detected at the videos' 640 and its crowd came out as photographed. Trusted for
    its name, a crowd's JPEG named `.mp4` came out so, exit 0, and a video named `.jpg` as its first frame alone
    (an archivist's trial). Files FFmpeg cannot read keep their name's kind (and fail with their reason)."""
    suffix, named = path.suffix.lower(), named_kind(path)
    if suffix in NOT_VIDEO_SUFFIXES:
        return None
    if suffix in UNREADABLE_PHOTO_SUFFIXES:
        return "photo"  # reported as failed by name (FFmpeg reads an iPhone's HEIF as a video of its tiles)
    head = first_bytes(path)
    if named is not None and kind_of_head(head) == named and not (named == "video" and head.startswith(JPEG_MAGIC)):
        return named  # not opened: the name and the first bytes agree
    return _found_by_ffmpeg(path, named)


def _found_by_ffmpeg(path: Path, named: str | None) -> str | None:
    import av

    from anonengine.video import main_video

    try:
        with av.open(str(path)) as container:
            if not any(av.stream.Disposition.attached_pic not in stream.disposition
                       for stream in container.streams.video):
                return named if named == "video" else None  # a video without pictures fails with its reason
            picture = container.format.name in IMAGE_DEMUXERS or container.format.name.endswith("_pipe")
            if not picture and named != "photo":
                return "video"
            # JPEGs one after another (a camera's MJPEG) are a video, each a frame; a one-picture AVIF a photo.
            pictures = sum(1 for _ in itertools.islice(container.decode(main_video(container)), 2))
            return "photo" if pictures < 2 or (picture and named == "photo") else "video"
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError):
        return named


def holds_photo(source: str) -> bool:
    """Whether `source` is a photo: a file by what it holds (`media_kind`: a JPEG named `.mp4` is one, a video
    named `.jpg` is not, nor a camera's MJPEG); anything else (a URL, a device, a file not there) by its name."""
    if URL_SCHEME.match(source) or not Path(source).is_file():
        return is_photo(source)
    return media_kind(Path(source)) == "photo"


def misnamed(path: Path, kind: str | None) -> str | None:
    """What to say of a file that holds another kind than its name says (`media_kind`), or None."""
    named = named_kind(path)
    if kind is None or named is None or kind == named:
        return None
    return f" holds a {kind}, not a {named} as its name says: anonymized as a {kind}"
