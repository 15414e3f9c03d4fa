"""The engine's HTTP server: Prometheus metrics, health probes, and a page of live anonymized previews.

It runs in a thread of the launcher (aiohttp, its own event loop) and reads only what the launcher
hands it: the latest `metrics.Snapshot`, replaced whole, and the tap, which carries anonymized frames
only, so no original frame can reach a browser. The previews subscribe to the tap only while someone
watches (a subscribed tap makes the encoder encode a JPEG of every frame).

    /            one tile per camera: preview, state, fps, reconnects, last error
    /metrics     Prometheus text format
    /healthz     200 while the launcher's loop runs (503 when it has not looked in SNAPSHOT_STALE_S)
    /readyz      200 when every camera is running; 503 and the reasons, one a line, otherwise
    /api/status  the snapshot as JSON (what `anonengine status` prints)
    /cameras/NAME/preview.mjpg, /cameras/NAME/preview.jpg
                 404 for a camera the engine does not have; 503 and the reason while it has no preview
                 (the tap is off, the engine is starting, no frame yet)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import zmq

from anonengine import messages
from anonengine.config import HttpConfig, split_listen
from anonengine.engine import metrics
from anonengine.errors import ConfigError

log = logging.getLogger("anonengine.http")

SNAPSHOT_STALE_S = 5.0  # the launcher replaces its snapshot every 0.5 s; older than this, its loop is stuck
PREVIEW_IDLE_S = 5.0  # the preview's tap subscription ends this long after its last viewer left
TOKEN_COOKIE = "anonengine_token"
UNAUTHENTICATED = frozenset({"/healthz", "/readyz"})  # probes carry no token; they say nothing of the video
MJPEG_BOUNDARY = "anonengineframe"
TAP_OFF = "no preview: the engine's tap is off (tap.endpoint in its config; `run --tap ipc`)"


class HttpServerError(ConfigError):
    """The HTTP address cannot be served (busy, not ours), or its token cannot be read."""


@dataclass
class PreviewFrame:
    jpeg: bytes
    seq: int
    obscured: bool
    at: float  # time.monotonic() when it came


class Preview:
    """The latest anonymized frame of each camera, from the tap, scaled down and JPEG-encoded at most
    `preview_fps` times a second; subscribed only while a viewer asked for a frame in the last
    PREVIEW_IDLE_S."""

    def __init__(self, cfg: HttpConfig, connect: Callable[[zmq.Context], zmq.Socket] | None) -> None:
        self.cfg, self.connect = cfg, connect
        self.frames: dict[str, PreviewFrame] = {}
        self.wanted_at = float("-inf")
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.closing = threading.Event()
        self.context = zmq.Context()

    @property
    def available(self) -> bool:
        return self.connect is not None

    def want(self) -> None:
        """A viewer wants frames: subscribes to the tap if nobody watched a moment ago."""
        if self.connect is None:
            return
        with self.lock:  # with `close`: a thread is either started and seen there, or never started
            if self.closing.is_set():
                return
            self.wanted_at = time.monotonic()
            if self.thread is None or not self.thread.is_alive():
                thread = threading.Thread(target=self._follow, name="preview", daemon=True)
                thread.start()
                self.thread = thread

    def latest(self, camera: str) -> PreviewFrame | None:
        return self.frames.get(camera)

    def _follow(self) -> None:
        sock = self.connect(self.context)
        try:
            while not self.closing.is_set() and time.monotonic() - self.wanted_at < PREVIEW_IDLE_S:
                if not sock.poll(200):
                    continue
                try:
                    _topic, header, payload = sock.recv_multipart()
                    tapped = messages.decode(header)
                    if isinstance(tapped, messages.TapHeader):
                        self._keep(tapped, payload)
                except (ValueError, messages.MessageError) as exc:
                    log.debug("preview dropped a tap message: %s", exc)
        finally:
            sock.close(linger=0)

    def _keep(self, tapped: messages.TapHeader, payload: bytes) -> None:
        before = self.frames.get(tapped.camera)
        now = time.monotonic()
        if before is not None and now - before.at < 1 / self.cfg.preview_fps:
            return  # a frame this camera's tile will not show: not decoded
        if tapped.format == "jpeg" and tapped.width <= self.cfg.preview_width:
            jpeg = payload
        else:
            image = (cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR) if tapped.format == "jpeg"
                     else np.frombuffer(payload, np.uint8).reshape(tapped.height, tapped.width, 3))
            if image is None:
                return
            if image.shape[1] > self.cfg.preview_width:
                height = round(image.shape[0] * self.cfg.preview_width / image.shape[1])
                image = cv2.resize(image, (self.cfg.preview_width, height), interpolation=cv2.INTER_AREA)
            jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
        self.frames[tapped.camera] = PreviewFrame(jpeg, tapped.seq, tapped.obscured, now)

    def close(self) -> None:
        with self.lock:  # a viewer's request meanwhile made a thread not yet started: join raised
            self.closing.set()
            thread = self.thread
        if thread is not None:
            thread.join(2)
        self.context.destroy(linger=0)


class HttpServer:
    """Binds at once (a busy address is the user's one-line error before any stage starts), then serves
    from its own thread until `close`."""

    def __init__(self, cfg: HttpConfig, snapshot: Callable[[], metrics.Snapshot | None],
                 tap_connect: Callable[[zmq.Context], zmq.Socket] | None) -> None:
        self.cfg, self.snapshot = cfg, snapshot
        self.token = read_token(cfg.token_file) if cfg.token_file else None
        self.preview = Preview(cfg, tap_connect)
        host, port = split_listen(cfg.listen)
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.sock = socket.create_server((host, port), family=family, reuse_port=False)
        except OSError as exc:
            raise HttpServerError(f"cannot serve HTTP at {cfg.listen}: {os.strerror(exc.errno) if exc.errno else exc}") from None
        self.address = self.sock.getsockname()[:2]
        # The serving loop once it takes requests, and whether `close` came: one decided under the lock, so a
        # close before the loop runs (the thread still importing aiohttp) keeps it from running at all. Before,
        # such a close found no loop to stop, and waited 5 s for a thread that then served on.
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def _serve(self) -> None:
        from aiohttp import web

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._app(), handle_signals=False, access_log=None, shutdown_timeout=1.0)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, self.sock).start())
            with self._lock:
                self._loop = None if self._closed else loop
            if self._loop is not None:
                loop.run_forever()  # until `close` stops it (queued before it runs, it stops it at once)
            loop.run_until_complete(runner.cleanup())
        except Exception:  # the engine goes on without its HTTP server, and says so once
            log.exception("the HTTP server stopped")
        finally:
            loop.close()

    def _app(self):
        from aiohttp import web

        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get("/", self._page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/cameras/{camera}/preview.jpg", self._preview_jpeg)
        app.router.add_get("/cameras/{camera}/preview.mjpg", self._preview_mjpeg)
        return app

    # --- access --------------------------------------------------------------------------------------
    @property
    def _authenticate(self):
        from aiohttp import web

        @web.middleware
        async def authenticate(request, handler):
            if self.token is None or request.path in UNAUTHENTICATED:
                return await handler(request)
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            given = given or request.cookies.get(TOKEN_COOKIE, "") or request.query.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return web.Response(status=401, text="a token is needed (Authorization: Bearer TOKEN)\n",
                                    headers={"WWW-Authenticate": "Bearer"})
            response = await handler(request)
            if request.query.get("token") and isinstance(response, web.Response):
                # A browser given ?token= once keeps it, out of its history's later URLs and of scripts.
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Strict")
            return response

        return authenticate

    # --- health --------------------------------------------------------------------------------------
    def _fresh(self) -> metrics.Snapshot | None:
        snapshot = self.snapshot()
        if snapshot is None or time.time() - snapshot.taken > SNAPSHOT_STALE_S:
            return None
        return snapshot

    async def _healthz(self, request):
        from aiohttp import web

        if self._fresh() is None:
            return web.Response(status=503, text="the launcher's loop has not run for a while\n")
        return web.Response(text="ok\n")

    async def _readyz(self, request):
        from aiohttp import web

        snapshot = self._fresh()
        if snapshot is None:
            return web.Response(status=503, text="starting\n")
        if snapshot.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="".join(f"{reason}\n" for reason in snapshot.reasons()))

    async def _status(self, request):
        from aiohttp import web

        snapshot = self.snapshot()
        if snapshot is None:
            return web.json_response({"ready": False, "reasons": ["starting"], "cameras": {}}, status=503)
        return web.json_response({**snapshot.as_status(), "preview": self.preview.available})

    async def _metrics(self, request):
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        snapshot = self.snapshot()
        if snapshot is not None:
            registry.register(SnapshotCollector(snapshot))
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- previews ------------------------------------------------------------------------------------
    async def _page(self, request):
        from aiohttp import web

        page = resources.files("anonengine.engine").joinpath("page.html").read_text()
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    def _unknown(self, camera: str) -> bool:
        """The engine has no camera of that name (while it starts, with no snapshot yet, none is unknown)."""
        snapshot = self.snapshot()
        return snapshot is not None and all(c.name != camera for c in snapshot.cameras)

    def _done(self, camera: str) -> bool:
        """The camera's file is done: no frame will come (its preview had said "no frame of this camera yet", and
        to ask again, for ever; its MJPEG was a stream that never sent one)."""
        snapshot = self.snapshot()
        return snapshot is not None and any(c.name == camera and c.state == metrics.DONE for c in snapshot.cameras)

    def _no_preview(self, camera: str):
        """The answer for a preview that cannot be had (404: no such camera; 503: none now, and why), or None.
        Before, an unknown camera's MJPEG, or any while the tap was off, was a 200 stream that never sent a
        frame."""
        from aiohttp import web

        if self._unknown(camera):
            return web.Response(status=404, text=f"no camera {camera!r} in this engine\n")
        if not self.preview.available:
            return web.Response(status=503, text=f"{TAP_OFF}\n")
        if self.snapshot() is None:
            return web.Response(status=503, text="starting\n", headers={"Retry-After": "1"})
        if self._done(camera) and self.preview.latest(camera) is None:  # a file's, ended before anyone looked
            return web.Response(status=404, text=f"camera {camera!r} is done: no frame of it to preview\n")
        return None

    async def _preview_jpeg(self, request):
        from aiohttp import web

        camera = request.match_info["camera"]
        refused = self._no_preview(camera)
        if refused is not None:
            return refused
        self.preview.want()
        frame = self.preview.latest(camera)
        for _ in range(20):  # a first request waits a moment for the tap's first frame
            if frame is not None:
                break
            await asyncio.sleep(0.1)
            frame = self.preview.latest(camera)
        if frame is None:
            return web.Response(status=503, text="no frame of this camera yet\n", headers={"Retry-After": "1"})
        return web.Response(body=frame.jpeg, content_type="image/jpeg",
                            headers={"Cache-Control": "no-store", "X-Frame-Seq": str(frame.seq)})

    async def _preview_mjpeg(self, request):
        """The camera's previews as one multipart response (MJPEG), as long as the viewer stays and the
        camera is the engine's."""
        from aiohttp import web

        camera = request.match_info["camera"]
        refused = self._no_preview(camera)
        if refused is not None:
            return refused
        response = web.StreamResponse(headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}", "Cache-Control": "no-store"})
        await response.prepare(request)
        sent = None
        try:
            while not self.preview.closing.is_set() and not self._unknown(camera):  # detached: the stream ends
                self.preview.want()
                frame = self.preview.latest(camera)
                if frame is not None and frame is not sent:
                    await response.write(f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         f"{len(frame.jpeg)}\r\n\r\n".encode() + frame.jpeg + b"\r\n")
                    sent = frame
                await asyncio.sleep(1 / (2 * self.cfg.preview_fps))
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the viewer left
        return response

    def close(self) -> None:
        self.preview.close()
        with self._lock:
            self._closed = True
            loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # closed meanwhile
                pass
        self.thread.join(5)
        self.sock.close()


