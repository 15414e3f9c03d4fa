"""Helpers shared by the engine tests."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path


def stage_pids(instance: str) -> list[int]:
    """Stage processes of an engine instance: by their arguments (`--instance ID`) until they set their
    title, then by the title (`anonengine-STAGE[CAMERA] ID`). setproctitle replaces the arguments, so
    `pgrep -f "--instance ID"` alone stops finding a stage once it is up."""
    title = re.compile(rf"anonengine-\w+\[[^\]]*\] {re.escape(instance)}")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = [w.decode(errors="replace") for w in (entry / "cmdline").read_bytes().split(b"\0") if w]
        except OSError:
            continue  # gone meanwhile
        if title.fullmatch(" ".join(words)) or ("--instance", instance) in pairwise(words):
            found.append(int(entry.name))
    return found


def stage_title(pid: int) -> str:
    """A process's title (`anonengine-STAGE[CAMERA] ID` once a stage has set it), '' once it is gone."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no one listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PERSON_LEVELS = 40  # a pixel shows the person where it differs from the true background by more
SAME_LEVELS = 12  # and the output still shows it where it is this close to the input
LEAK_SHARE = 0.01  # a person is shown when more than this share of their pixels comes out as filmed


def shown_share(source, output, background, box) -> float:
    """Share of the person's distinctive pixels in `box` (x0, y0, x1, y1) that the output shows as filmed.
    An obscured output frame (flat grey) shows nobody, though a person's grey pixels match it."""
    import numpy as np

    from anonengine.compositor import OBSCURED_GREY

    if output.min() >= OBSCURED_GREY - 3 and output.max() <= OBSCURED_GREY + 3:  # x264 moves it by a level or two
        return 0.0
    x0, y0, x1, y1 = box
    region = (slice(y0, y1), slice(x0, x1))
    src = source[region].astype(int)
    person = np.abs(src - background[region].astype(int)).max(axis=2) > PERSON_LEVELS
    same = np.abs(output[region].astype(int) - src).max(axis=2) < SAME_LEVELS
    return float((person & same).sum() / max(1, person.sum()))


def records_so_far(video: Path) -> int:
    """The frames written so far to an output video, by their metadata records (`NAME.jsonl` beside it):
    in the engine's working segments, or in `--inline`'s `NAME.jsonl.partial`."""
    from anonengine.recording import segments_folder

    total = 0
    for path in [video.with_suffix(".jsonl.partial"), *segments_folder(video, keep=False).glob("*.jsonl")]:
        try:
            total += len(path.read_text().splitlines())
        except OSError:  # not there (yet), or a segment's joined meanwhile
            pass
    return total
