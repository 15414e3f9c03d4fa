"""Composite: owns each camera's background, puts frames back in order, writes anonymized frames.

Detector workers finish out of order; results wait here until their camera's next seq is complete.
A frame whose detection failed is emitted fully obscured, never raw. The input slot goes back to the
capture only once the encoder has released the output slot: until a frame is written, the capture
still holds it and offers it again if this process or a detector died.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import zmq

from anonengine import messages
from anonengine.detections import Detections
from anonengine.engine.runtime import POLL_MS, Service, receive_waiting, send
from anonengine.shm import FrameRing, RingCache, StaleSlot, segment_name
from anonengine.stages import CompositeStage
from anonengine.video import Frame


@dataclass
class CameraState:
    info: messages.StreamInfoMsg
    ring: FrameRing
    release: zmq.Socket
    next_seq: int
    free_slots: list[int]
    pending: dict[int, messages.Detected] = field(default_factory=dict)
    decoded: dict[int, Detections] = field(default_factory=dict)  # pending results unpacked, once each
    expected: dict[int, tuple[messages.FrameRef, float]] = field(default_factory=dict)  # seq -> (ref, captured at)
    held: dict[int, int] = field(default_factory=dict)  # out seq -> input slot, until encoded
    dropped: set[int] = field(default_factory=set)  # seqs a live capture took back before they were done
    end: int | None = None
    end_sent: bool = False


class CompositeService(Service):
    stage = "composite"

    def __init__(self, cfg, instance: str, worker: int = 0) -> None:
        super().__init__(cfg, instance, f"w{worker}")
        self.worker = worker
        self.compositing = CompositeStage(cfg.anonymizer)
        self.inputs = RingCache()
        self.cameras: dict[str, CameraState] = {}
        self.orphans: dict[str, dict[int, messages.Detected]] = {}
        self.orphan_refs: dict[str, dict[int, tuple[messages.FrameRef, float]]] = {}
        self.finished_rings: set[str] = set()  # captures whose stream ended here: never started again

    def setup(self) -> None:
        self.compositing.setup()
        self.inbox = self.socket(zmq.PULL, self.endpoints.composite(self.worker), bind=True)
        self.encoder = self.socket(zmq.PUSH, self.endpoints.encode(self.worker % self.cfg.engine.encode_workers))
        self.log.info("ready (pid %d)", os.getpid())

    def step(self) -> bool:
        if self.inbox.poll(POLL_MS):
            for message in receive_waiting(self.inbox):
                self._handle(message)
        self._enforce_deadlines()
        # Stopped last but one: captures and detectors are gone, nothing more can complete a frame.
        return not self.stopping

    def _handle(self, message) -> None:
        if isinstance(message, messages.Detected):
            self._on_detected(message)
        elif isinstance(message, messages.FrameRef):
            self._on_captured(message)
        elif isinstance(message, messages.Dropped):
            self._on_dropped(message)
        elif isinstance(message, messages.StreamInfoMsg):
            self._on_stream(message)
        elif isinstance(message, messages.StreamEnd):
            self._on_end(message)
        elif isinstance(message, messages.Release):
            self._on_encoded(message)
        else:
            self.log.warning("unexpected %s", type(message).__name__)

    def _on_stream(self, info: messages.StreamInfoMsg) -> None:
        if info.ring in self.finished_rings:
            return  # a late re-announcement: restarting would overwrite the finished output
        state = self.cameras.get(info.camera)
        if state is not None:
            if state.info.ring != info.ring:  # the capture restarted: a new ring, same stream
                state.info = info
            return
        self.compositing.privacy_zones[info.camera] = info.privacy_zones
        slots = self.cfg.engine.ring_slots
        ring = FrameRing.create(
            segment_name(self.instance, f"{info.camera}x{os.getpid()}out"), slots, info.height, info.width
        )
        release = self.socket(zmq.PUSH, self.endpoints.capture(info.camera))
        state = self.cameras[info.camera] = CameraState(info, ring, release, info.next_seq, list(range(slots)))
        state.pending.update(self.orphans.pop(info.camera, {}))
        state.expected.update(self.orphan_refs.pop(info.camera, {}))
        out_info = messages.StreamInfoMsg(**{**info.__dict__, "ring": ring.name, "slots": slots})
        send(self.encoder, out_info)
        self._drain(state)

    def _on_captured(self, ref: messages.FrameRef) -> None:
        if ref.ring in self.finished_rings:
            return
        state = self.cameras.get(ref.camera)
        entry = (ref, time.monotonic())
        if state is None:
            self.orphan_refs.setdefault(ref.camera, {})[ref.seq] = entry
        elif ref.seq >= state.next_seq:
            state.expected.setdefault(ref.seq, entry)

    def _on_dropped(self, dropped: messages.Dropped) -> None:
        state = self.cameras.get(dropped.camera)
        if state is None or dropped.seq < state.next_seq:
            return  # already out: the capture only took back a slot it no longer needed
        state.dropped.add(dropped.seq)
        state.pending.pop(dropped.seq, None)
        state.decoded.pop(dropped.seq, None)
        state.expected.pop(dropped.seq, None)
        self.count("dropped")
        self._drain(state)

    def _enforce_deadlines(self) -> None:
        """Frames whose detections are overdue go out obscured (or are dropped): never raw, never waited for."""
        now = time.monotonic()
        for state in list(self.cameras.values()):
            deadline = self._deadline(state)
            self._drain(state)  # frames held back by a late look-ahead frame may be due now
            if state.info.camera not in self.cameras:
                continue
            while state.free_slots and state.next_seq not in state.pending:
                entry = state.expected.get(state.next_seq)
                if entry is None or now - entry[1] < deadline:
                    break
                self.count("late")
                before = state.next_seq
                if self.cfg.engine.late_frames == "drop":
                    self._skip(state, entry[0])
                else:
                    self._emit(state, messages.Detected(entry[0], "late"))
                if state.next_seq == before:  # its slot was reused: the capture offers it again
                    state.expected.pop(before, None)
                    break
                self._drain(state)
                if state.info.camera not in self.cameras:
                    break

    def _skip(self, state: CameraState, ref: messages.FrameRef) -> None:
        """Drops a frame: the capture gets its slot back, the encoder never sees it."""
        state.expected.pop(ref.seq, None)
        state.next_seq += 1
        send(state.release, messages.Release(ref.camera, ref.seq, ref.slot), block=False)

    def _on_detected(self, result: messages.Detected) -> None:
        camera, seq = result.frame.camera, result.frame.seq
        state = self.cameras.get(camera)
        if result.frame.ring in self.finished_rings:
            return
        if state is None:  # the stream's announcement is still on its way
            self.orphans.setdefault(camera, {})[seq] = result
            return
        if seq < state.next_seq:
            self.count("duplicates")
            return
        if result.status == "stale":
            self.count("stale")  # the capture offers the frame again if it is still due
            return
        state.pending[seq] = result
        self._drain(state)

    def _on_end(self, end: messages.StreamEnd) -> None:
        state = self.cameras.get(end.camera)
        if state is None:
            send(self.encoder, end)
            return
        state.end = end.frames
        if end.error or end.interrupted:  # nothing more of this stream is composited
            state.pending.clear()
            state.decoded.clear()
            state.end = state.next_seq
            send(self.encoder, end)
            state.end_sent = True
        self._drain(state)

    def _deadline(self, state: CameraState) -> float:
        return self.cfg.engine.live_deadline_s if state.info.live else self.cfg.engine.deadline_s

    def _ready(self, state: CameraState) -> bool:
        """The next frame has its detections and, with look-ahead, those of the frames after it
        (except frames past their deadline, which must not hold the others back)."""
        if state.next_seq not in state.pending:
            return False
        now = time.monotonic()
        for seq in range(state.next_seq + 1, state.next_seq + 1 + self.cfg.anonymizer.hold.lookahead_frames):
            if state.end is not None and seq >= state.end:
                break
            if seq not in state.pending and seq not in state.dropped:
                entry = state.expected.get(seq)
                if entry is None or now - entry[1] < self._deadline(state):
                    return False
        return True

    def _future(self, state: CameraState, seq: int) -> list:
        ahead = range(seq + 1, seq + 1 + self.cfg.anonymizer.hold.lookahead_frames)
        results = [state.pending.get(s) for s in ahead]
        return [self._found(state, r) for r in results if r is not None and r.status == "ok"]

    def _found(self, state: CameraState, result: messages.Detected) -> Detections:
        """A pending result's detections: with look-ahead each is needed up to N+1 times, unpacked once."""
        seq = result.frame.seq
        if seq not in state.decoded:
            state.decoded[seq] = messages.unpack_detections(result.persons)
        return state.decoded[seq]

    def _detections_of(self, state: CameraState, result: messages.Detected, shape) -> Detections | None:
        """What was found; empty between detections (the hold hides them); None (obscure) on failure."""
        if result.status == "ok":
            return self._found(state, result)
        if result.status == "skipped":
            return Detections.undetected(shape)
        return None

    def _drain(self, state: CameraState) -> None:
        while True:
            while state.next_seq in state.dropped:
                state.dropped.discard(state.next_seq)
                state.next_seq += 1
            if not (state.free_slots and self._ready(state)):
                break
            self._emit(state, state.pending.pop(state.next_seq))
        if state.end is not None and state.next_seq >= state.end and not state.end_sent:
            send(self.encoder, messages.StreamEnd(state.info.camera, state.end))
            state.end_sent = True
        self._forget_if_done(state)

    def _emit(self, state: CameraState, result: messages.Detected) -> None:
        ref = result.frame
        try:
            # A checked private copy, before anything learns from it: a torn frame (its slot reused by a
            # live capture meanwhile) must not reach the background model, even if its output is dropped.
            image_in = self.inputs.get(ref.ring, ref.slots, ref.height, ref.width).read(ref.slot, ref.seq)
        except (StaleSlot, FileNotFoundError):
            self.count("stale")
            return
        frame = Frame(ref.camera, ref.seq, ref.pts, state.info.time_base_fraction, image_in)
        detections = self._detections_of(state, result, image_in.shape[:2])
        state.decoded.pop(ref.seq, None)
        image = self.compositing.process(frame, detections, self._future(state, ref.seq))
        out_slot = state.free_slots.pop()
        state.ring.write(out_slot, ref.seq, image)
        out_ref = messages.FrameRef(ref.camera, ref.seq, ref.pts, state.ring.name, out_slot, state.ring.slots,
                                    state.ring.height, state.ring.width, self.worker)
        persons = detections.to_meta() if detections is not None else []
        send(self.encoder, messages.OutFrame(out_ref, obscured=detections is None, persons=persons))
        state.held[ref.seq] = ref.slot
        state.expected.pop(ref.seq, None)
        state.next_seq += 1
        self.count("frames")
        self.count("obscured", detections is None)

    def _on_encoded(self, release: messages.Release) -> None:
        state = self.cameras.get(release.camera)
        if state is None:
            return
        state.free_slots.append(release.slot)
        in_slot = state.held.pop(release.seq, None)
        if in_slot is not None:
            send(state.release, messages.Release(release.camera, release.seq, in_slot), block=False)
        self._drain(state)

    def _forget_if_done(self, state: CameraState) -> None:
        if state.end_sent and not state.held:
            camera = state.info.camera
            self.finished_rings.add(state.info.ring)
            self.inputs.drop(state.info.ring)
            state.ring.close()
            state.release.close(linger=1000)
            self.compositing.forget(camera)
            del self.cameras[camera]
            self.log.info("%s finished at %d frames", camera, state.next_seq)

    def close(self) -> None:
        for state in self.cameras.values():
            state.ring.close()
        self.inputs.close()


def main(argv=None) -> int:
    from anonengine.engine.runtime import run_service

    def extra(parser):
        parser.add_argument("--worker", type=int, default=0, help="composite worker number (cameras are shared out)")

    return run_service(lambda cfg, args: CompositeService(cfg, args.instance, args.worker), argv, extra)
