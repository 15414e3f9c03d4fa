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


class DetectService(Service):
    stage = "detect"

    def __init__(self, cfg, instance: str, worker: str) -> None:
        super().__init__(cfg, instance, worker)
        self.detector = DetectStage(cfg.anonymizer, cfg.engine.max_batch)
        self.rings = RingCache()
        self.connected: set[str] = set()
        self._last_scan = 0.0
        self.schedules: dict[str, DetectionSchedule] = {}
        # A camera's frames that came while its last wanted frame was still being detected: whether they
        # are wanted depends on what that detection finds.
        self.held: deque[messages.FrameRef] = deque()

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
        batch = list(self.held)
        self.held.clear()
        if not self.frames_in.poll(0 if batch else POLL_MS):
            return batch
        batch.extend(self._decoded(self.frames_in.recv()))
        # A backend that runs frames one at a time gains nothing from a fuller batch: take what is there.
        wait_ms = self.cfg.engine.max_wait_ms if self.detector.detector.batches else 0
        deadline = time.monotonic() + wait_ms / 1000
        while len(batch) < self.cfg.engine.max_batch:
            left = deadline - time.monotonic()
            if left <= 0 and not self.frames_in.poll(0):
                break
            if not self.frames_in.poll(max(0, int(left * 1000))):
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
            schedule = self._schedule(ref.camera)
            if not schedule.can_decide(ref.seq, ref.pts):
                self.held.append(ref)
                continue
            if not schedule.wants(ref.seq, ref.pts, ref.last):
                self._answer(ref, "skipped", None, 0)
                continue
            try:
                ring = self.rings.get(ref.ring, ref.slots, ref.height, ref.width)
                view, state = ring.view(ref.slot, ref.seq)
            except (StaleSlot, FileNotFoundError):
                self._answer(ref, "stale", None, len(batch))
                self.schedules[ref.camera].saw(ref.seq, None)
                continue
            views.append(view)
            states.append(state)
            readable.append(ref)
        if not readable:
            self._keep_schedules(batch)
            return
        started = time.perf_counter()
        found = self.detector.process(views)
        self.observe("latency_seconds", time.perf_counter() - started, LATENCY_BOUNDS_S)
        self.observe("batch_size", len(readable), BATCH_BOUNDS)
        self.count("batches")
        self.count("frames_run", len(readable))
        for ref, state, det in zip(readable, states, found):
            try:
                self.rings.get(ref.ring, ref.slots, ref.height, ref.width).check(ref.slot, ref.seq, state)
            except StaleSlot:
                det, status = None, "stale"
            else:
                status = "failed" if det is None else "ok"
            self.schedules[ref.camera].saw(ref.seq, det)
            self._answer(ref, status, None if det is None else messages.pack_detections(det), len(readable))
        self._keep_schedules(batch)

    def _schedule(self, camera: str) -> DetectionSchedule:
        """The camera's schedule: new, or as this worker's predecessor left it (it died mid-stream)."""
        if camera not in self.schedules:
            schedule = self.schedules[camera] = self.detector.schedule()
            try:
                state = messages.decode(self._schedule_path(camera).read_bytes())
                if isinstance(state, messages.ScheduleState):
                    schedule.restore(state)
                    self.log.info("%s: schedule taken over from the last frame it wanted, %s", camera,
                                  state.last_seq)
            except FileNotFoundError:
                pass
            except (OSError, ValueError, messages.MessageError) as exc:  # torn or foreign: start afresh
                self.schedules[camera] = self.detector.schedule()
                self.log.warning("%s: predecessor's schedule unreadable (%s); starting afresh", camera, exc)
        return self.schedules[camera]

    def _keep_schedules(self, batch: list[messages.FrameRef]) -> None:
        """Writes the schedules of the batch's cameras where a successor finds them. At stride 1 every frame is
        wanted: there is nothing to keep."""
        if self.cfg.anonymizer.detector.stride == 1:
            return
        for camera in {ref.camera for ref in batch}:
            path = self._schedule_path(camera)
            staged = path.with_name(f"{path.name}.partial")
            staged.write_bytes(messages.encode(self.schedules[camera].snapshot()))
            os.replace(staged, path)

    def _schedule_path(self, camera: str):
        return self.endpoints.dir / f"schedule-{self.camera}-{camera}"

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
