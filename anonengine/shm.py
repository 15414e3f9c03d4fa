"""Rings of frame slots in POSIX shared memory; only (segment, slot, seq) references travel on sockets.

One segment per ring, created (mode 0600) and unlinked by its owner only. Each slot starts with a
header that works as a seqlock: the writer marks the slot busy, writes the pixels, then publishes the
frame's seq. A reader checks the seq before and after it used the pixels; if the slot was reused in
between, the read is rejected, so a stale or torn frame is never passed on as if it were the one asked
for.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import struct
import time
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

from anonengine.errors import ResourceError
from anonengine.locks import process_alive

SHM_DIR = Path("/dev/shm")
PREFIX = "anonengine"
HEADER = struct.Struct("<qqiii4x")  # state (odd while writing), seq, height, width, channels
HEADER_SIZE = 64
NO_FRAME = -1
PRUNE_EVERY_S = 0.5  # how often a reader looks for rings of dead stages (a stat per ring mapped)


class StaleSlot(Exception):
    """The slot no longer holds the frame a reference pointed to."""


def reserve(shm: shared_memory.SharedMemory, size: int, what: str) -> None:
    """Takes the segment's memory now. A segment is only sized when made: one larger than what /dev/shm has
    left (a container's is 64 MB unless told) was a SIGBUS in whichever stage first wrote past the end,
    restarted until the engine gave up ("died 6 times ... (exit -7)"). Now it is one line, at once."""
    try:
        os.posix_fallocate(shm._fd, 0, size)  # the segment's descriptor, open until close
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # a file system that cannot reserve: as before
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
            raise
        shm.close()
        unlink(shm.name)
        free = shutil.disk_usage(SHM_DIR) if SHM_DIR.exists() else None
        room = f"{free.free / 2**20:.0f} of {free.total / 2**20:.0f} MB free" if free else "too little free"
        raise ResourceError(
            f"not enough shared memory for {what} ({size / 2**20:.0f} MB): {SHM_DIR} has {room}; give it more "
            "(a container: docker run --shm-size=2g) or lower engine.ring_slots and background.future_frames"
        ) from None


def segment_name(instance: str, owner: str) -> str:
    return f"{PREFIX}-{instance}-{owner}"


class FrameRing:
    """`slots` frame buffers of up to `height` x `width` x 3 bytes in one shared-memory segment."""

    def __init__(self, shm: shared_memory.SharedMemory, slots: int, height: int, width: int, owner: bool) -> None:
        self.shm, self.slots, self.height, self.width, self.owner = shm, slots, height, width, owner
        self.slot_bytes = HEADER_SIZE + height * width * 3

    @property
    def name(self) -> str:
        return self.shm.name

    @classmethod
    def create(cls, name: str, slots: int, height: int, width: int) -> FrameRing:
        """ResourceError (one line) when /dev/shm cannot hold the ring."""
        size = slots * (HEADER_SIZE + height * width * 3)
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        except FileExistsError:  # a stale segment of a dead run with this very name
            unlink(name)
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        # Cleanup is the engine's own (owner's close, launcher's stop and stale sweep): the resource
        # tracker would only warn about segments a killed process could not close.
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
        reserve(shm, size, f"{slots} frames of {width}x{height}")
        ring = cls(shm, slots, height, width, owner=True)
        for slot in range(slots):
            HEADER.pack_into(shm.buf, slot * ring.slot_bytes, 0, NO_FRAME, 0, 0, 0)
        return ring

    @classmethod
    def attach(cls, name: str, slots: int, height: int, width: int) -> FrameRing:
        shm = shared_memory.SharedMemory(name=name, create=False)
        # Python's resource tracker would unlink the segment when this (non-owning) process exits.
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001 - no public API before 3.13
        return cls(shm, slots, height, width, owner=False)

    def _pixels(self, slot: int, shape: tuple[int, int, int]) -> np.ndarray:
        start = slot * self.slot_bytes + HEADER_SIZE
        return np.ndarray(shape, np.uint8, self.shm.buf, start)

    def header(self, slot: int) -> tuple[int, int, int, int, int]:
        return HEADER.unpack_from(self.shm.buf, slot * self.slot_bytes)

    def write(self, slot: int, seq: int, image: np.ndarray) -> None:
        """Copies `image` into `slot` and publishes it as frame `seq`."""
        view = self.begin_write(slot, image.shape)
        np.copyto(view, image)
        self.end_write(slot, seq, image.shape)

    def begin_write(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        """Marks `slot` busy and returns a writable view, for writers that render in place."""
        h, w, c = shape
        if h > self.height or w > self.width or c != 3:
            raise ValueError(f"frame {shape} does not fit ring slots of {self.height}x{self.width}x3")
        state = self.header(slot)[0]
        HEADER.pack_into(self.shm.buf, slot * self.slot_bytes, state | 1, NO_FRAME, h, w, c)
        return self._pixels(slot, shape)

    def end_write(self, slot: int, seq: int, shape: tuple[int, ...]) -> None:
        state = self.header(slot)[0]
        HEADER.pack_into(self.shm.buf, slot * self.slot_bytes, state + 1, seq, *shape)

    def view(self, slot: int, seq: int) -> tuple[np.ndarray, int]:
        """A read-only view of frame `seq` and the slot state to `check` once done with it."""
        state, have, h, w, c = self.header(slot)
        if state & 1 or have != seq:
            raise StaleSlot(f"{self.name} slot {slot}: frame {seq} asked, slot holds {have}")
        image = self._pixels(slot, (h, w, c))
        image.flags.writeable = False
        return image, state

    def check(self, slot: int, seq: int, state: int) -> None:
        """Raises StaleSlot if the slot changed since `view` returned `state`."""
        now, have, *_ = self.header(slot)
        if now != state or have != seq:
            raise StaleSlot(f"{self.name} slot {slot}: frame {seq} was overwritten while in use")

    def read(self, slot: int, seq: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """A private copy of frame `seq` (of its `box`, x0, y0, x1, y1, where given), checked after the copy."""
        view, state = self.view(slot, seq)
        image = (view if box is None else view[box[1] : box[3], box[0] : box[2]]).copy()
        self.check(slot, seq, state)
        return image

    def close(self) -> None:
        self.shm.close()
        if self.owner:
            unlink(self.name)


def unlink(name: str) -> None:
    try:
        os.unlink(SHM_DIR / name)
    except FileNotFoundError:
        pass


MAKER = re.compile(r"x(\d+)(o\d+)?$")  # a segment's name ends with its maker's pid: `CAMERAx{pid}`, `CAMERAx{pid}o{n}`


def maker(name: str) -> int | None:
    """The pid of the process that made the segment `name`."""
    found = MAKER.search(name)
    return int(found.group(1)) if found else None


def made_by(instance: str, pid: int) -> list[str]:
    """The segments process `pid` made for `instance`, which it alone would have unlinked: a capture's ring
    (`CAMERAx{pid}`), a compositor's output rings (`CAMERAx{pid}o{n}`)."""
    return [name for name in instance_segments(instance) if maker(name) == pid]


def remove_orphaned_segments(instance: str) -> list[str]:
    """Unlinks the segments of `instance` whose maker (the pid in their name, `made_by`) is dead; returns their
    names. A stage starting cleans up after a predecessor killed outright where no launcher did (stages under
    honcho, which SIGKILLs a stage still draining after 5 s: 62 MB left in /dev/shm each run)."""
    removed = []
    for name in instance_segments(instance):
        pid = maker(name)
        if pid is None or process_alive(pid):  # another user's process counts as alive: not ours
            continue
        with contextlib.suppress(FileNotFoundError, PermissionError):
            unlink(name)
            removed.append(name)
    return removed


def instance_segments(instance: str | None = None) -> list[str]:
    """Names of the engine's segments in /dev/shm, of one instance or of all."""
    pattern = f"{PREFIX}-{instance}-*" if instance else f"{PREFIX}-*"
    return sorted(p.name for p in SHM_DIR.glob(pattern))


def remove_stale_segments(alive) -> list[str]:
    """Unlinks the segments of instances for which `alive(instance)` is False; returns their names.

    A segment this user may not remove (another user's engine, whose run folder is not ours to see)
    is left alone: it is not this engine's to clean, and must not stop it from starting."""
    removed = []
    for name in instance_segments():
        instance = name[len(PREFIX) + 1 :].split("-", 1)[0]
        if not alive(instance):
            try:
                unlink(name)
            except PermissionError:
                continue
            removed.append(name)
    return removed


class RingCache:
    """Attached rings by name, for readers of many cameras' rings."""

    def __init__(self) -> None:
        self._rings: dict[str, FrameRing] = {}
        self._pruned_at = float("-inf")

    def get(self, name: str, slots: int, height: int, width: int) -> FrameRing:
        ring = self._rings.get(name)
        if ring is None:
            ring = self._rings[name] = FrameRing.attach(name, slots, height, width)
        return ring

    def drop(self, name: str) -> None:
        ring = self._rings.pop(name, None)
        if ring is not None:
            ring.close()

    def prune(self) -> None:
        """Drops the rings whose segment is gone (a stage that died: the launcher unlinked what it made), so that
        their memory is freed: a frame of one still to be read is then stale, as if its slot had been reused.
        Called as often as the caller likes (between frames): it looks at most every PRUNE_EVERY_S."""
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        for name in [name for name in self._rings if not (SHM_DIR / name).exists()]:
            self.drop(name)

    def close(self) -> None:
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
