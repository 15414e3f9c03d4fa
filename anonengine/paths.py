"""What a source or output names, told from its text alone (no file is opened, nothing heavy imported), so
that the command line can choose its path before it imports the engine."""

from __future__ import annotations

import re
from pathlib import Path

URL_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
ROTATIONS = (0, 90, 180, 270)  # the turns, degrees clockwise, a camera's picture may take (`cameras[].rotate`)
# Photos: anonymized as photos, not one-frame videos, in their own format (OpenCV reads and writes these).
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# Photos OpenCV cannot read (an iPhone's HEIF, cameras' raw files): a batch reports each as failed, since
# left out silently they would stay as taken while the summary says the folder is done.
UNREADABLE_PHOTO_SUFFIXES = frozenset({".heic", ".heif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf",
                                       ".rw2"})


def is_photo(spec: str) -> bool:
    return not URL_SCHEME.match(spec) and Path(spec).suffix.lower() in PHOTO_SUFFIXES