class SnapshotCollector:
    """The snapshot in Prometheus' terms (names as Prometheus' conventions want them: units, _total)."""

    def __init__(self, snapshot: metrics.Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        s = self.snapshot
        frames = CounterMetricFamily("anonengine_frames", "Frames of each camera: in (captured), out (written "
                                     "anonymized), dropped, late (past their deadline), obscured (hidden whole).",
                                     labels=["camera", "status"])
        fps = GaugeMetricFamily("anonengine_camera_fps", "Frames out a second, over the last 10 s.", labels=["camera"])
        dropping = GaugeMetricFamily("anonengine_camera_dropped_ratio", "Of a live camera's frames that came over the "
                                     "last 10 s, the share dropped at the capture (the engine behind it).",
                                     labels=["camera"])
        ready = GaugeMetricFamily("anonengine_camera_ready", "1 when the camera runs (or its file is done).",
                                  labels=["camera"])
        state = GaugeMetricFamily("anonengine_camera_state", "1 for the camera's current state.",
                                  labels=["camera", "state"])
        reconnects = CounterMetricFamily("anonengine_source_reconnects", "Times a live source was lost and "
                                         "reconnected to.", labels=["camera"])
        queue = GaugeMetricFamily("anonengine_queue_depth_frames", "Frames held: in_flight between capture and "
                                  "encoder; future_wait of those composited and waiting for the future's fill.",
                                  labels=["camera", "queue"])
        for c in s.cameras:
            for status, n in c.frames.items():
                frames.add_metric([c.name, status], n)
            fps.add_metric([c.name], c.fps)
            dropping.add_metric([c.name], c.dropping)
            ready.add_metric([c.name], 1.0 if c.ready else 0.0)
            for name in metrics.CAMERA_STATES:
                state.add_metric([c.name, name], 1.0 if c.state == name else 0.0)
            reconnects.add_metric([c.name], c.reconnects)
            queue.add_metric([c.name, "in_flight"], c.in_flight)
            queue.add_metric([c.name, "future_wait"], c.waiting)
        yield from (frames, fps, dropping, ready, state, reconnects, queue)

        up = GaugeMetricFamily("anonengine_stage_up", "1 for a stage process running and heard from.",
                               labels=["stage", "process"])
        for stage in s.stages:
            up.add_metric([stage.stage, stage.name], 1.0 if stage.up else 0.0)
        restarts = CounterMetricFamily("anonengine_stage_restarts", "Times a stage's processes were restarted.",
                                       labels=["stage"])
        for stage, n in sorted(s.restarts.items()):
            restarts.add_metric([stage], n)
        yield up
        yield restarts
        for name, unit_help in (("latency_seconds", "Time the detector took for one batch of frames."),
                                ("batch_size", "Frames in each batch the detector ran.")):
            h = s.histograms.get(name)
            if h is None:
                continue
            cumulative, buckets = 0, []
            for bound, count in zip((*h.bounds, float("inf")), h.counts):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            family = HistogramMetricFamily(f"anonengine_detector_{name}", unit_help)
            family.add_metric([], buckets, sum_value=h.total)
            yield family
        yield GaugeMetricFamily("anonengine_shared_memory_bytes", "Shared memory the engine's frame rings take.",
                                value=s.shared_memory_bytes)
        yield CounterMetricFamily("anonengine_malformed_messages", "Messages dropped as garbage on the engine's "
                                  "sockets.", value=s.malformed)
        yield CounterMetricFamily("anonengine_tap_dropped_frames", "Tap frames the encoder could not hand to the tap "
                                  "(a subscriber's own misses show in its seq).", value=s.tap_dropped)
        yield GaugeMetricFamily("anonengine_ready", "1 when every camera runs (what /readyz says).",
                                value=1.0 if s.ready else 0.0)


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise HttpServerError(f"cannot read http.token_file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise HttpServerError(f"http.token_file {path} holds {len(token)} characters: use at least 16 random ones")
    return token
