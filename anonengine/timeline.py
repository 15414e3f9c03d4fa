"""One camera's timeline: frames put back in order, with look-ahead, deadlines, duplicates and drops.

Detections come back out of order (several detector workers, batches, restarts); a frame may go out
only once its own detections and those of the `lookahead` frames after it are known, so that a person
about to appear is hidden already. A frame whose detections are later than the deadline must not hold
the camera: it goes out late (obscured, or dropped), never raw. This class decides which frame goes
out next and nothing else: no sockets, no clocks of its own (the clock is injected), no pixels. The
engine's compositor and the single-process `--inline` path both use it; it is tested on its own.

Life of a frame: `offer` (it exists: its deadline starts), `answer` (its detections), then `next`
names it once it may go out, and the caller says `done` (it went out, or was dropped as late) or
`retry` (it could not be read: wait for it to be offered again).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")  # what the caller keeps of an offered frame (a FrameRef, a decoded frame)
Result = TypeVar("Result")  # a detector's answer


@dataclass(frozen=True)
class Turn(Generic[Item, Result]):
    """The frame whose turn it is: with its detections, or `late` (past its deadline, none came)."""

    seq: int
    item: Item | None
    result: Result | None
    late: bool


class Timeline(Generic[Item, Result]):
    def __init__(self, lookahead: int, deadline_s: float = math.inf, next_seq: int = 0,
                 clock: Callable[[], float] = time.monotonic, live: bool = False) -> None:
        """`live`: a live camera's, whose frames may stop coming (the camera dropped): a frame that waited its
        deadline for the frames after it goes out without those not come yet."""
        self.lookahead, self.deadline_s, self.clock, self.live = lookahead, deadline_s, clock, live
        self.last_offer = clock()  # when the newest frame was offered: a live camera quiet since is down
        self.next_seq = next_seq
        self.end: int | None = None  # no frame has seq >= end
        self.results: dict[int, Result] = {}
        self.offered: dict[int, tuple[Item, float]] = {}  # seq -> (item, when offered)
        self.dropped: set[int] = set()

    # --- what happens to frames ----------------------------------------------------------------------
    def offer(self, seq: int, item: Item) -> None:
        """Frame `seq` exists; its deadline runs from now (a frame offered again keeps its first time)."""
        if seq >= self.next_seq and seq not in self.dropped:
            self.offered.setdefault(seq, (item, self.clock()))
            self.last_offer = self.clock()

    def answer(self, seq: int, result: Result) -> bool:
        """Its detections; False for a frame that went out already (a duplicate), or never comes."""
        if seq < self.next_seq or seq in self.dropped:
            return False
        self.results[seq] = result
        return True

    def drop(self, seq: int) -> bool:
        """A frame that will never come (a live source took its slot back); False if it went out already."""
        if seq < self.next_seq:
            return False
        self.dropped.add(seq)
        self.results.pop(seq, None)
        self.offered.pop(seq, None)
        return True

    def starts_again_at(self, seq: int) -> None:
        """The stream's frames go on from `seq` (a live camera's capture restarted, numbering after a gap):
        the frames before it not offered yet never come; those offered still go out, answered or late."""
        for missing in range(self.next_seq, seq):
            if missing not in self.offered and missing not in self.results:
                self.dropped.add(missing)

    def end_at(self, frames: int) -> None:
        """The stream ends: frames 0 .. frames-1 exist, no more; the last ones need no look-ahead."""
        self.end = frames

    def stop(self) -> None:
        """Nothing more goes out (the stream failed or was interrupted)."""
        self.results.clear()
        self.offered.clear()
        self.end = self.next_seq

    # --- what goes out -----------------------------------------------------------------------------------
    def next(self) -> Turn[Item, Result] | None:
        """The frame that may go out now, in order, or None while it must wait."""
        while self.next_seq in self.dropped:
            self.dropped.discard(self.next_seq)
            self.results.pop(self.next_seq, None)
            self.offered.pop(self.next_seq, None)
            self.next_seq += 1
        seq = self.next_seq
        if self.finished:
            return None
        item = self.offered.get(seq, (None, 0.0))[0]
        if seq in self.results:
            if self._lookahead_known(seq):
                return Turn(seq, item, self.results[seq], late=False)
            return None
        if self._late(seq):
            return Turn(seq, item, None, late=True)
        return None

    def done(self, seq: int) -> None:
        """Frame `seq` (the next one) went out, or was dropped as late."""
        assert seq == self.next_seq, f"frame {seq} done out of turn (next is {self.next_seq})"
        self.results.pop(seq, None)
        self.offered.pop(seq, None)
        self.next_seq += 1

    def retry(self, seq: int) -> None:
        """Frame `seq` could not be used (its slot was reused): forget it until it is offered again."""
        self.results.pop(seq, None)
        self.offered.pop(seq, None)

    def future(self, seq: int) -> list[Result]:
        """The detections known of the `lookahead` frames after `seq`, in order."""
        return [result for _, result in self.upcoming(seq)]

    def upcoming(self, seq: int) -> list[tuple[Item | None, Result]]:
        """`future(seq)` with each detection's frame (None: not offered)."""
        ahead = range(seq + 1, seq + 1 + self.lookahead)
        return [(self.offered.get(s, (None, 0.0))[0], self.results[s]) for s in ahead if s in self.results]

    @property
    def finished(self) -> bool:
        return self.end is not None and self.next_seq >= self.end

    # --- helpers ------------------------------------------------------------------------------------------
    def _late(self, seq: int) -> bool:
        offered = self.offered.get(seq)
        return offered is not None and self.clock() - offered[1] >= self.deadline_s

    def _lookahead_known(self, seq: int) -> bool:
        """The frames after `seq` are answered, dropped, past the end, or late (late ones hold nobody); for a
        live camera that sent nothing for its deadline (it dropped), a frame does not wait for those not come
        yet: it held its last 8 frames back for its whole outage, from the recording and the tap. (A camera
        slower than the look-ahead a deadline, 4 frames/s, keeps its look-ahead: it is not quiet.)"""
        waited_out = self.live and self.clock() - self.last_offer >= self.deadline_s
        for ahead in range(seq + 1, seq + 1 + self.lookahead):
            if self.end is not None and ahead >= self.end:
                return True
            known = ahead in self.results or ahead in self.dropped or self._late(ahead)
            if not known and not (waited_out and ahead not in self.offered):
                return False
        return True
