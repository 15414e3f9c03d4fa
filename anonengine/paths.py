"""What a source or output names, told from its text alone (no file is opened, nothing heavy imported), so
that the command line can choose its path before it imports the engine."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

URL_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
# A URL's password (`rtsp://admin:PASSWORD@cam/...`) and credentials in its query (`?password=...`, `&token=...`).
URL_WITH_USER = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(\S*@)")  # to a URL's last @ (a password may hold / or @)
# A secret ends at the next parameter, a space, or a colon before a space or the end: the ": why" of an error after the
# URL (`?token=abc: Connection refused` lost its colon to the secret's ***).
QUERY_SECRET = re.compile(
    r"(?i)([?&](?:password|passwd|pwd|pass|token|auth|key|secret|signature)=)(?:[^&\s:]|:(?!\s|$))+")
ROTATIONS = (0, 90, 180, 270)  # the turns, degrees clockwise, a camera's picture may take (`cameras[].rotate`)
# The containers an output video is written in, by its name's suffix (none: MP4). Each keeps every frame's
# time; AVI does not (it counts frames: a camera's or a phone's varying rate, or a gap, cannot be told) and
# takes H.264 only in another form than the engine's segments hold it, so an .avi output is refused.
OUTPUT_CONTAINERS = {"": "mp4", ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".ts": "mpegts"}
# Photos: anonymized as photos, not one-frame videos, in their own format (OpenCV reads and writes these; a
# `.jfif` or `.jif`, which it reads but writes nothing by, as the JPEG it is). A JPEG named `.jfif` or `.jpe`, a
# `.ppm`, went the videos' way: a one-frame MP4 detected at the videos' 640, a 3200x2136 crowd all shown.
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff",
                            ".avif", ".jp2", ".ppm", ".pgm", ".pnm", ".pam", ".ras", ".sr"})
# Videos by their names (a batch opens a file named otherwise to find out what it holds).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".ts", ".mts", ".m2ts", ".mpg",
                            ".mpeg", ".wmv", ".flv", ".3gp", ".3g2", ".gif", ".mxf", ".vob", ".y4m", ".ogv", ".dv",
                            ".m2v", ".asf", ".f4v", ".nut", ".h264", ".264", ".hevc", ".265", ".mjpeg", ".mjpg",
                            ".lrv", ".insv"})
# What a photo file holds, by its first bytes, as the suffix OpenCV encodes it by: a camera's or an app's JPEG
# without a suffix went the videos' way, as a one-frame MP4 detected at the videos' 640.
PHOTO_SIGNATURES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"))
# Photos OpenCV cannot read but FFmpeg can: read through it, and written as PNG (`crowd.tga` -> `crowd.png`).
FFMPEG_PHOTO_SUFFIXES = frozenset({".tga", ".pcx", ".ico", ".qoi", ".sgi", ".xwd"})
# Photos OpenCV cannot read (an iPhone's HEIF, cameras' raw files): a batch reports each as failed, since
# left out silently they would stay as taken while the summary says the folder is done.
UNREADABLE_PHOTO_SUFFIXES = frozenset({".heic", ".heif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf",
                                       ".rw2"})


NAME_MAX = 255  # bytes in one file name (Linux's filesystems, macOS's, Windows' shares)


def working_name(head: str, stem: str, tail: str) -> str:
    """`head + stem + tail`, a working file's name made from a final one's `stem`, shortened where it would be
    longer than a name can be: the stem cut, and a digest of it added, so that each final name still has a
    working name of its own, always the same. An input named near the limit (240 characters) passed, and its
    working file's name, 20 longer, failed every run ("File name too long")."""
    name = f"{head}{stem}{tail}"
    if len(os.fsencode(name)) <= NAME_MAX:
        return name
    digest = "~" + hashlib.sha1(os.fsencode(stem)).hexdigest()[:12]
    room = NAME_MAX - len(os.fsencode(f"{head}{digest}{tail}"))
    cut = os.fsencode(stem)[:room].decode("utf-8", "ignore") if stem.isprintable() else stem[: room // 4]
    return f"{head}{cut}{digest}{tail}"


def as_text(name: str) -> str:
    """A name as the system gave it, as text: the bytes of it that are not UTF-8 (an old archive's Latin-1,
    which Python carries as surrogate escapes) replaced, as a message or a check of text can take them."""
    try:
        data = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no system name holds (a YAML escape): replaced all the same
        data = name.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")


def redacted(text: str) -> str:
    """`text` with the passwords and secrets of the URLs in it as `***`: a camera's URL in an error went out on
    the engine's unauthenticated `/readyz`, in `/api/status` and in every log (`rtsp://admin:***@cam/stream`)."""
    def without_password(match: re.Match) -> str:
        user, colon, _ = match.group(2)[:-1].partition(":")
        if not colon or "/" in user:  # no password; or the @ is a path's or a query's (`/?mail=a@b`)
            return match.group(0)
        return f"{match.group(1)}{user}:***@"

    return QUERY_SECRET.sub(r"\1***", URL_WITH_USER.sub(without_password, text))


def partial_path(output: str | Path) -> Path:
    """Where an output is written until it is complete: `NAME.partial.SUFFIX`."""
    path = Path(output)
    return path.with_name(working_name("", path.stem, f".partial{path.suffix or '.mp4'}"))


def partial_metadata_path(metadata: str | Path) -> Path:
    """Where metadata lines are written until the video is complete: `NAME.partial`."""
    path = Path(metadata)
    return path.with_name(working_name("", path.name, ".partial"))


# An image sequence: photos numbered as a printf pattern in the file name says (`frames/f%06d.png`: f000001.png,
# f000002.png...), read as one video, in the numbers' order, by FFmpeg's image2 demuxer.
SEQUENCE_NUMBER = re.compile(r"%(0?\d*)d")


def is_sequence(spec: str) -> bool:
    """Whether `spec` names an image sequence (`frames/%06d.png`) rather than one file."""
    name = Path(spec).name
    return (not URL_SCHEME.match(spec) and len(SEQUENCE_NUMBER.findall(name)) == 1
            and "%" not in SEQUENCE_NUMBER.sub("", name) and Path(spec).suffix.lower() in PHOTO_SUFFIXES)


def sequence_parts(spec: str) -> tuple[str, str, int]:
    """An image sequence's photos' names: (what comes before the number, what comes after, its width: `%04d`
    writes 7 as 0007, `%d` as 7)."""
    name = Path(spec).name
    number = SEQUENCE_NUMBER.search(name)
    return name[: number.start()], name[number.end():], int(number.group(1) or 0)


def sequence_photo(spec: str, number: int) -> str:
    """The file name of photo `number` of the image sequence `spec`, as FFmpeg names it (`%3d` pads with zeros,
    where Python's `%` pads with spaces)."""
    prefix, suffix, width = sequence_parts(spec)
    return f"{prefix}{number:0{width}d}{suffix}"


def sequence_number(spec: str, name: str) -> int | None:
    """The number of the photo named `name` (a file name) in the image sequence `spec`; None if it is none of
    its photos' names."""
    prefix, suffix, width = sequence_parts(spec)
    if len(name) <= len(prefix) + len(suffix) or not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    digits = name[len(prefix) : len(name) - len(suffix)]
    if not re.fullmatch("[0-9]+", digits) or digits != f"{int(digits):0{width}d}":  # as FFmpeg writes it
        return None
    return int(digits)


def in_sequence(spec: str, path: str | Path) -> bool:
    """Whether `path` names one of the photos of the image sequence `spec` (there or not)."""
    try:
        same_folder = Path(path).resolve().parent == Path(spec).resolve().parent
    except OSError:
        return False
    return same_folder and sequence_number(spec, Path(path).name) is not None


def sequence_stem(spec: str) -> str:
    """The name an image sequence's video takes: `frames/f%06d.png` -> f, `frames/%06d.png` -> frames."""
    return SEQUENCE_NUMBER.sub("", Path(spec).stem).strip("._- ") or Path(spec).resolve().parent.name


def is_photo(spec: str) -> bool:
    suffix = Path(spec).suffix.lower()
    return (not URL_SCHEME.match(spec) and (suffix in PHOTO_SUFFIXES or suffix in FFMPEG_PHOTO_SUFFIXES)
            and not is_sequence(spec))


def photo_output(path: Path) -> Path:
    """The name a photo's anonymized copy takes, for the name `path` (its own, or the photo's): the same, but
    `.png` for a format only FFmpeg reads (a TGA; one named otherwise, a `.jxl`), which it is written as."""
    suffix = path.suffix.lower()
    if not suffix or suffix in PHOTO_SUFFIXES or suffix in UNREADABLE_PHOTO_SUFFIXES:
        return path
    return path.with_suffix(".png")
