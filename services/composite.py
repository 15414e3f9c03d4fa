"""Composite: owns each camera's background, puts frames back in order, writes anonymized frames.

Detector workers finish out of order; results wait here until their camera's next seq is complete.
A frame whose detection failed is emitted fully obscured, never raw. The input slot goes back to the
capture once the encoder has the frame (`Received`): until then the capture offers it again if this
process or a detector died. The output slot is held until the frame is on disk (`Release`), and sent
again to an encoder that restarted before.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from dataclasses import dataclass, field

import msgspec
import numpy as np
import zmq

from anonengine import messages
from anonengine.compositor import Learnt
from anonengine.detections import Detections
from anonengine.engine.runtime import POLL_MS, Service, receive_waiting, send
from anonengine.shm import FrameRing, RingCache, StaleSlot, remove_orphaned_segments, segment_name
from anonengine.stages import CompositeStage
from anonengine.timeline import Timeline
from anonengine.video import Frame

# A compositor keeps its cameras' mask holds for a successor this often at most: a write took 0.3 ms here (6
# persons), and a hold a few frames old is taken over as one that much older (its lost persons held grown).
HOLD_KEEP_EVERY_S = 0.2


@dataclass
class Waiting:
    """A frame learnt from, waiting for the frames after it to be learnt before it is rendered."""

    ref: messages.FrameRef
    frame: Frame  # the private copy learnt from
    learnt: Learnt | None  # None: obscured whole
    persons: list  # the metadata record's


@dataclass
class CameraState:
    info: messages.StreamInfoMsg
    ring: FrameRing
    release: zmq.Socket
    timeline: Timeline[messages.FrameRef, messages.Detected]  # order, look-ahead, deadlines, duplicates
    free_slots: list[int]
    decoded: dict[int, Detections] = field(default_factory=dict)  # pending results unpacked, once each
    inputs_held: dict[int, int] = field(default_factory=dict)  # seq -> capture slot, until the encoder has it
    sent: dict[int, messages.OutFrame] = field(default_factory=dict)  # out slots held until on disk
    ahead: int = 0  # frames learnt after a frame before it is rendered (a recording's future)
    retired: set[str] = field(default_factory=set)  # rings of captures that died: unmapped once unused
    waiting: deque[Waiting] = field(default_factory=deque)  # learnt, not rendered yet, in order
    end_sent: bool = False
    whole: bool = False  # its end is sent, and is the stream's own (not a failure's, nor a stop's)
    hold_kept_at: float = -HOLD_KEEP_EVERY_S  # time.monotonic() of the last `_keep_hold`


class CompositeService(Service):
    stage = "composite"

    def __init__(self, cfg, instance: str, worker: int = 0) -> None:
        super().__init__(cfg, instance, f"w{worker}")
        self.worker = worker
        self.compositing = CompositeStage(cfg.anonymizer)
        self.inputs = RingCache()
        self.cameras: dict[str, CameraState] = {}
        self.orphans: dict[str, dict[int, messages.Detected]] = {}
        self.orphan_refs: dict[str, list[messages.FrameRef]] = {}
        self.finished_rings: set[str] = set()  # captures whose stream ended here: never started again
        # (camera, stream) of the streams that ended here whole (`StreamInfoMsg.stream`: a camera attached
        # again is a stream of its own).
        self.finished_streams: set[tuple[str, str]] = set()
        self.late_releases: dict[str, zmq.Socket] = {}  # to the captures of finished streams
        self.streams = itertools.count()

    def setup(self) -> None:
        # Bound before the tracker's import (a second or more): a restarted compositor's peers, restarted with
        # it, send from the start; what they sent while nothing was bound here went missing (after the fork server
        # died, a frame's detections, and every frame after it waited 20 s for the capture's redelivery).
        self.inbox = self.socket(zmq.PULL, self.endpoints.composite(self.worker), bind=True)
        for name in remove_orphaned_segments(self.instance):
            self.log.info("removed %s, left by a stage killed outright", name)
        self.compositing.setup()
        self.encoder = self.socket(zmq.PUSH, self.endpoints.encode(self.worker % self.cfg.engine.encode_workers))
        self.log.info("ready (pid %d)", os.getpid())

    def step(self) -> bool:
        if self.wait(self.inbox, POLL_MS):
            for message in receive_waiting(self.inbox, self.malformed, self.heartbeat_s):
                self._handle(message)
        self._enforce_deadlines()
        # Stopped last but one: captures and detectors are gone, nothing more can complete a frame.
        return not self.stopping

    def _handle(self, message) -> None:
        if isinstance(message, messages.Detected):
            self._on_detected(message)
        elif isinstance(message, messages.FrameRef):
            self._on_captured(message)
        elif isinstance(message, messages.StreamInfoMsg):
            self._on_stream(message)
        elif isinstance(message, messages.StreamEnd):
            self._on_end(message)
        elif isinstance(message, messages.Received):
            self._on_received(message)
        elif isinstance(message, messages.Release):
            self._on_encoded(message)
        elif isinstance(message, messages.Redeliver):
            for state in list(self.cameras.values()):
                self._reannounce(state)
        else:
            self.log.warning("unexpected %s", type(message).__name__)

    def _on_stream(self, info: messages.StreamInfoMsg) -> None:
        if info.ring in self.finished_rings:
            return  # a late re-announcement: restarting would overwrite the finished output
        state = self.cameras.get(info.camera)
        ended = state.whole if state is not None else (info.camera, info.stream) in self.finished_streams
        if ended and (info.next_seq > 0 or info.continues) and (state is None or state.info.ring != info.ring):
            # The rest of a stream that ended here: its capture died after the end, and its successor
            # offers again, from the last progress the launcher had heard of, frames all done. They go
            # back as they come. (Taken for a new stream, they were composited for nothing; arriving
            # before this compositor let go of the finished stream, they waited for ever. From frame 0, where
            # the launcher had heard of no progress yet, the whole stream was composited again, with the
            # detections of frames whose schedule was forgotten, and replaced the finished output.)
            self.finished_rings.add(info.ring)
            return
        if state is not None:
            if state.info.ring != info.ring:  # the capture restarted: a new ring, same stream
                state.retired.add(state.info.ring)
                state.info = info
                # A file's capture resumes at a frame done already; a live camera's after a gap (the frames
                # its dead capture had not offered yet are lost with it): waiting for them would stop it.
                state.timeline.starts_again_at(info.next_seq)
            self._reannounce(state)
            return
        self.compositing.privacy_zones[info.camera] = info.privacy_zones
        slots = self.cfg.engine.ring_slots
        ring = FrameRing.create(
            segment_name(self.instance, f"{info.camera}x{os.getpid()}o{next(self.streams)}"), slots, info.height,
            info.width,
        )  # one name a stream: the encoder never takes a camera attached again for one that finished
        release = self.socket(zmq.PUSH, self.endpoints.capture(info.camera))
        deadline = self.cfg.engine.live_deadline_s if info.live else self.cfg.engine.deadline_s
        timeline = Timeline(self.cfg.anonymizer.lookahead(info.live), deadline, info.next_seq, live=info.live)
        state = self.cameras[info.camera] = CameraState(info, ring, release, timeline, list(range(slots)))
        state.ahead = self.compositing.start(info.camera, info.live, info.width, info.height,
                                             self._kept_hold(info) if info.next_seq > 0 else None, info.next_seq)
        for ref in self.orphan_refs.pop(info.camera, []):
            timeline.offer(ref.seq, ref)
        for result in self.orphans.pop(info.camera, {}).values():
            timeline.answer(result.frame.seq, result)
        self._announce_out(state, next_seq=info.next_seq)
        self._drain(state)

    def _kept_hold(self, info: messages.StreamInfoMsg) -> messages.HoldState | None:
        """The mask hold a dead compositor kept for the stream (`_keep_hold`), if any."""
        hold = self.kept(self._hold_name(info.camera), messages.HoldState, "hold")
        if hold is None or (hold.camera, hold.stream) != (info.camera, info.stream):
            return None
        self.log.info("%s: mask hold taken over from frame %d (%d tracks)", info.camera, hold.seq, len(hold.tracks))
        return hold

    def _keep_hold(self, state: CameraState, seq: int) -> None:
        """After a detection is learnt: the camera's mask hold, where a successor finds it, every HOLD_KEEP_EVERY_S
        at most. One that cannot be written (a full disk) costs a successor what the hold knew: persons are then
        held from its own detections."""
        now = time.monotonic()
        if now - state.hold_kept_at < HOLD_KEEP_EVERY_S:
            return
        hold = self.compositing.kept_hold(state.info.camera, state.info.stream, seq)
        if hold is not None and self.keep(self._hold_name(state.info.camera), hold, "hold"):
            state.hold_kept_at = now

    @staticmethod
    def _hold_name(camera: str) -> str:
        return f"hold-{camera}"

    def _reannounce(self, state: CameraState) -> None:
        """A stage restarted: a restarted encoder learns the stream, from the first frame it has not
        written, gets again the frames it held, and the stream's end if it came."""
        unwritten = [*state.sent, *(w.ref.seq for w in state.waiting)]
        self._announce_out(state, next_seq=min(unwritten, default=state.timeline.next_seq))
        for seq in sorted(state.sent):
            send(self.encoder, state.sent[seq])
        if state.end_sent:
            send(self.encoder, messages.StreamEnd(state.info.camera, state.timeline.end))

    def _announce_out(self, state: CameraState, next_seq: int) -> None:
        send(self.encoder, msgspec.structs.replace(state.info, ring=state.ring.name, slots=state.ring.slots,
                                                   next_seq=next_seq))

    def _on_captured(self, ref: messages.FrameRef) -> None:
        if ref.ring in self.finished_rings:
            self._let_go(ref)
            return
        state = self.cameras.get(ref.camera)
        if state is None:
            self.orphan_refs.setdefault(ref.camera, []).append(ref)
        else:
            state.timeline.offer(ref.seq, ref)

    def _enforce_deadlines(self) -> None:
        """Frames whose detections are overdue go out obscured (or are dropped): never raw, never waited for."""
        for state in list(self.cameras.values()):
            self._drain(state)

    def _on_detected(self, result: messages.Detected) -> None:
        camera, seq = result.frame.camera, result.frame.seq
        state = self.cameras.get(camera)
        if result.frame.ring in self.finished_rings:
            return
        if state is None:  # the stream's announcement is still on its way
            self.orphans.setdefault(camera, {})[seq] = result
            return
        if result.status == "stale":
            self.count("stale")  # the capture offers the frame again if it is still due
            return
        if not state.timeline.answer(seq, result):
            # Done already (a frame offered again after a restart): its capture slot is free again.
            self.count("duplicates")
            send(state.release, messages.Release(camera, seq, result.frame.slot), block=False)
            return
        self._drain(state)

    def _on_end(self, end: messages.StreamEnd) -> None:
        state = self.cameras.get(end.camera)
        if state is None:
            send(self.encoder, end)
            return
        state.timeline.end_at(end.frames)
        if end.error or end.interrupted:  # nothing more of this stream is composited
            state.timeline.stop()
            state.decoded.clear()
            state.waiting.clear()
            send(self.encoder, end)
            state.end_sent = True
        self._drain(state)

    def _future_pixels(self, future: list[messages.Detected]):
        """`Compositor.learn`'s look at the frames of the look-ahead: a box's pixels, read from the capture's ring
        (checked: None where the slot was reused meanwhile, and the place is forgotten unchecked)."""

        def pixels(ahead: int, box: tuple[int, int, int, int]) -> np.ndarray | None:
            ref = future[ahead - 1].frame
            try:
                return self.inputs.get(ref.ring, ref.slots, ref.height, ref.width).read(ref.slot, ref.seq, box)
            except (StaleSlot, FileNotFoundError):
                return None

        return pixels

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
        """Learns from every frame whose turn it is, and sends out those whose wait is over, while the
        output ring has room."""
        timeline = state.timeline
        while len(state.waiting) <= state.ahead and (turn := timeline.next()) is not None:
            if turn.late:
                self.count("late", camera=state.info.camera)
                if self.cfg.engine.late_frames == "drop":
                    self._skip(state, turn.item)
                    continue
                result = messages.Detected(turn.item, messages.DetectStatus.LATE)
            else:
                result = turn.result
            if not self._learn(state, result):
                timeline.retry(turn.seq)  # its slot was reused: the capture offers it again
                break
            # One message can let many frames through (the look-ahead's, all at a file's end), each seconds
            # of work at 48 MP: the heartbeat goes on between frames, or a busy compositor is killed as hung.
            self.report()
            self._send_waited(state)
        self._send_waited(state)
        if timeline.finished and not state.waiting and not state.end_sent:
            send(self.encoder, messages.StreamEnd(state.info.camera, timeline.end))
            state.end_sent = state.whole = True
        if state.retired:
            self._unmap_retired(state)
        self._forget_if_done(state)

    def _unmap_retired(self, state: CameraState) -> None:
        """A dead capture's ring, once no frame still to be learnt is read from it: its memory is freed (the
        launcher unlinked it), however often a camera's capture dies."""
        timeline = state.timeline
        in_use = ({result.frame.ring for result in timeline.results.values()}
                  | {item.ring for item, _ in timeline.offered.values() if item is not None})
        for ring in state.retired - in_use:
            self.inputs.drop(ring)
            state.retired.discard(ring)

    def _skip(self, state: CameraState, ref: messages.FrameRef) -> None:
        """Drops a late frame: the capture gets its slot back, the encoder never sees it."""
        state.timeline.done(ref.seq)
        send(state.release, messages.Release(ref.camera, ref.seq, ref.slot), block=False)

    def _learn(self, state: CameraState, result: messages.Detected) -> bool:
        """Learns from the frame, which then waits for its render; False if its slot no longer holds it."""
        ref = result.frame
        try:
            # A checked private copy, before anything learns from it: a torn frame (its slot reused by a
            # live capture meanwhile) must not reach the background model, even if its output is dropped.
            image_in = self.inputs.get(ref.ring, ref.slots, ref.height, ref.width).read(ref.slot, ref.seq)
        except (StaleSlot, FileNotFoundError):
            self.count("stale")
            return False
        frame = Frame(ref.camera, ref.seq, ref.pts, state.info.time_base_fraction, image_in)
        detections = self._detections_of(state, result, image_in.shape[:2])
        state.decoded.pop(ref.seq, None)
        future = state.timeline.future(ref.seq)
        learnt = self.compositing.learn(frame, detections,
                                        [self._detections_of(state, r, image_in.shape[:2]) for r in future],
                                        self._future_pixels(future))
        persons = learnt.meta() if learnt is not None else []
        if learnt is not None and detections is not None and detections.detected:
            self._keep_hold(state, ref.seq)
        state.waiting.append(Waiting(ref, frame, learnt, persons))
        state.inputs_held[ref.seq] = ref.slot
        state.timeline.done(ref.seq)
        return True

    def _send_waited(self, state: CameraState) -> None:
        """Renders and hands to the encoder the frames whose wait is over (all of them at the end)."""
        while state.waiting and state.free_slots and (len(state.waiting) > state.ahead or state.timeline.finished):
            waited = state.waiting.popleft()
            ref = waited.ref
            image, drawn = self.compositing.render(waited.frame, waited.learnt)
            self.report()
            out_slot = state.free_slots.pop()
            state.ring.write(out_slot, ref.seq, image)
            out_ref = messages.FrameRef(ref.camera, ref.seq, ref.pts, state.ring.name, out_slot, state.ring.slots,
                                        state.ring.height, state.ring.width, self.worker)
            out = messages.OutFrame(out_ref, obscured=drawn is None, persons=waited.persons,
                                    motion=drawn.motion_meta() if drawn is not None else [])
            send(self.encoder, out)
            state.sent[ref.seq] = out
            self.count("frames", camera=ref.camera)
            self.count("obscured", waited.learnt is None, camera=ref.camera)

    def reports(self, force: bool) -> list:
        for camera, state in self.cameras.items():
            self.gauge("waiting", len(state.waiting), camera=camera)
        return []

    def _on_received(self, received: messages.Received) -> None:
        """Composited again from the capture's slot only if this process dies before the encoder has it."""
        state = self.cameras.get(received.camera)
        if state is not None:
            self._release_input(state, received.seq)

    def _on_encoded(self, release: messages.Release) -> None:
        """On disk: the output slot is free (the capture's went when the encoder received the frame)."""
        state = self.cameras.get(release.camera)
        if state is None or state.sent.pop(release.seq, None) is None:
            return  # released before: a frame sent again to a restarted encoder, which had it already
        self._release_input(state, release.seq)
        state.free_slots.append(release.slot)
        self._drain(state)

    def _let_go(self, ref: messages.FrameRef) -> None:
        """A frame of a finished stream, offered again: its capture gets the slot back at once."""
        release = self.late_releases.get(ref.camera)
        if release is None:
            release = self.late_releases[ref.camera] = self.socket(zmq.PUSH, self.endpoints.capture(ref.camera))
        send(release, messages.Release(ref.camera, ref.seq, ref.slot), block=False)

    def _release_input(self, state: CameraState, seq: int) -> None:
        in_slot = state.inputs_held.pop(seq, None)
        if in_slot is not None:
            send(state.release, messages.Release(state.info.camera, seq, in_slot), block=False)

    def _forget_if_done(self, state: CameraState) -> None:
        if state.end_sent and not state.sent:
            camera = state.info.camera
            self.finished_rings.add(state.info.ring)
            for ring in {state.info.ring, *state.retired}:
                self.inputs.drop(ring)
            state.ring.close()
            state.release.close(linger=1000)
            self.compositing.forget(camera)
            (self.endpoints.dir / self._hold_name(camera)).unlink(missing_ok=True)
            del self.cameras[camera]
            if state.whole:
                self.finished_streams.add((camera, state.info.stream))
            # A number, not a count: a restarted capture numbers on from a reserve ahead (the encoder counts).
            self.log.info("%s finished (its last frame numbered %d)", camera, state.timeline.next_seq - 1)

    def close(self) -> None:
        for state in self.cameras.values():
            state.ring.close()
        self.inputs.close()


def main(argv=None) -> int:
    from anonengine.engine.runtime import run_service

    def extra(parser):
        parser.add_argument("--worker", type=int, default=0, help="composite worker number (cameras are shared out)")

    return run_service(lambda cfg, args: CompositeService(cfg, args.instance, args.worker), argv, extra)


if __name__ == "__main__":
    from anonengine.interrupts import exit_process

    exit_process(main())
