"""What the launcher knows of a running engine, in one snapshot: per camera state and counters, per
stage health, and whether the engine is ready. `/metrics`, `/readyz`, the page and `anonengine
status` all read the same snapshot, built by the launcher's thread and handed over whole (the HTTP
server's thread never sees the launcher's own dicts change under it).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

from anonengine import messages

# Counters that are levels, not totals: only a process's latest report counts, a dead one's none.
GAUGES = frozenset({"in_flight", "waiting", "recorded"})  # "recorded": the frames in a camera's recording, those of
# encoders killed outright since their last report too
FPS_WINDOW_S = 10.0  # frames out over this window make a camera's frames per second
DEGRADED_WINDOW_S = 10.0  # a camera that obscured a frame this recently is degraded
# A live camera that had this share of its frames dropped over the last DEGRADED_WINDOW_S is degraded: the engine is
# behind it. (Four live cameras on two cores: 70 to 86% of their frames dropped for 13 minutes, every frame counted,
# while status, /readyz and the log said all was well.)
BEHIND_SHARE = 0.1
# A live camera from which no frame came for this long is degraded, though its source is not lost yet (that takes
# `sources.stall_s`, 20 s): a camera whose sender stopped was said to run well, /readyz 200, for those 20 s.
SILENT_S = 5.0

# Camera states; a camera is ready in the first two.
RUNNING, DONE = "running", "done"
STARTING, CONNECTING, RECONNECTING, RESTARTING = "starting", "connecting", "reconnecting", "restarting"
DEGRADED, FAILED, STOPPING = "degraded", "failed", "stopping"
CAMERA_STATES = (RUNNING, DONE, STARTING, CONNECTING, RECONNECTING, RESTARTING, DEGRADED, FAILED, STOPPING)


class Tally:
    """Every stage process's latest report, kept after it dies: a stage's counters are totals since it
    started, so the engine's total is the sum over the processes it ran, and never goes backwards when a
    stage restarts (as Prometheus counters must not)."""

    def __init__(self) -> None:
        self.reports: dict[tuple[str, str, int], messages.Stats] = {}
        self.alive: dict[tuple[str, str], int] = {}  # (stage, name) -> the pid reporting last

    def add(self, stats: messages.Stats) -> None:
        self.reports[(stats.stage, stats.name, stats.pid)] = stats
        self.alive[(stats.stage, stats.name)] = stats.pid

    def _counted(self, stats: messages.Stats, counter: str) -> bool:
        return counter not in GAUGES or self.alive.get((stats.stage, stats.name)) == stats.pid

    def total(self, stage: str, counter: str) -> int:
        return sum(s.counters.get(counter, 0) for s in self.reports.values()
                   if s.stage == stage and self._counted(s, counter))

    def total_of_all(self, counter: str) -> int:
        return sum(s.counters.get(counter, 0) for s in self.reports.values())

    def camera_total(self, stage: str, counter: str, camera: str) -> int:
        """A camera's share of a counter: a capture reports for its one camera, other stages split theirs."""
        found = 0
        for s in self.reports.values():
            if s.stage != stage or not self._counted(s, counter):
                continue
            found += s.counters.get(counter, 0) if s.name == camera and stage == "capture" else \
                s.cameras.get(camera, {}).get(counter, 0)
        return found

    def histogram(self, stage: str, name: str) -> messages.Histogram | None:
        merged = None
        for s in self.reports.values():
            h = s.histograms.get(name) if s.stage == stage else None
            if h is None:
                continue
            if merged is None:
                merged = messages.Histogram(h.bounds, [0] * len(h.counts))
            if h.bounds == merged.bounds:
                merged.counts = [a + b for a, b in zip(merged.counts, h.counts)]
                merged.total += h.total
        return merged


@dataclass(frozen=True)
class CameraView:
    name: str
    state: str
    reason: str  # why it is not running ('' when it is)
    live: bool
    frames: dict[str, int]  # in, out, dropped, late, obscured
    fps: float
    reconnects: int
    in_flight: int  # frames between capture and encoder
    waiting: int  # of those, frames composited and waiting for the future's fill (recordings)
    last_error: str | None
    source: str | None = None  # a live source's own state (connecting, running, reconnecting, stopped)
    dropping: float = 0.0  # of the frames that came over the last DEGRADED_WINDOW_S, the share dropped (`Dropping`)

    @property
    def ready(self) -> bool:
        return self.state in (RUNNING, DONE)


@dataclass(frozen=True)
class StageView:
    name: str  # the process's name (detect0, capture-lobby)
    stage: str
    up: bool  # running and heard from
    restarts: int  # since the engine started


