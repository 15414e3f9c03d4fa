"""Capture: decodes one camera into its own shared-memory ring and offers the frames to the detectors.

A slot is reused only after the compositor released it, which it does once the frame is encoded.
Files are paced by those releases (nothing dropped). Live sources wait no longer than a burst: while the
engine is behind (`admit_limit` frames in flight), a camera's frames wait in its feed for up to
`sources.buffer_s`, the oldest dropped past it; a file replayed as a camera drops each new frame before it
is numbered. Both are counted.
A restarted capture of a file resumes after the last frame
written; one of a live camera (a file replayed as one too) numbers its frames after its predecessor's
(`messages.LivePosition`). A frame not released within `redeliver_after_s` (its detector died, say) is
offered again; downstream drops the duplicates by seq.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from anonengine import messages
from anonengine.engine.runtime import POLL_MS, Service, receive_waiting, send
from anonengine.errors import AnonError, ConfigError, StartAfresh
from anonengine.paths import ROTATIONS
from anonengine.shm import FrameRing, remove_orphaned_segments, segment_name
from anonengine.sources import LiveFeed, is_live, source_of
from anonengine.video import StreamInfo, VideoReader

# A live camera's frame numbers are reserved this far ahead in the run folder (`messages.LivePosition`), its
# timeline kept there this often: a restarted capture carries on after its predecessor's frames.
SEQ_BLOCK = 1024
# Seconds of a live camera's timeline reserved ahead with its frame numbers: a capture's successor starts after
# them (ahead of the camera's clock by what was left of them, which later reconnections pay back).
TIME_BLOCK_S = 1.0
POSITION_EVERY_S = 1.0
# A stopped live camera's frames in flight still go out while its peers handle them. Stopped at once with
# it (a service manager signalling every process of the engine), they never come back: past this long
# without one released, it leaves rather than wait for the launcher to kill it (20 s).
STOP_DRAIN_IDLE_S = 5.0


def admit_limit(cfg, slots: int) -> int:
    """Frames a live camera may have in flight: the oldest one's look-ahead, one more for each detector to
    work on and one on its way to the encoder. More would only add latency (a frame waits behind every
    frame before it, past `engine.live_deadline_s` on a slow detector); fewer would leave a stage idle."""
    return min(slots, cfg.anonymizer.hold.lookahead_frames + 1 + cfg.engine.detect_workers + 1)


@dataclass
class InFlight:
    ref: messages.FrameRef
    sent_at: float


class CaptureService(Service):
    stage = "capture"

    def __init__(self, cfg, instance: str, camera, source: str | None = None, composite_worker: int = 0,
                 resume_from: int | None = None, stream: str = "") -> None:
        super().__init__(cfg, instance, camera.name)
        if not 0 <= composite_worker < cfg.engine.composite_workers:
            raise ConfigError(f"composite worker {composite_worker} does not exist "
                              f"(engine.composite_workers is {cfg.engine.composite_workers})")
        self.composite_worker = composite_worker
        self.camera_cfg = camera
        self.stream = stream  # which attachment of the camera (`StreamInfoMsg.stream`)
        self.source = source or camera.source
        self.reader: VideoReader | None = None
        self.feed: LiveFeed | None = None
        self._source_reported: tuple | None = None
        self.ring: FrameRing | None = None
        self.inflight: dict[int, InFlight] = {}
        self.redeliver_all = False  # a stage downstream restarted: every frame in flight is offered again
        self.redelivering = False
        self.free_slots: list[int] = []
        self.seq = 0
        # A restarted capture (the launcher says where the output stands, 0 too): it goes on with its
        # predecessor's stream; a file's frames before `resume_from` are encoded already.
        self.continues = resume_from is not None
        self.resume_from = resume_from or 0
        self.ended = False
        self.end: messages.StreamEnd | None = None  # sent once the stream ended; again to a restarted compositor
        self._released_at = 0.0  # when a frame in flight last came back
        self._reserved = 0  # a live camera's frame numbers below this are kept in the run folder as taken
        self._reserved_time = -math.inf  # and its frames' times up to this
        self.paced = False  # a file replayed as a live camera: each frame read at its time (setup)
        self._clock_start: tuple[float, float] | None = None  # (clock, stream time) of a replay's schedule
        self._position_kept = 0.0

    def setup(self) -> None:
        for name in remove_orphaned_segments(self.instance):
            self.log.info("removed %s, left by a stage killed outright", name)
        kind = source_of(self.camera_cfg)
        slots = self.cfg.engine.ring_slots
        self.frames_out = self.socket(zmq.PUSH, self.endpoints.frames(self.camera), bind=True, hwm=slots)
        self.releases = self.socket(zmq.PULL, self.endpoints.capture(self.camera), bind=True)
        self.downstream = self.socket(zmq.PUSH, self.endpoints.composite(self.composite_worker))
        if kind.live:
            # A camera or stream: read for ever, reconnected when it drops; its ring is made once the
            # first frame tells its size. Down at start, it is "connecting" until it answers.
            self.live, self.paced = True, False
            follows = self._take_over_position()
            self.feed = LiveFeed(kind, self.camera, self.cfg.sources, follows=follows).start()
            self.log.info("%s: connecting", self.source)
            if self.cfg.engine.exit_when_done and not self.continues:
                # A job (`anonengine run`) on a source that never gives a picture fails, as it said before its
                # stages started: that check opened the source once more, and a stream joined between two
                # keyframes (10 s apart with x264's defaults) waited for two of them.
                self.feed.first_picture(self.cfg.sources.connect_timeout_s)
            return
        self.reader = VideoReader(self.source, self.camera, kind=kind, sources_cfg=self.cfg.sources)
        # A file replayed as a live camera (`live: true`): never waits for downstream, drops instead.
        self.live = self.paced = is_live(self.source, self.camera_cfg.live, self.camera_cfg.stream)
        self.frames_iter = iter(self.reader)
        carried_on = self.paced and self.continues and self._carry_on_replay()
        if self.resume_from and not self.paced:
            # Decoded again and skipped: exact whatever the file's keyframes (seeking lands on those).
            for _ in range(self.resume_from):
                if next(self.frames_iter, None) is None:
                    break
            self.seq = self.resume_from
            self.log.info("restarted: resuming at frame %d", self.seq)
        self._start_ring(self.reader.info)
        self.break_owed = carried_on  # the frames between were never seen: anyone may be anywhere

    def _carry_on_replay(self) -> bool:
        """A restarted capture of a file replayed as a live camera carries on as a camera would: its frames
        numbered after its predecessor's, on the same schedule, the frames due while it was down lost. (It
        started the file again from the number of frames written, which counts none it dropped: frames
        already encoded came again, their timestamps going back, and the camera's whole recording failed.)
        True when it took over from a predecessor."""
        follows = self._take_over_position()
        if follows is None:
            return False
        last_time, due_at = follows  # kept with the time it is due, not when it was kept (`_keep_position`)
        self._clock_start = (due_at, last_time)
        # The frames due while it was down are lost, and those of the dead one's reserved time too (it may have
        # sent them): the schedule's now can be before its end.
        now_time = max(last_time, last_time + time.monotonic() - due_at)
        for frame in self.frames_iter:
            if frame.time > now_time:
                self.frames_iter = itertools.chain((frame,), self.frames_iter)
                break
        return True

    def _start_ring(self, info: StreamInfo) -> None:
        self.info = info
        self.break_owed = False  # a frame was dropped since the last one sent
        self.pixel_aspect = (info.pixel_aspect.numerator, info.pixel_aspect.denominator)
        # A recording's frames also wait in the compositor for the frames after them (its future fill), and
        # for a longer look-ahead than a live camera's.
        anonymizer = self.cfg.anonymizer
        slots = (self.cfg.engine.ring_slots + anonymizer.background.frames_ahead(self.live, info.width, info.height)
                 + anonymizer.lookahead(self.live) - anonymizer.hold.lookahead_frames)
        # The pid in the name: a restarted capture never shares a segment with readers of the old one.
        name = segment_name(self.instance, f"{self.camera}x{os.getpid()}")
        self.ring = FrameRing.create(name, slots, info.height, info.width)
        self.free_slots = list(range(slots))
        self._announce()
        self.log.info("%s: %dx%d @ %s fps, %s", self.source, info.width, info.height, float(info.rate),
                      "live" if info.live else f"{info.frames} frames")

    def _announce(self) -> None:
        info = self.info
        next_seq = min(self.inflight, default=self.seq)
        send(self.downstream, messages.StreamInfoMsg(
            camera=self.camera, width=info.width, height=info.height,
            rate=(info.rate.numerator, info.rate.denominator),
            time_base=(info.time_base.numerator, info.time_base.denominator),
            live=self.live, frames=info.frames, ring=self.ring.name, slots=self.ring.slots,
            output=self.camera_cfg.output, metadata=self.camera_cfg.metadata, next_seq=next_seq,
            continues=self.continues, privacy_zones=[[list(p) for p in zone] for zone in self.camera_cfg.privacy_zones],
            colour=(info.colour.primaries, info.colour.transfer, info.colour.matrix),
            pixel_aspect=self.pixel_aspect, stream=self.stream,
        ))  # fmt: skip

    def step(self) -> bool:
        self._take_releases(timeout_ms=0 if self.free_slots and not self.ended and not self._feed_waits() else POLL_MS)
        self._redeliver_late()
        stopped_before = self.stopping and not self.ended
        if stopped_before:
            self._end_live_with()
        if not self.ended and (stopped_before or not self._capture_one()):
            self.ended = True
            if self.feed is not None:  # read no more: it went on reconnecting while the frames in flight drained
                self.feed.stop()
            # Stopped before the end of a file: what is done is kept as a partial output, and nothing in
            # flight is waited for. A live camera's stop is its normal end: the frames in flight go out.
            interrupted = self.stopping and not self.live
            self.end = messages.StreamEnd(self.camera, self.seq, interrupted=interrupted)
            send(self.downstream, self.end)
            if interrupted:
                self.log.info("stopped at frame %d, before the end of the file", self.seq)
                return False
            # At a frame's number, not after a count: a restarted live capture numbers on from a reserved block, and
            # "stopped after 4437 frames" stood beside the encoder's 3422 written (an operator's trial).
            self.log.info("%s at frame %d; waiting for %d in flight", "stopped" if self.stopping else "end of stream",
                          self.seq, len(self.inflight))
            self._released_at = time.monotonic()
        if (self.ended and self.stopping and self.inflight
                and time.monotonic() - self._released_at > STOP_DRAIN_IDLE_S):
            self.log.info("none of the %d frames in flight came back in %.0f s of the stop: leaving them",
                          len(self.inflight), STOP_DRAIN_IDLE_S)
            return False
        return not (self.ended and not self.inflight)

    def _next_frame(self):
        """The next frame; None while a live source has none; StopIteration at the end of a file."""
        if self.feed is not None:
            frame = self.feed.get(timeout=POLL_MS / 1000)
            if frame is None and (stuck := self.feed.stuck()) is not None:
                raise StartAfresh(stuck)  # its connection freed as the process ends; the next sees the new stream
            return frame
        return next(self.frames_iter)

    def _behind(self) -> bool:
        """The engine has as many of this live camera's frames in flight as it should (`admit_limit`)."""
        return len(self.inflight) >= admit_limit(self.cfg, self.ring.slots) or not self.free_slots

    def _feed_waits(self) -> bool:
        """A live source's frames wait in its feed while the engine is behind: a network delivers a stream in
        bursts (88% of an HTTP stream's frames came within 5 ms of the one before, then nothing for up to a
        second), and the feed keeps `sources.buffer_s` of them, dropping the oldest past that. Before, the
        capture dropped every frame the engine could not take at once: 268 of 401 at 30 frames/s."""
        return self.feed is not None and self.ring is not None and self._behind()

    def _capture_one(self) -> bool:
        """Decodes and offers one frame; False at the end of the source."""
        if self.ring is not None and not self.free_slots and not self.live:
            return True  # a file waits for a slot: nothing is dropped
        if self._feed_waits():
            return True
        try:
            frame = self._next_frame()
        except StopIteration:
            return False
        except AnonError as exc:
            send(self.downstream, messages.StreamEnd(self.camera, self.seq, error=str(exc)))
            raise
        if frame is None:
            return True
        if self.ring is None:
            self._start_ring(self.feed.info)
        if self.paced:
            self._wait_until_due(frame.time)
        if self.stopping:  # stopped while this frame was on its way (waiting for its time)
            self._end_live_with(frame)
            return False
        if self.live and self._behind():
            # The engine is behind this camera (a file replayed at its rate: a live source's frames wait in
            # its feed, above). The frame never enters: the frames in flight keep their
            # neighbours, whose detections hide persons on the frames between strides. (Dropping the oldest
            # instead threw away frames already detected, and left the frames between without them: on a
            # detector slower than the camera, nearly every frame went out obscured.)
            self.count("dropped_busy")
            self.break_owed = True
            return True
        if self.live and not self._keep_position(frame.time):
            self.count("dropped_unnumbered")  # its number could not be kept: a successor might reuse it
            self.break_owed = True
            return True
        self._offer(frame)
        return True

    def _end_live_with(self, frame=None) -> None:
        """A live camera stopped: one frame more, marked last, which the detector looks at. The frames since its
        last detection are hidden by the boxes on both sides of them; without one after them, they went out
        obscured (the 1 or 2 frames of every detach, by where the stride stood). No frame at hand, or no room
        for it: they are obscured, as before. A replay stopped before its first frame was due has no schedule to
        give one its time by (it crashed on it): none."""
        if not self.live or self.ring is None or not self.free_slots or (self.paced and self._clock_start is None):
            return
        if frame is None:
            try:
                frame = self._next_frame()
            except (StopIteration, AnonError):
                return
        if frame is not None and self._keep_position(frame.time):
            frame.last = True
            self._offer(frame)

    def _offer(self, frame) -> None:
        # After a dropped frame the next is detected: the one dropped may have been a cut's (`at_break`), or
        # the time between the frames kept past the stride's.
        frame.at_break, self.break_owed = frame.at_break or self.break_owed, False
        slot = self.free_slots.pop()
        self.ring.write(slot, self.seq, frame.image)
        ref = messages.FrameRef(self.camera, self.seq, frame.pts, self.ring.name, slot, self.ring.slots,
                                self.ring.height, self.ring.width, self.composite_worker, last=frame.last,
                                continues=self.continues, live=self.live, at_break=frame.at_break,
                                changed=frame.changed, pixel_aspect=self.pixel_aspect,
                                came=messages.pack_cells(frame.came), turned=self.camera_cfg.rotate)
        # In flight before it is announced: its release can come back before the offer returns.
        self.inflight[self.seq] = InFlight(ref, time.monotonic())
        self.seq += 1
        send(self.downstream, ref)  # the compositor's clock for this frame's deadline starts now
        self._dispatch(ref)
        self.count("frames")

    def _position_name(self) -> str:
        return f"position-{self.camera}"

    def _take_over_position(self) -> tuple[float, float] | None:
        """A live camera's capture that died left where its stream stood: this one numbers its frames after
        every frame the dead one sent (downstream takes a number it has seen for a frame offered again, and
        drops it), at timestamps after them. (time, clock) where the dead one's reserved timeline ended, for
        the feed to follow. Without it, frames from 0, which downstream drops."""
        position = self.kept(self._position_name(), messages.LivePosition, "position")
        if position is None:
            return None
        self.seq = self._reserved = position.next_seq
        self._reserved_time = position.time
        self.log.info("restarted: carrying on at frame %d", self.seq)
        return position.time, position.wall

    def _keep_position(self, frame_time: float) -> bool:
        """Before frame `self.seq`, at `frame_time`, goes out: its number and its time reserved (a successor
        carries on after both), and now and then the stream's timeline. False when they are not reserved (the run
        folder cannot be written): the frame must not go out, or a successor could give its number to another
        frame, which downstream would take for this one, or a time before it, which the encoder cannot write."""
        now = time.monotonic()
        reserved_ahead = self.seq < self._reserved and frame_time <= self._reserved_time
        if reserved_ahead and now - self._position_kept < POSITION_EVERY_S:
            return True
        reserved = max(self._reserved, self.seq + SEQ_BLOCK)
        reserved_time = max(self._reserved_time, frame_time + TIME_BLOCK_S)
        # The clock when a frame at `reserved_time` is due: a replay's schedule; a camera's, when it would be
        # filmed. (Kept with the clock of its sending, a frame's wait in the feed while the engine was behind went
        # out of the successor's timeline: its frames came before the dead one's last, which the encoder refused,
        # and the camera's recording failed.)
        if self.paced:
            wall = self._clock_start[0] + reserved_time - self._clock_start[1]
        else:
            wall = self.feed.filmed(reserved_time)
        if not self.keep(self._position_name(), messages.LivePosition(reserved, reserved_time, wall), "position"):
            return reserved_ahead
        self._reserved, self._reserved_time, self._position_kept = reserved, reserved_time, now
        return True

    def _wait_until_due(self, frame_time: float) -> None:
        """A file replayed as a live camera: each frame is read at its own time, releases flowing meanwhile.

        The replay starts once a detector and the compositor are connected (each set up: the model
        loaded, the tracker imported): it stands for a camera of an engine already running, so its first
        seconds are not lost to the engine's start-up, whichever stage is slowest to start.
        """
        if self._clock_start is None:
            compositor = self.endpoints.composite(self.composite_worker)
            while not self.stopping:
                detector = self.wait(self.frames_out, POLL_MS, zmq.POLLOUT)
                if detector and _bound(compositor):
                    break
                if detector:  # the poll answers at once while the compositor is not there yet: no spinning
                    time.sleep(0.01)
                # A detector's first export of its model takes tens of seconds: silent that long, the capture
                # was killed as hung (engine.stall_s) and started again.
                self.report()
            self._clock_start = (time.monotonic(), frame_time)
        due = self._clock_start[0] + frame_time - self._clock_start[1]
        while (wait := due - time.monotonic()) > 0:
            self._take_releases(timeout_ms=max(1, min(POLL_MS, int(wait * 1000))))
            self.report()

    def _dispatch(self, ref: messages.FrameRef, wait: bool = True) -> bool:
        """To the detectors (which also decide the frames between detections, `detector.stride`). With
        `wait`, waits while no detector is connected or all are full (releases keep flowing); else returns
        False when none takes it now."""
        while not send(self.frames_out, ref, block=False):
            if not wait or self.stopping or ref.seq not in self.inflight:
                return False
            self._take_releases(timeout_ms=POLL_MS)
            self.report()  # a detector restarting can take a while: keep the heartbeat going
        return True

    def _take_releases(self, timeout_ms: int) -> None:
        if not self.wait(self.releases, timeout_ms):
            return
        for release in receive_waiting(self.releases, self.malformed, self.heartbeat_s):
            if isinstance(release, messages.Redeliver):
                self.redeliver_all = True
                continue
            if not isinstance(release, messages.Release):
                self.malformed(messages.MessageError(f"unexpected {type(release).__name__} on the release socket"))
                continue
            done = self.inflight.pop(release.seq, None)
            if done is not None:
                self.free_slots.append(done.ref.slot)
                self._released_at = time.monotonic()
        if self.redeliver_all and not self.redelivering:  # not within a redelivery: it starts over after it
            self._redeliver_late(everything=True)

    def _redeliver_late(self, everything: bool = False) -> None:
        """Offers again the frames in flight for longer than `redeliver_after_s` (or all of them, when a stage
        downstream restarted), after announcing the stream again for a restarted compositor."""
        self.redelivering = True
        if everything:
            self.redeliver_all = False  # this one is the redelivery asked for
        try:
            self._offer_again(everything)
            while self.redeliver_all:  # another stage restarted meanwhile
                self.redeliver_all = False
                self._offer_again(everything=True)
        finally:
            self.redelivering = False

    def _offer_again(self, everything: bool) -> None:
        now = time.monotonic()
        late = [f for f in self.inflight.values()
                if everything or now - f.sent_at > self.cfg.engine.redeliver_after_s]
        if self.ring is None or not (late or everything):
            return
        self._announce()  # a restarted compositor learns the stream again
        for f in sorted(late, key=lambda f: f.ref.seq):
            send(self.downstream, f.ref)  # and each frame's deadline
            # After a restart, every frame in flight goes out again in order, before any new one: a detector
            # decides which frames to detect in order (`detector.stride`), and one taken over from a dead
            # detector must see them as its predecessor did to decide the same.
            if not self._dispatch(f.ref, wait=everything):
                continue
            f.sent_at = now
            self.count("redelivered")
        if late:
            self.log.warning("offered %d late frame(s) again (from seq %d)", len(late), min(f.ref.seq for f in late))
        if everything and self.end is not None:
            # And where it ended: a compositor that died after the end never learnt it, and would hold the
            # last frames (waiting for the look-ahead of frames that do not exist) for ever.
            send(self.downstream, self.end)

    def reports(self, force: bool) -> list:
        """A live source's state, when it changed; at the end, a camera done that never sent a frame."""
        self.gauge("in_flight", len(self.inflight))
        if force and self.ended and self.ring is None and not self.continues:
            # Detached before its source ever answered: no stream was announced, so no encoder will say the
            # camera is done, and it stayed "stopping" (readiness 503) until the engine stopped.
            return [messages.CameraDone(self.camera, 0, None)]
        if self.feed is None:
            return []
        status = self.feed.status
        self.counters["reconnects"] = status.reconnects
        self.counters["dropped_at_source"] = self.feed.dropped
        now = (status.state.value, status.last_error, status.reconnects)
        if now == self._source_reported and not force:
            return []
        self._source_reported = now
        return [messages.SourceStatus(self.camera, *now)]

    def close(self) -> None:
        if self.feed is not None:
            self.feed.stop()
            if self.ended:  # stopped or detached, not died: a camera attached again starts from frame 0
                (self.endpoints.dir / self._position_name()).unlink(missing_ok=True)
        if self.reader is not None:
            self.reader.close()
        if self.ring is not None:
            self.ring.close()


