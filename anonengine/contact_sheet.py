"""Side-by-side pictures of original and anonymized frames, for a person to look at."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anonengine.video import VideoReader

PANEL_WIDTH = 480


def write_contact_sheet(original: Path, anonymized: Path, path: Path, rows: int = 4) -> Path:
    """PNG with `rows` evenly spaced frames: original left, anonymized right."""
    before = [f.image for f in VideoReader(str(original))]
    after = [f.image for f in VideoReader(str(anonymized))]
    picks = np.linspace(0, min(len(before), len(after)) - 1, rows).round().astype(int)
    lines = [
        np.hstack([_panel(before[i], f"original #{i}"), _panel(after[i], f"anonymized #{i}")]) for i in picks
    ]
    cv2.imwrite(str(path), np.vstack(lines))
    return path


def _panel(image: np.ndarray, label: str) -> np.ndarray:
    h, w = image.shape[:2]
    panel = cv2.resize(image, (PANEL_WIDTH, round(h * PANEL_WIDTH / w)), interpolation=cv2.INTER_AREA)
    # White on a black box: OpenCV 5 draws a thicker stroke with wider letters, so a black outline drawn
    # thick under the white ran ahead of it (the demo's labels came out garbled).
    (width, height), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
    cv2.rectangle(panel, (4, 22 - height - 4), (12 + width, 22 + baseline + 2), (0, 0, 0), cv2.FILLED)
    cv2.putText(panel, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return cv2.copyMakeBorder(panel, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
