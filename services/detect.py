"""Detect: one of N workers that take frames from every camera, in batches, and find the persons.

A worker connects to each capture's frames endpoint (new cameras are found as they appear), so
batches mix cameras and several workers share the load. Frames are read in place from the capture's
ring; the slot is checked again after inference, and a frame whose slot was reused meanwhile is
reported stale instead of with detections that belong to another picture.
"""

from __future__ import annotations

import os
import time
from collections import deque
from fractions import Fraction

import zmq

from anonengine import messages
from anonengine.engine.runtime import POLL_MS, Service, ToCompositors
from anonengine.schedule import DetectionSchedule
from anonengine.shm import RingCache, StaleSlot
from anonengine.stages import DetectStage

# Buckets of the detector's histograms (Prometheus' defaults suit web requests, not model runs).
LATENCY_BOUNDS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64)

RESCAN_S = 0.5
# A restarted detector waits this long at most for a camera's frames in flight to come again in order
# (the launcher has the captures offer them again once it is ready): its schedule decides in order.
CATCH_UP_S = 5.0
# What the detect workers take of the cores between them, unless detector.threads says: the compositors and
# encoders run beside them.
DETECT_CPU_SHARE = 0.5


class DetectService(Service):
    stage = "detect"

    def __init__(self, cfg, instance: str, worker: str) -> None:
        super().__init__(cfg, instance, worker)
        self.detector = DetectStage(cfg.anonymizer, cfg.engine.max_batch,
                                    cpu_share=DETECT_CPU_SHARE / cfg.engine.detect_workers)
        self.rings = RingCache()
        self.connected: set[str] = set()
        self._last_scan = 0.0
        self.schedules: dict[str, DetectionSchedule] = {}
        self.streams: dict[str, str] = {}  # camera -> the ring its frames come in (a new capture, a new ring)
        self.catching_up: dict[str, float] = {}  # camera -> until when frames out of order wait (restarted)
        # A camera's frames that came while its last wanted frame was still being detected, or out of order
        # while catching up: whether they are wanted depends on the frames before them.
        self.held: deque[messages.FrameRef] = deque()
        self.stalled = False  # the last round detected nothing: every frame in hand waits
        # Decisions are remembered for the frames a camera can have in flight (its ring, as the capture sizes a
        # recording's: its future fill and its longer look-ahead), and a batch more.
        anonymizer = cfg.anonymizer
        self.in_flight = (cfg.engine.ring_slots + anonymizer.background.future_frames
                          + anonymizer.lookahead(live=False) - anonymizer.hold.lookahead_frames + cfg.engine.max_batch)

    def setup(self) -> None:
        self.detector.setup()
        self.frames_in = self.context.socket(zmq.PULL)
        self.frames_in.setsockopt(zmq.RCVHWM, self.cfg.engine.max_batch)
        self.frames_in.setsockopt(zmq.LINGER, 0)
        self.frames_in.setsockopt(zmq.MAXMSGSIZE, messages.MAX_MESSAGE_BYTES)
        self.results = ToCompositors(self)
        self._connect_cameras()
        self.log.info("ready (pid %d, device %s)", os.getpid(), self.detector.detector.device)

    def _connect_cameras(self) -> None:
        now = time.monotonic()
        if now - self._last_scan < RESCAN_S:
            return
        self._last_scan = now
        self.rings.prune()  # between batches: no frame of a ring is in use
        for camera in self.endpoints.frame_cameras():
            if camera not in self.connected:
                self.frames_in.connect(self.endpoints.frames(camera))
                self.connected.add(camera)

    def step(self) -> bool:
        if self.stopping:
            return False
        self._connect_cameras()
        batch = self._gather()
        if batch:
            self._detect(batch)
        return True

    def _gather(self) -> list[messages.FrameRef]:
        """The frames held back, then up to max_batch new ones: waits for the first, then at most
        max_wait_ms for the rest."""
        batch, waiting = list(self.held), len(self.held)
        self.held.clear()
        if not self.wait(self.frames_in, 0 if batch and not self.stalled else POLL_MS):
            return batch
        batch.extend(self._decoded(self.frames_in.recv()))
        # A backend that runs frames one at a time gains nothing from a fuller batch: take what is there.
        wait_ms = self.cfg.engine.max_wait_ms if self.detector.detector.batches else 0
        deadline = time.monotonic() + wait_ms / 1000
        while len(batch) - waiting < self.cfg.engine.max_batch:  # frames held back never starve the others
            left = deadline - time.monotonic()
            if left <= 0 and not self.frames_in.poll(0):
                break
            if not self.wait(self.frames_in, max(0, int(left * 1000))):
                break
            batch.extend(self._decoded(self.frames_in.recv()))
        return batch

    def _decoded(self, data: bytes) -> list[messages.FrameRef]:
        try:
            message = messages.decode(data)
        except messages.MessageError as exc:
            self.malformed(exc)
            return []
        if not isinstance(message, messages.FrameRef):
            self.malformed(messages.MessageError(f"unexpected {type(message).__name__} on the frames socket"))
            return []
        return [message]

    def _detect(self, batch: list[messages.FrameRef]) -> None:
        views, states, readable = [], [], []
        for ref in batch:
            schedule = self._schedule(ref)
            if not schedule.can_decide(ref.seq, ref.pts) or self._out_of_order(ref, schedule):
                self.held.append(ref)
                continue
            if not schedule.wants(ref.seq, ref.pts, ref.last, ref.at_break, ref.changed,
                                  messages.unpack_cells(ref.came)):
                self._answer(ref, "skipped", None, 0)
                continue
            try:
                ring = self.rings.get(ref.ring, ref.slots, ref.height, ref.width)
                view, state = ring.view(ref.slot, ref.seq)
            except (StaleSlot, FileNotFoundError):
                self._answer(ref, "stale", None, len(batch))
                schedule.withdraw(ref.seq, ref.pts)
                continue
            views.append(view)
            states.append(state)
            readable.append(ref)
        self.stalled = len(self.held) == len(batch)
        if not readable:
            if not self.stalled:  # every frame held: nothing was decided, nothing to keep
                self._keep_schedules(batch)
            return
        started = time.perf_counter()
        found = self.detector.process(views, [Fraction(*ref.pixel_aspect) for ref in readable],
                                      [ref.camera for ref in readable], [ref.turned for ref in readable])
        self.observe("latency_seconds", time.perf_counter() - started, LATENCY_BOUNDS_S)
        self.observe("batch_size", len(readable), BATCH_BOUNDS)
        self.count("batches")
        self.count("frames_run", len(readable))
        for ref, state, det in zip(readable, states, found):
            try:
                self.rings.get(ref.ring, ref.slots, ref.height, ref.width).check(ref.slot, ref.seq, state)
            except StaleSlot:
                self._answer(ref, "stale", None, len(readable))
                self.schedules[ref.camera].withdraw(ref.seq, ref.pts)
                continue
            self.schedules[ref.camera].saw(ref.seq, det)
            status = "failed" if det is None else "ok"
            self._answer(ref, status, None if det is None else messages.pack_detections(det), len(readable))
        self._keep_schedules(batch)

    def _schedule(self, ref: messages.FrameRef) -> DetectionSchedule:
        """The camera's schedule: as this worker's predecessor left it (it died mid-stream), or new; new again
        when another stream of the camera starts from its first frame (the camera attached again). A restarted
        capture goes on with its predecessor's stream, from frame 0 too when nothing was written yet: its frames
        get the decisions they got (a new schedule had decided them afresh, and changed the output's pixels)."""
        camera = ref.camera
        if camera in self.schedules and ref.ring != self.streams[camera] and ref.seq == 0 and not ref.continues:
            del self.schedules[camera]
        self.streams[camera] = ref.ring
        if camera not in self.schedules:
            self.schedules[camera] = self.detector.schedule(self.in_flight, self._ahead(ref))
            if ref.seq > 0:
                self._take_over(ref)
        return self.schedules[camera]

    def _ahead(self, ref: messages.FrameRef) -> int:
        """The frames the camera's compositor has each wait for (as `CompositeStage.start` computes them)."""
        return self.cfg.anonymizer.background.frames_ahead(ref.live, ref.width, ref.height)

    def _take_over(self, ref: messages.FrameRef) -> None:
        camera = ref.camera
        state = self.kept(self._schedule_name(camera), messages.ScheduleState, "schedule")
        if state is None:
            return
        try:
            self.schedules[camera].restore(state)
        except Exception as exc:  # noqa: BLE001 - inconsistent: start afresh (every frame, until known)
            self.schedules[camera] = self.detector.schedule(self.in_flight, self._ahead(ref))
            self.log.warning("%s: predecessor's schedule unusable (%s); starting afresh", camera, exc)
            return
        self.catching_up[camera] = time.monotonic() + CATCH_UP_S
        self.log.info("%s: schedule taken over from the last frame it decided, %s", camera,
                      self.schedules[camera].last_decided)

    def _out_of_order(self, ref: messages.FrameRef, schedule: DetectionSchedule) -> bool:
        """Whether a restarted detector holds the frame back: one came before the frames in flight were
        offered again, ahead of them (they come in order once the launcher asks the captures)."""
        until = self.catching_up.get(ref.camera)
        if until is None:
            return False
        if time.monotonic() > until:
            del self.catching_up[ref.camera]
            return False
        last = schedule.last_decided
        return last is not None and ref.seq > last + 1 and (ref.seq, ref.pts) not in schedule.decided

    def _keep_schedules(self, batch: list[messages.FrameRef]) -> None:
        """Writes the schedules of the batch's cameras where a successor finds them. At stride 1 every frame is
        wanted: there is nothing to keep. One that cannot be written (a full disk) only costs a successor
        its start: it detects every frame until the detections tell who is there."""
        if self.cfg.anonymizer.detector.stride == 1:
            return
        for camera in {ref.camera for ref in batch}:
            self.keep(self._schedule_name(camera), self.schedules[camera].snapshot(), "schedule")

    def _schedule_name(self, camera: str) -> str:
        return f"schedule-{self.camera}-{camera}"

    def _answer(self, ref, status: str, persons, batch: int) -> None:
        self.results.send(ref.composite, messages.Detected(ref, status, persons, worker=self.camera, batch=batch))
        self.count(f"frames_{status}")

    def close(self) -> None:
        self.rings.close()


def main(argv=None) -> int:
    from anonengine.engine.runtime import run_service

    def extra(parser):
        parser.add_argument("--worker", default="0", help="worker name, for logs and stats")

    return run_service(lambda cfg, args: DetectService(cfg, args.instance, f"w{args.worker}"), argv, extra)


if __name__ == "__main__":
    from anonengine.interrupts import exit_process

    exit_process(main())