@dataclass(frozen=True)
class Snapshot:
    instance: str
    taken: float  # time.time()
    stopping: bool
    cameras: tuple[CameraView, ...]
    stages: tuple[StageView, ...]
    malformed: int
    shared_memory_bytes: int
    histograms: dict[str, messages.Histogram] = field(default_factory=dict)  # detector latency, batch size
    tap_dropped: int = 0
    restart_totals: dict[str, int] = field(default_factory=dict)  # by stage, processes gone included

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts of each stage's processes since the engine started: of those gone too (a capture detached
        and attached again, whose count went back to 0 with its process)."""
        return {**{stage.stage: 0 for stage in self.stages}, **self.restart_totals}

    @property
    def ready(self) -> bool:
        return not self.stopping and all(c.ready for c in self.cameras) and all(s.up for s in self.stages
                                                                                 if s.stage != "capture")

    def reasons(self) -> list[str]:
        """Why the engine is not ready, one line each (empty when it is)."""
        if self.stopping:
            return ["stopping"]
        found = [f"{s.name}: {'restarting' if s.restarts else 'starting'}" for s in self.stages
                 if not s.up and s.stage != "capture"]
        return found + [f"camera {c.name}: {c.state}{f' ({c.reason})' if c.reason else ''}"
                        for c in self.cameras if not c.ready]

    def as_status(self) -> dict:
        """The JSON of `anonengine status` and the page: the same facts as /readyz and /metrics."""
        return {
            "instance": self.instance, "ready": self.ready, "reasons": self.reasons(),
            "cameras": {c.name: {"state": c.state, "reason": c.reason, "live": c.live, "fps": round(c.fps, 2),
                                 "frames": c.frames, "reconnects": c.reconnects, "in_flight": c.in_flight, "waiting": c.waiting,
                                 "last_error": c.last_error, "source": c.source, "dropping": round(c.dropping, 3)}
                        for c in self.cameras},
            "done": [c.name for c in self.cameras if c.state == DONE],
            "failed": {c.name: c.reason for c in self.cameras if c.state == FAILED},
            "stages": {s.name: {"stage": s.stage, "up": s.up, "restarts": s.restarts} for s in self.stages},
            "malformed": self.malformed, "shared_memory_bytes": self.shared_memory_bytes,
        }


def _keep_window(samples: collections.deque, sample: tuple, window_s: float) -> collections.deque:
    """`samples` ((time, ...) in order) with `sample` added, less those before the last that still spans
    `window_s` to it."""
    samples.append(sample)
    while len(samples) > 2 and sample[0] - samples[1][0] >= window_s:
        samples.popleft()
    return samples


class FrameRates:
    """Frames out per second for each camera, over the last FPS_WINDOW_S, from the counts its encoder reported
    and when each report came (`report`). Sampled when read instead, between reports that come every
    `engine.stats_interval_s` (2 s), a 25-fps camera read 18 to 29."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.samples: dict[str, collections.deque] = {}

    def report(self, camera: str, frames_out: int) -> None:
        now = self.clock()
        _keep_window(self.samples.setdefault(camera, collections.deque()), (now, frames_out), FPS_WINDOW_S)

    def rate(self, camera: str) -> float:
        samples = self.samples.get(camera)
        if not samples or self.clock() - samples[-1][0] > FPS_WINDOW_S:
            return 0.0  # no report for that long: the encoder is gone, or the camera
        (t0, f0), (t1, f1) = samples[0], samples[-1]
        return (f1 - f0) / (t1 - t0) if t1 - t0 >= 0.5 else 0.0


class Dropping:
    """The share of each camera's frames dropped (`dropped` of `came`, totals) over the last DEGRADED_WINDOW_S,
    from the totals seen at each snapshot."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.samples: dict[str, collections.deque] = {}
        self.came_at: dict[str, tuple[int, float]] = {}  # camera -> (frames come, when that count was first seen)

    def idle_s(self, camera: str) -> float:
        """Seconds since a frame of the camera last came (as of the last `share`)."""
        return self.clock() - self.came_at[camera][1] if camera in self.came_at else 0.0

    def restart(self, camera: str) -> None:
        """Forgets the camera's samples: its share is counted from its next."""
        self.samples.pop(camera, None)

    def share(self, camera: str, came: int, dropped: int) -> float:
        now = self.clock()
        if camera not in self.came_at or came > self.came_at[camera][0]:
            self.came_at[camera] = (came, now)
        samples = _keep_window(self.samples.setdefault(camera, collections.deque()), (now, came, dropped),
                               DEGRADED_WINDOW_S)
        (_, came0, dropped0), (_, came1, dropped1) = samples[0], samples[-1]
        return (dropped1 - dropped0) / (came1 - came0) if came1 > came0 else 0.0


class Obscuring:
    """When each camera last had a frame obscured (its detections late or failed)."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.seen: dict[str, tuple[int, float]] = {}

    def recent(self, camera: str, obscured: int) -> bool:
        before = self.seen.get(camera)
        if before is None or obscured > before[0]:
            self.seen[camera] = (obscured, self.clock() if obscured else float("-inf"))
        return self.clock() - self.seen[camera][1] < DEGRADED_WINDOW_S
