"""Garbage on the engine's sockets is logged, counted and dropped, never fatal: a running engine takes
malformed bytes, messages of the wrong type and oversized messages on its control socket, its events
socket and a stage's inbox, and every camera still finishes with every frame it took in."""

from __future__ import annotations

import json
import signal

import msgpack
import pytest
import zmq
from test_engine_control import cli, launch_in, seqs, small_and_fast, wait_for

from anonengine import messages
from anonengine.config import CameraConfig, EngineConfig
from anonengine.engine.runtime import Endpoints
from anonengine.sample import make_sample

FRAMES = 60
GARBAGE = [b"", b"\xc1\xc1", b'{"op": "status"}', msgpack.packb({"type": "Pickle"}),
           msgpack.packb({"type": "Release", "camera": "a", "seq": "x", "slot": 0}),
           messages.encode(messages.Detach("a"))]  # a well-formed message on the wrong socket
OVERSIZED = b"\x00" * (messages.MAX_MESSAGE_BYTES + 1)


def test_garbage_on_any_socket_is_dropped_and_the_engine_goes_on(models_dir, tmp_path):
    clip = make_sample(tmp_path / "clip", width=320, height=192, frames=FRAMES)
    cfg = small_and_fast(EngineConfig(cameras=[CameraConfig(name="a", source=str(clip.video),
                                                            output=str(tmp_path / "a.mp4"))]))
    cfg.anonymizer.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.engine.run_dir, cfg.tap.endpoint, cfg.engine.stats_interval_s = str(tmp_path / "run"), "", 0.2
    cfg.cameras[0].live = True  # paced at 25 fps: the garbage arrives while frames are in flight
    proc = launch_in(tmp_path, cfg)
    ctx = zmq.Context()
    try:
        assert wait_for(lambda: list((tmp_path / "run").glob("*/composite-0.sock")), 60)
        instance = next((tmp_path / "run").glob("*/control.sock")).parent.name
        endpoints = Endpoints(str(tmp_path / "run"), instance)

        # The control socket answers garbage with an error, and still answers real requests after it.
        for junk in GARBAGE[:5]:
            req = ctx.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.connect(endpoints.control)
            req.send(junk)
            assert req.poll(5000), f"no answer to {junk!r}"
            reply = messages.decode(req.recv())
            assert isinstance(reply, messages.Reply) and not reply.ok and reply.error
            req.close()
        big = ctx.socket(zmq.REQ)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(endpoints.control)
        big.send(OVERSIZED)  # the engine drops the connection; nothing else happens
        big.close()

        # A stage's inbox and the launcher's events socket get the same, and an oversized message.
        for endpoint in (endpoints.composite(0), endpoints.encode(0), endpoints.events, endpoints.capture("a")):
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 1000)
            push.connect(endpoint)
            for junk in GARBAGE + [OVERSIZED]:
                push.send(junk)
            push.close()

        status = cli("status", "--run-dir", tmp_path / "run")
        assert status.returncode == 0, status.stderr
        assert wait_for(lambda: (tmp_path / "a.mp4").exists() or proc.poll() is not None, 120)
        now = json.loads(cli("status", "--run-dir", tmp_path / "run").stdout)
        assert now["done"] == ["a"] and now["malformed"] >= 5
        counted = {k: v.get("malformed", 0) for k, v in now["stats"].items()}
        assert counted["composite[w0]"] >= 5 and counted["encode[w0]"] >= 5, counted
        assert proc.poll() is None, "the engine stopped"
    finally:
        ctx.destroy(linger=0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    # A live camera turns new frames away at the door while the engine is behind (on a loaded machine, as
    # it starts): those are never numbered. Every frame it numbered comes out, once, in order.
    capture = now["stats"]["capture[a]"]
    assert capture["frames"] + capture.get("dropped_busy", 0) == FRAMES, capture
    assert seqs(tmp_path / "a.mp4") == list(range(capture["frames"])), now["stats"]


def test_a_flooded_socket_is_read_in_heartbeat_sized_turns(tmp_path):
    """A stage that cannot keep up (its inbox never empties) still gets back to its run loop, which sends
    its heartbeat, within its budget: on a GPU server's 16 streams, compositors that read until their inbox
    was empty were killed as hung, and their frames went out obscured. What is left stays queued, in order."""
    import time

    from anonengine.engine.runtime import receive_waiting

    context = zmq.Context()
    try:
        inbox = context.socket(zmq.PULL)
        inbox.bind(f"ipc://{tmp_path}/inbox")
        sender = context.socket(zmq.PUSH)
        sender.connect(f"ipc://{tmp_path}/inbox")
        for seq in range(300):
            sender.send(messages.encode(messages.Received("cam0", seq)))
        assert inbox.poll(5000)
        time.sleep(0.2)  # all 300 across the socket
        handled = []
        started = time.monotonic()
        for message in receive_waiting(inbox, pytest.fail, budget_s=0.1):
            handled.append(message.seq)
            time.sleep(0.005)  # a frame's work
        taken = time.monotonic() - started
        assert 1 <= len(handled) < 300 and taken < 0.1 + 0.05
        rest = [m.seq for m in receive_waiting(inbox, pytest.fail)]
        assert handled + rest == list(range(300))
    finally:
        context.destroy(linger=0)
