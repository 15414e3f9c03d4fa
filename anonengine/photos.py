"""Photos read and written in their own form: grey stays grey, 16 bits stay 16 bits, a transparent part
stays transparent, and a photo named `.heic` that is a JPEG inside is read as the JPEG it is.

The stages anonymize an 8-bit BGR picture (`Photo.picture`, as OpenCV's `IMREAD_COLOR` gives it). What
the output is written from is the photo as stored, where only the pixels the anonymizer changed take the
anonymized picture's values, brought to the stored depth. Before, every photo came out 8-bit colour: a
16-bit scan lost its depth, a grey photo became three equal channels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import av
import cv2
import numpy as np

from anonengine.errors import InputError, OutputError
from anonengine.paths import PHOTO_SIGNATURES, UNREADABLE_PHOTO_SUFFIXES
from anonengine.video import jpeg_cut_short, main_video, to_bgr, turn

log = logging.getLogger("anonengine")

JPEG_QUALITY = 95
ALPHA_SUFFIXES = frozenset({".png", ".webp", ".tif", ".tiff", ".avif"})  # photo outputs that keep a transparent part
DEEP_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jp2"})  # photo outputs OpenCV writes in 16 bits
# Names whose files OpenCV cannot decode, but which phones' apps and messengers also give to JPEGs: such a
# file is read (and written) as what it holds when OpenCV recognises it. A raw camera file is not: its
# TIFF-like structure would be read as its small preview.
MISNAMED_SUFFIXES = frozenset({".heic", ".heif"})
FIT_SAMPLES = 1_000_000
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


@dataclass(frozen=True)
class Photo:
    """A photo as read: `picture`, the 8-bit BGR image the stages anonymize (EXIF-turned); `stored`, the same
    pixels in their stored form where that is more than 8-bit colour (grey, 16 bits), else None; `alpha`, its
    transparency at the stored depth, read only when asked for; `encoding`, the suffix it is encoded by."""

    picture: np.ndarray
    stored: np.ndarray | None = None
    alpha: np.ndarray | None = None
    encoding: str = ".jpg"
    pages: int = 1  # the pictures its file holds (a multi-page TIFF, an animated WebP); the first is read

    @classmethod
    def read(cls, path: Path, with_alpha: bool = False) -> Photo:
        # Decoded from its bytes, read once: OpenCV's reading by name takes the name as UTF-8, and one that is
        # not (an old archive's Latin-1 names) crashed the process, the whole batch with it, on every run.
        data = path.read_bytes()
        encoding = photo_encoding(path, data[:16])
        if not data:
            raise InputError(f"cannot read image {path}: the file is empty")
        buffer = np.frombuffer(data, np.uint8)
        # One decode where the photo is 8 bits: OpenCV's colour picture of it is its grey replicated.
        stored = cv2.imdecode(buffer, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
        if stored is not None and stored.dtype == np.uint8:
            picture = cv2.cvtColor(stored, cv2.COLOR_GRAY2BGR) if stored.ndim == 2 else stored
        else:
            # Deeper: OpenCV's own 8 bits, since the stored values need not fill 16 (a 12-bit JPEG 2000's
            # reach 4095, a 10-bit AVIF's 1023: shifted by 8 they would be a black picture to detect on).
            picture = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        if picture is None:
            picture, stored = by_ffmpeg(path), None
        if encoding in JPEG_SUFFIXES and jpeg_cut_short(data):
            # OpenCV reads it as far as it goes, the rest grey, and libjpeg's own line names no file.
            log.warning("%s is cut short (a copy stopped midway?): read as far as it goes, the rest of its "
                        "picture grey", path)
        if stored is not None and (stored.ndim == 3 and stored.dtype == np.uint8 or stored.shape[:2] != picture.shape[:2]):
            stored = None  # 8-bit colour: the picture itself
        alpha = transparency(buffer, picture) if with_alpha else None
        return cls(picture, stored, alpha, encoding, pictures(buffer))

    def turned(self, degrees: int) -> Photo:
        def spin(image):
            return None if image is None else turn(image, degrees)
        return replace(self, picture=spin(self.picture), stored=spin(self.stored), alpha=spin(self.alpha))

    def written_form(self, anonymized: np.ndarray, suffix: str) -> np.ndarray:
        """`anonymized` (8-bit BGR, the picture's size) in the photo's own form, as far as `suffix` keeps it:
        the stored pixels where nothing was changed, the anonymized ones brought to the stored depth where it was."""
        out = anonymized
        if self.stored is not None:
            deep = self.stored.dtype == np.uint16 and suffix in DEEP_SUFFIXES
            grey = self.stored.ndim == 2
            kept = self.stored if deep else _eight_bits(self.picture, grey)
            changed = np.any(anonymized != self.picture, axis=2)
            replaced = cv2.cvtColor(anonymized, cv2.COLOR_BGR2GRAY) if grey else anonymized
            if deep:
                replaced = _to_depth(replaced, kept, self.picture, changed, grey)
            out = kept.copy()
            out[changed] = replaced[changed]
        if self.alpha is not None and suffix in ALPHA_SUFFIXES:
            alpha = self.alpha
            if out.dtype != alpha.dtype:
                scale = (np.iinfo(out.dtype).max / np.iinfo(alpha.dtype).max)
                alpha = (alpha.astype(np.float32) * scale + 0.5).astype(out.dtype)
            colour = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR) if out.ndim == 2 else out
            out = np.dstack([colour, alpha])
        return out

    def write(self, anonymized: np.ndarray, path: Path, output: Path) -> None:
        """Writes the anonymized photo to `path` (a partial's name), encoded as `output`'s name says, or as the
        photo itself was where that name is one OpenCV cannot write (a JPEG named `.heic`)."""
        suffix = output.suffix.lower()
        suffix = self.encoding if suffix in MISNAMED_SUFFIXES or not writable(suffix) else suffix
        image = self.written_form(anonymized, suffix)
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
        ok, data = cv2.imencode(suffix, image, params)
        if not ok:
            raise OutputError(f"cannot encode {path.name} as {suffix}")
        path.write_bytes(data.tobytes())


def photo_encoding(path: Path, head: bytes) -> str:
    """The suffix a photo is encoded by: its own, or where OpenCV writes nothing by that name (a HEIF-named
    JPEG, a `.jfif`, a camera's file without a suffix) what it holds by its first bytes, `head`, a JPEG or a
    PNG; PNG for anything else (a TGA, read by FFmpeg)."""
    suffix = path.suffix.lower()
    if suffix in UNREADABLE_PHOTO_SUFFIXES and suffix not in MISNAMED_SUFFIXES:
        raise _unreadable(suffix)
    if suffix not in MISNAMED_SUFFIXES and writable(suffix):
        return suffix
    for signature, encoding in PHOTO_SIGNATURES:
        if head.startswith(signature):
            return encoding
    if suffix in MISNAMED_SUFFIXES:
        raise _unreadable(suffix)
    return ".png"


def _unreadable(suffix: str) -> InputError:
    return InputError(f"cannot read {suffix} photos (HEIF or a camera's raw format): convert them to JPEG "
                      "first, then run the batch again")


def writable(suffix: str) -> bool:
    """Whether OpenCV encodes a photo by the name's `suffix`."""
    return bool(suffix) and cv2.haveImageWriter(f"photo{suffix}")


def by_ffmpeg(path: Path) -> np.ndarray:
    """A photo OpenCV cannot decode (a TGA, a PCX, an icon) decoded by FFmpeg: its first picture, 8-bit BGR."""
    try:
        with av.open(str(path)) as container:
            return to_bgr(next(container.decode(main_video(container))))
    except (av.FFmpegError, StopIteration, IndexError, UnicodeEncodeError, ValueError):
        raise InputError(f"cannot read image {path}") from None


def pictures(buffer: np.ndarray) -> int:
    """How many pictures a photo file's bytes hold (a multi-page TIFF's pages, an animated WebP's frames)."""
    head = bytes(buffer[:4096])
    tiff = head[:4] in (b"II*\0", b"MM\0*")
    animated = (head.startswith(b"\x89PNG") and b"acTL" in head) or (head.startswith(b"RIFF") and b"ANIM" in head[:64])
    if not (tiff or animated):  # one picture: not decoded again to be counted
        return 1
    ok, images = cv2.imdecodemulti(buffer, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return len(images) if ok else 1


def transparency(buffer: np.ndarray, picture: np.ndarray) -> np.ndarray | None:
    """A photo's alpha channel at its stored depth, as it lies over `picture`, or None: it has none, or its
    pixels were turned on reading (EXIF), which the alpha was not. Kept, a transparent part stays so: taken
    away, the pixels under it came out (a cut-out's old background, an edit's hidden parts)."""
    stored = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if stored is None or stored.ndim != 3 or stored.shape[2] != 4 or stored.shape[:2] != picture.shape[:2]:
        return None
    return stored[..., 3]


def _eight_bits(picture: np.ndarray, grey: bool) -> np.ndarray:
    return cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY) if grey else picture


def _to_depth(replaced: np.ndarray, stored: np.ndarray, picture: np.ndarray, changed: np.ndarray,
              grey: bool) -> np.ndarray:
    """The replaced 8-bit pixels in the stored photo's scale: fitted on the pixels left as they were (a 16-bit
    PNG's 8 bits are its values / 256, a 12-bit JPEG 2000's / 16), a plain 257 where nothing was left."""
    dtype = stored.dtype
    every = max(1, int(np.count_nonzero(~changed)) // FIT_SAMPLES)  # a 48-MP scan: a million of its pixels
    eight = _eight_bits(picture, grey)[~changed][::every].astype(np.float64)
    deep = stored[~changed][::every].astype(np.float64)
    energy = float((eight * eight).sum())
    scale = float((eight * deep).sum()) / energy if energy > 0 else 257.0
    values = replaced.astype(np.float32) * np.float32(scale) + np.float32(0.5)
    return np.clip(values, 0, np.iinfo(dtype).max).astype(dtype)


__all__ = ["ALPHA_SUFFIXES", "DEEP_SUFFIXES", "JPEG_QUALITY", "Photo", "photo_encoding", "transparency"]