def _bound(endpoint: str) -> bool:
    """Whether a stage listens at `endpoint` (a connecting PUSH queues before its peer exists, so
    POLLOUT cannot tell): an ipc endpoint's socket file is made by its bind."""
    return not endpoint.startswith("ipc://") or Path(endpoint.removeprefix("ipc://")).exists()


def main(argv=None) -> int:
    from anonengine.config import CameraConfig
    from anonengine.engine.runtime import run_service

    def extra(parser):
        parser.add_argument("--camera", required=True, help="camera name (from the config, or new with --source)")
        parser.add_argument("--camera-json", help="the camera's whole config as JSON (attached cameras)")
        parser.add_argument("--source", help="video source, for a camera not in the config")
        parser.add_argument("--output", help="output video, for a camera not in the config")
        parser.add_argument("--metadata", help="metadata file, for a camera not in the config")
        parser.add_argument("--rotate", type=int, choices=ROTATIONS, default=0,
                            help="degrees to turn the picture clockwise, for a camera not in the config")
        parser.add_argument("--composite-worker", type=int, default=0, help="the composite worker of this camera")
        parser.add_argument("--resume-from", type=int, default=None,
                            help="a restarted capture: its predecessor's stream, from this frame on")
        parser.add_argument("--stream", default="", help="which attachment of the camera (the launcher's)")

    def factory(cfg, args):
        known = {c.name: c for c in cfg.cameras}
        if args.camera_json:
            camera = CameraConfig.model_validate(json.loads(args.camera_json))
        elif args.source:
            camera = CameraConfig(name=args.camera, source=args.source, output=args.output, metadata=args.metadata,
                                  rotate=args.rotate)
        elif args.camera in known:
            camera = known[args.camera]
        else:
            raise SystemExit(f"anonengine: error: camera {args.camera!r} is not in the config and has no --source")
        return CaptureService(cfg, args.instance, camera, composite_worker=args.composite_worker,
                              resume_from=args.resume_from, stream=args.stream)

    return run_service(factory, argv, extra)


if __name__ == "__main__":
    from anonengine.interrupts import exit_process

    exit_process(main())
