"""Encode: writes each camera's anonymized frames to its output and to the tap; frees the slots.

Each camera is recorded in segments (`anonengine.recording`): a frame's slots go back only once it is on
disk, so a restarted encoder gets again what its predecessor had not written and loses nothing. Outputs
are finalised at the end of their stream and on SIGTERM, so a stopped engine leaves playable files. The tap is an XPUB socket, bound at `tap.endpoint` by the one encoder, or with several
connected to the launcher's relay: frames are only encoded for it while someone subscribes, and a
high-water mark drops frames for a slow subscriber instead of slowing the engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import cv2
import zmq

from anonengine import messages
from anonengine.engine.runtime import POLL_MS, Service, ToCompositors, bind_tap, receive_waiting, run_id, send
from anonengine.errors import AnonError
from anonengine.recording import SegmentedRecording
from anonengine.shm import RingCache, StaleSlot
from anonengine.stages import frame_record
from anonengine.video import Colour, Frame, StreamInfo


@dataclass
class Output:
    info: messages.StreamInfoMsg
    recording: SegmentedRecording | None
    next_seq: int  # the first frame not received yet: those before it come again only as duplicates
    written_seq: int  # the first frame not on disk yet (x264 holds a dozen): where a restarted capture resumes
    frames: int = 0  # frames out (to the file, the tap, or both)
    obscured: int = 0  # of them, obscured whole


class EncodeService(Service):
    stage = "encode"

    def __init__(self, cfg, instance: str, worker: int = 0) -> None:
        super().__init__(cfg, instance, f"w{worker}")
        self.worker = worker
        self.rings = RingCache()
        self.outputs: dict[str, Output] = {}
        self.subscribers = 0
        self.tap_offered: dict[str, int] = {}  # camera -> frames offered the tap (`TapHeader.offered`)
        self.tap_curve = None  # the ZAP handler of a CURVE tap this encoder binds
        self.finished_rings: set[str] = set()  # streams whose output is final: never begun again
        # (camera, stream) of the streams whose whole output this encoder made final, or that failed
        # (`StreamInfoMsg.stream`: a camera attached again is a stream of its own).
        self.finished_streams: set[tuple[str, str]] = set()
        # Which segments are this run's: a restarted encoder resumes them (see anonengine.recording).
        self.run = run_id()
        # The frames a camera may have in this encoder before they are on disk: the compositor's output
        # ring, less one on its way here and one spare (the capture's slots went when they arrived).
        self.max_pending = cfg.engine.ring_slots - 2

    def setup(self) -> None:
        self.inbox = self.socket(zmq.PULL, self.endpoints.encode(self.worker), bind=True)
        self.releases = ToCompositors(self)
        self.events = self.socket(zmq.PUSH, self.endpoints.events)
        self.tap = None
        endpoint = self.endpoints.tap_endpoint(self.cfg.tap)
        if endpoint and self.cfg.engine.encode_workers == 1:
            # A busy address is the user's to fix: one line (OutputError), no restart loop.
            self.tap, self.tap_curve = bind_tap(self.context, endpoint, self.cfg.tap, self.endpoints)
            self.tap.setsockopt(zmq.LINGER, 2000)
            self.tap.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscribe, to count subscribers
        elif endpoint:
            # The launcher's relay forwards a topic's first subscription and last unsubscription (and
            # every topic to an encoder that connects later), so the count is of topics: still > 0 while
            # anyone subscribes.
            self.tap = self.socket(zmq.XPUB, self.endpoints.tap_relay, hwm=self.cfg.tap.hwm)
        self.poller = self.make_poller(*((sock, zmq.POLLIN) for sock in (self.inbox, self.tap) if sock is not None))
        self.log.info("ready (pid %d), tap %s", os.getpid(), endpoint or "off")

    def step(self) -> bool:
        self.rings.prune()  # a dead compositor's output rings, unlinked by the launcher: their memory goes
        # Stopped last: what the compositor sent before it went is still written.
        events = dict(self.poller.poll(0 if self.stopping else POLL_MS))
        self.woken(events)
        if self.tap is not None and self.tap in events:
            self._count_subscribers()
        if self.inbox in events:
            for message in receive_waiting(self.inbox, self.malformed, self.heartbeat_s):
                self._handle(message)
        return not (self.stopping and self.inbox not in events)

    def _count_subscribers(self) -> None:
        while True:
            try:
                event = self.tap.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event:
                self.subscribers += 1 if event[0] == 1 else -1

    def _handle(self, message) -> None:
        if isinstance(message, messages.StreamInfoMsg):
            self._on_stream(message)
        elif isinstance(message, messages.OutFrame):
            self._on_frame(message)
        elif isinstance(message, messages.StreamEnd):
            self._on_end(message)

    def _on_stream(self, info: messages.StreamInfoMsg) -> None:
        if info.ring in self.finished_rings:
            return  # a late re-announcement: beginning again would overwrite the finished output
        output = self.outputs.get(info.camera)
        if output is not None:  # the compositor restarted: same stream, new ring
            # (Asked after the finished streams, by camera: a camera attached again after its first stream
            # ended was taken for the rest of that one when its compositor restarted, and nothing more of it
            # was written.)
            output.info = info
            return
        if (info.camera, info.stream) in self.finished_streams and info.next_seq > 0:
            # The rest of a stream whose output is final already: a stage upstream died after its end
            # (a capture restarted from the last progress it reported, a compositor that composited the
            # last frames again). Its frames are let go as they come; a new output begun here from
            # `next_seq` would replace the whole one with its tail.
            self.finished_rings.add(info.ring)
            return
        recording = None
        if info.output:
            stream = StreamInfo(info.width, info.height, info.rate_fraction, info.time_base_fraction,
                                info.frames, info.live, Colour(*info.colour), Fraction(*info.pixel_aspect))
            # Under a launcher, the launcher holds the output's lock for as long as the camera runs.
            # A stream's segments are its own: a restarted encoder resumes them, a camera attached again
            # to the same recording (kept segments) begins new ones after them.
            run = f"{self.run}.{info.stream}" if info.stream else self.run
            recording = SegmentedRecording(info.output, stream, self.cfg.encoder, info.camera, run,
                                           info.metadata, self.max_pending,
                                           lock=not os.environ.get("ANONENGINE_OUTPUTS_LOCKED"))
            recording.setup()
        self.outputs[info.camera] = Output(info, recording, info.next_seq, info.next_seq)

    def _on_frame(self, out: messages.OutFrame) -> None:
        ref = out.frame
        output = self.outputs.get(ref.camera)
        if ref.ring in self.finished_rings:
            self._release(ref)
            return
        if output is None:
            # A stream this encoder was not told of (it restarted): not written, so not released; the
            # compositor announces the stream again and sends its frames once more.
            self.count("unannounced")
            return
        if ref.seq < output.next_seq:
            self._release(ref)
            self.count("duplicates")
            return
        try:
            image = self.rings.get(ref.ring, ref.slots, ref.height, ref.width).read(ref.slot, ref.seq)
        except (StaleSlot, FileNotFoundError):
            self.count("stale")  # the capture still holds the frame and offers it again
            return
        if output.recording is None:
            self._release(ref)
            output.written_seq = ref.seq + 1
        else:
            self.releases.send(ref.composite, messages.Received(ref.camera, ref.seq))
            frame = Frame(ref.camera, ref.seq, ref.pts, output.info.time_base_fraction, image)
            record = frame_record(frame, None if out.obscured else out.persons, out.motion)
            try:
                durables = output.recording.add(ref, ref.seq, ref.pts, image,
                                                record if output.info.metadata else None, out.obscured)
            except AnonError as exc:
                self._output_failed(ref.camera, output, str(exc))
                self._release(ref)
                return
            for durable in durables:
                self._release(durable)  # on disk: the slots can go
                output.written_seq = max(output.written_seq, durable.seq + 1)
        self._publish(out, output, image)
        output.next_seq = ref.seq + 1
        output.frames += 1
        output.obscured += out.obscured
        self.count("frames", camera=ref.camera)
        if output.recording is not None:  # its frames on disk from before a restart: counted by no report
            self.gauge("recorded", output.recording.frames, camera=ref.camera)

    def _output_failed(self, camera: str, output: Output, error: str) -> None:
        """A camera's output cannot be written (its disk filled up): that camera fails, its segments go, and the
        frames it held are let go, as are the rest of its stream's; the encoder goes on with the others. (The
        encoder stopped on it, and the whole engine with it.)"""
        del self.outputs[camera]
        self.finished_rings.add(output.info.ring)
        self.finished_streams.add((camera, output.info.stream))  # its rest, announced again, is not begun anew
        for pending in output.recording.pending:
            self._release(pending.token)
        output.recording.abort()
        self._done(camera, output.recording.frames, None, False, error)

    def _release(self, ref: messages.FrameRef) -> None:
        self.releases.send(ref.composite, messages.Release(ref.camera, ref.seq, ref.slot))

    def _publish(self, out: messages.OutFrame, output: Output, image) -> None:
        if self.tap is None or self.subscribers <= 0:
            return
        tap, ref = self.cfg.tap, out.frame
        if tap.format == "jpeg":
            payload = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, tap.jpeg_quality])[1].tobytes()
        else:
            payload = image.tobytes()
        header = messages.TapHeader(
            camera=ref.camera, seq=ref.seq, pts=ref.pts, time=float(ref.pts * output.info.time_base_fraction),
            width=image.shape[1], height=image.shape[0], format=tap.format, obscured=out.obscured,
            persons=out.persons, motion=out.motion, pixel_aspect=output.info.pixel_aspect,
            offered=self.tap_offered.get(ref.camera, 0),
        )  # fmt: skip
        self.tap_offered[ref.camera] = header.offered + 1
        try:
            self.tap.send_multipart([ref.camera.encode(), messages.encode(header), payload], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.count("tap_dropped")

    def reports(self, force: bool) -> list:
        """How far each camera's output got on disk: where a restarted capture resumes. (Frames received but
        still in the encoder would be lost with it if the capture died too: the fork server's death.)"""
        return [messages.Progress(camera, output.written_seq) for camera, output in self.outputs.items()]

    def _on_end(self, end: messages.StreamEnd) -> None:
        output = self.outputs.pop(end.camera, None)
        if output is None:
            return
        self.rings.drop(output.info.ring)
        self.finished_rings.add(output.info.ring)
        if end.error:
            if output.recording is not None:
                output.recording.abort()
            self.log.warning("%s failed, output discarded: %s", end.camera, end.error)
        else:
            self._finish(end.camera, output, complete=not end.interrupted)
            if not end.interrupted:
                self.finished_streams.add((end.camera, output.info.stream))

    def _finish(self, camera: str, output: Output, complete: bool) -> None:
        """Finalises the output, playable: under its final name only when `complete`."""
        path, frames, obscured, error, pruned = None, output.frames, output.obscured, None, 0
        if output.recording is not None:
            try:
                for ref in output.recording.cut():  # every frame on disk: the compositor can let go
                    if not self.stopping:  # else it is gone already: a message to it would hold our exit
                        self._release(ref)
                path = output.recording.close(complete)  # None: nothing written, no file at all
                frames, obscured = output.recording.frames, output.recording.obscured
                pruned = output.recording.pruned
            except AnonError as exc:
                error = str(exc)
                # What failed to finish is no output: its working segments go (a disk that filled up kept
                # them, the frames' metadata with them, in a hidden folder beside the output).
                output.recording.abort()
        self._done(camera, frames, path, complete, error, recorded=output.recording is not None, obscured=obscured,
                   pruned=pruned)

    def _done(self, camera: str, frames: int, path, complete: bool, error: str | None, recorded: bool = True,
              obscured: int = 0, pruned: int = 0) -> None:
        """Tells the launcher a camera's output is done (made, or failed), and says so in the log. `recorded`:
        the camera has an output file (else the tap alone); `pruned`: the segments of it retention removed."""
        send(self.events, messages.CameraDone(camera, frames, str(path) if path else None, complete, error,
                                              obscured), block=False)
        if error is not None:  # "0 frames written to (tap only)" was all it said of a camera with an output
            self.log.warning("%s: its output failed: %s", camera, error)
        elif path is None and recorded:  # stopped before its first frame: no file at all
            self.log.info("%s: stopped before its first frame; no output written", camera)
        elif path is not None:
            # An NVR's frames written are not those kept: it read as if all of them were there.
            kept = f"; retention removed the oldest {pruned} of its segments" if pruned else ""
            self.log.info("%s: %d frames (%d obscured) written to %s%s", camera, frames, obscured, path, kept)
        else:  # it said "0 frames written to (tap only)" of a camera whose 200 frames went out on the tap
            self.log.info("%s: %d frames out on the tap (no output file)", camera, frames)

    def close(self) -> None:
        # On SIGTERM with streams still open: a live camera's stop is its end (final name); a file not
        # seen to its end keeps its frames so far as a partial output.
        for camera, output in list(self.outputs.items()):
            self._finish(camera, output, complete=output.info.live)
        self.outputs.clear()
        self.rings.close()
        if self.tap_curve is not None:
            # Closed before its ZAP handler (no connection then goes unchecked); what is queued still goes.
            self.tap.close(linger=1000)
            self.tap_curve.close()
        # The last CameraDone still queued leaves with the context's linger (`Service.shutdown`).


def main(argv=None) -> int:
    from anonengine.engine.runtime import run_service

    def extra(parser):
        parser.add_argument("--worker", type=int, default=0, help="encode worker number")

    return run_service(lambda cfg, args: EncodeService(cfg, args.instance, args.worker), argv, extra)


if __name__ == "__main__":
    from anonengine.interrupts import exit_process

    exit_process(main())
