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
