"""Security by default: an owner-only run folder, the tap on ipc, TCP taps only with CURVE, and another local
user who can reach none of a running engine's sockets or shared memory."""

from __future__ import annotations

import itertools
import json
import os
import pwd
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq
from test_engine import engine_config, wait_for
from test_engine_control import cli, launch_in

from anonengine import messages
from anonengine.config import EngineConfig, TapConfig, load_yaml
from anonengine.curve import CurveClient, CurveServer, write_key_pair, write_public_key
from anonengine.engine.launcher import Launcher
from anonengine.engine.runtime import Endpoints
from anonengine.errors import ConfigError
from anonengine.rundir import default_run_dir, private_dir, run_dir_path
from anonengine.sample import make_sample
from anonengine.shm import PREFIX, SHM_DIR, FrameRing, instance_segments, remove_stale_segments
from anonengine.tap import TapRefused, subscribe

OTHER_USER = "anontest"
FRAMES = 16
# What a subscriber the tap refuses is told (after "the tap at ENDPOINT ").
REFUSED_KEY = "refused this client's key (not among its allowed clients)"
WRONG_SERVER_KEY = "broke off the CURVE handshake: the server key given is not its public key"
NO_KEYS = "takes CURVE clients only: give this client's key pair and the tap's public key"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("security_clip"), width=320, height=192, frames=FRAMES)


# --- the run folder ------------------------------------------------------------------------------------------


def test_the_default_run_folder_is_the_users_own(monkeypatch):
    """$XDG_RUNTIME_DIR is the session's private runtime folder; without it root gets /run, others /tmp."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_run_dir() == Path("/run/user/1000/anonengine")
    assert run_dir_path("") == default_run_dir() and run_dir_path("here") == Path("here")
    assert Endpoints("", "p1").dir == Path("/run/user/1000/anonengine/p1")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_run_dir() == Path("/run/anonengine")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_run_dir() == Path("/tmp/anonengine-1000")


def test_a_new_run_folder_is_made_owner_only_with_its_parents(tmp_path):
    made = private_dir(tmp_path / "parent" / "run")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert private_dir(made) == made  # there already, and safe: used


def _open_folder(path: Path) -> Path:
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    return path


def _link_to_own_folder(path: Path) -> Path:
    target = private_dir(path.parent / "target")
    path.symlink_to(target)
    return path


def _someone_elses_folder(path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    private_dir(path)
    os.chown(path, 54321, 54321)
    return path


def _a_file(path: Path) -> Path:
    path.write_text("")
    return path


UNSAFE = {"open_to_others": (_open_folder, "other users may enter it (mode 755); chmod 700 it"),
          "symlink": (_link_to_own_folder, "it is a symbolic link"),
          "another_owner": (_someone_elses_folder, "it belongs to uid 54321"),
          "a_file": (_a_file, "it is not a folder")}


@pytest.mark.parametrize("make,reason", UNSAFE.values(), ids=UNSAFE.keys())
def test_a_run_folder_someone_else_could_control_is_refused_with_one_line(tmp_path, make, reason):
    """In /tmp anybody can make /tmp/anonengine-<uid> first: the engine must not put its sockets in it."""
    folder = make(tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        private_dir(folder)
    assert str(refused.value).startswith(f"refusing the run folder {folder}: {reason}")
    assert "\n" not in str(refused.value)


def test_the_engine_and_the_control_verbs_refuse_an_open_run_folder(tmp_path):
    run_dir = _open_folder(tmp_path / "run")
    cfg = EngineConfig()
    cfg.engine.run_dir = str(run_dir)
    launcher = Launcher(cfg)
    with pytest.raises(ConfigError, match="other users may enter it"):
        launcher.start()
    assert list(run_dir.iterdir()) == []  # not even a lock file
    status = cli("status", "--run-dir", run_dir)
    assert status.returncode == 2
    assert status.stderr.strip() == (f"anonengine: error: refusing the run folder {run_dir}: other users may "
                                     "enter it (mode 755); chmod 700 it")


def test_shared_memory_segments_are_owner_only():
    ring = FrameRing.create(f"{PREFIX}-sectest{os.getpid()}-ring", 2, 8, 8)
    try:
        assert stat.S_IMODE((SHM_DIR / ring.name).stat().st_mode) == 0o600
    finally:
        ring.close()


# --- keys and the tap's settings ------------------------------------------------------------------------------


def test_keys_writes_a_pair_with_a_private_secret_and_never_overwrites(tmp_path):
    made = cli("keys", tmp_path / "keys", "--name", "server")
    assert made.returncode == 0, made.stderr
    public, secret = tmp_path / "keys/server.key", tmp_path / "keys/server.key_secret"
    assert made.stdout.splitlines()[0].startswith(f"public key: {public}")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert zmq.auth.load_certificate(public)[0] == zmq.auth.load_certificate(secret)[0]
    again = cli("keys", tmp_path / "keys", "--name", "server")
    assert again.returncode == 2
    assert again.stderr.strip() == f"anonengine: error: {public} exists: remove it or choose another --name"
    write_public_key(tmp_path / "mine.key", b"x" * 40)
    assert zmq.auth.load_certificate(tmp_path / "mine.key") == (b"x" * 40, None)


def test_a_tcp_tap_without_curve_keys_is_refused_with_the_way_to_fix_it(tmp_path):
    config = tmp_path / "engine.yaml"
    config.write_text("tap:\n  endpoint: tcp://0.0.0.0:5599\n")
    with pytest.raises(ConfigError) as refused:
        load_yaml(config, EngineConfig)
    assert str(refused.value) == (f"{config}: line 1: tap: a tcp:// tap needs tap.curve_server_key and "
                                  "tap.curve_clients (make key pairs with `anonengine keys DIR --name NAME`), or "
                                  "use the ipc tap (endpoint: ipc)")
    run = cli("run", "--video-source", tmp_path / "x.mp4", "--tap", "tcp://127.0.0.1:5599")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "--tap-server-key" in run.stderr and "anonengine keys" in run.stderr
    tap = cli("tap", "tcp://127.0.0.1:5599", "--frames", "1")
    assert tap.returncode == 2 and "--key" in tap.stderr and len(tap.stderr.strip().splitlines()) == 1


# --- a TCP tap lets in listed keys only -----------------------------------------------------------------------


def _collect(endpoint: str, curve: CurveClient | None, sink: list, stop: threading.Event,
             refusals: list | None = None) -> None:
    try:
        for meta, _ in subscribe(endpoint, hwm=10000, until=stop, curve=curve, context=zmq.Context()):
            sink.append(meta["seq"])
    except TapRefused as refused:
        if refusals is None:
            raise
        refusals.append(str(refused))


@pytest.mark.parametrize("encode_workers", [1, 2], ids=["encoder", "relay"])
def test_a_curve_tap_gives_nothing_to_no_key_or_a_wrong_key_and_everything_to_a_listed_key(
        clip, models_dir, tmp_path, encode_workers):
    """Three subscribers at once, and the launcher's own key (for its preview page): 0, 0, all, all."""
    _, server_secret = write_key_pair(tmp_path / "keys", "server")
    client_public, client_secret = write_key_pair(tmp_path / "viewer", "viewer")
    _, stranger_secret = write_key_pair(tmp_path / "stranger", "stranger")
    (tmp_path / "clients").mkdir()
    shutil.copy(client_public, tmp_path / "clients")
    cfg = engine_config(tmp_path, models_dir, {"cam": clip.video}, encode_workers=encode_workers,
                        composite_workers=encode_workers)
    cfg.anonymizer.detector.imgsz = 320
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    # Set whole: a TCP endpoint and its keys are valid only together.
    cfg.tap = TapConfig(endpoint=endpoint, curve_server_key=str(server_secret), curve_clients=str(tmp_path / "clients"),
                        hwm=10000)
    server_public = tmp_path / "keys/server.key"
    launcher = Launcher(cfg)
    launcher.start()
    assert launcher.tap_client is not None and launcher.tap_endpoint == cfg.tap.endpoint
    subscribers = {"none": None, "wrong": CurveClient.from_files(stranger_secret, server_public),
                   "right": CurveClient.from_files(client_secret, server_public), "launcher": launcher.tap_client}
    received: dict[str, list] = {name: [] for name in subscribers}
    refused: dict[str, list] = {name: [] for name in subscribers}
    stop = threading.Event()
    threads = [threading.Thread(target=_collect, args=(cfg.tap.endpoint, curve, received[name], stop, refused[name]),
                                daemon=True)
               for name, curve in subscribers.items()]
    previewed: list = []
    threads.append(threading.Thread(target=_preview, args=(launcher, previewed, stop), daemon=True))
    for thread in threads:
        thread.start()
    try:
        launcher.run()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert launcher.done["cam"].frames == FRAMES
    assert {name: len(seqs) for name, seqs in received.items()} == {"none": 0, "wrong": 0, "right": FRAMES,
                                                                    "launcher": FRAMES}
    assert received["right"] == list(range(FRAMES))
    tap = f"the tap at {endpoint}"  # the refused ones were told, not left waiting
    # A client without keys is told once the tap hung up on it 3 times, or on a mechanism mismatch: a short run
    # on a busy machine (the whole suite) can end first. A refused key is told at its first handshake.
    assert refused["none"] in ([], [f"{tap} {NO_KEYS}"])
    assert {name: refused[name] for name in ("wrong", "right", "launcher")} == {
        "wrong": [f"{tap} {REFUSED_KEY}"], "right": [], "launcher": []}
    assert previewed, "the preview page's subscription (the launcher's key) got no frame"


@pytest.fixture
def curve_tap(tmp_path):
    """A CURVE tap as the engine binds it (PUB, ZAP handler, listed clients) on 127.0.0.1, without an engine:
    (endpoint, keys folder, publish(seq) sending one tiny frame)."""
    keys = tmp_path / "keys"
    _, server_secret = write_key_pair(keys, "server")
    viewer_public, _ = write_key_pair(keys, "viewer")
    write_key_pair(keys, "stranger")
    write_key_pair(keys, "impostor")  # a server key pair that is not the tap's
    (tmp_path / "clients").mkdir()
    shutil.copy(viewer_public, tmp_path / "clients")
    context = zmq.Context()
    server = CurveServer(server_secret, tmp_path / "clients")
    pub = context.socket(zmq.PUB)
    server.secure(context, pub)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"

    def publish(seq: int) -> None:
        header = messages.TapHeader(camera="cam", seq=seq, pts=seq, time=seq / 25, width=2, height=2, format="raw",
                                    obscured=False)
        pub.send_multipart([b"cam", messages.encode(header), bytes(12)])

    yield endpoint, keys, publish
    pub.close(linger=0)
    server.close()
    context.term()


def test_a_refused_key_or_a_wrong_server_key_is_told_at_once_and_an_idle_tap_still_waited_for(curve_tap):
    """Before, a refused subscriber received nothing, as from an idle engine: `subscribe` waited for ever (or its
    timeout) and `anonengine tap` ended 0 without a word. libzmq tells the client: the ZAP handler's 400 comes
    back as HANDSHAKE_FAILED_AUTH; a server that cannot open the HELLO (another server key) hangs up, each try."""
    endpoint, keys, publish = curve_tap
    tap = f"the tap at {endpoint}"
    refusals = [("stranger", "server", f"{tap} {REFUSED_KEY}"), ("viewer", "impostor", f"{tap} {WRONG_SERVER_KEY}")]
    for client, server, message in refusals:
        started = time.monotonic()
        with pytest.raises(TapRefused) as refused:
            next(subscribe(endpoint, timeout_s=20, context=zmq.Context(),
                           curve=CurveClient.from_files(keys / f"{client}.key_secret", keys / f"{server}.key")))
        assert str(refused.value) == message
        assert time.monotonic() - started < 5, "told only after waiting"
    for _ in range(5):  # told by the greeting, or by the tap hanging up first: the same line either way
        with pytest.raises(TapRefused) as refused:
            next(subscribe(endpoint, timeout_s=20, context=zmq.Context()))
        assert str(refused.value) == f"{tap} {NO_KEYS}"

    # A listed key on an idle tap waits as before (its timeout, no error), then gets the frames.
    listed = CurveClient.from_files(keys / "viewer.key_secret", keys / "server.key")
    started = time.monotonic()
    assert list(subscribe(endpoint, timeout_s=1.5, context=zmq.Context(), curve=listed)) == []
    assert 1.4 < time.monotonic() - started < 5
    got: list = []
    stop = threading.Event()
    reader = threading.Thread(target=_collect, args=(endpoint, listed, got, stop), daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: publish(len(got)) or got, 10), "the listed key got no frame"
    finally:
        stop.set()
        reader.join(10)

    # And the command says it in one line, exit 2, instead of ending 0 (or waiting) without a word.
    for client, server, message in refusals:
        started = time.monotonic()
        told = cli("tap", endpoint, "--key", keys / f"{client}.key_secret", "--server-key", keys / f"{server}.key",
                   "--timeout", "20")
        assert (told.returncode, told.stdout, told.stderr) == (2, "", f"anonengine: error: {message}\n")
        assert time.monotonic() - started < 15, "told only after waiting"


def _preview(launcher: Launcher, sink: list, stop: threading.Event) -> None:
    """What the preview page does: the launcher's own subscription, keeping only the latest frames."""
    context = zmq.Context()
    sock = launcher._tap_connect()(context)
    try:
        while not stop.is_set() or sock.poll(100):
            if sock.poll(100):
                sink.append(sock.recv_multipart())
    finally:
        sock.close(linger=0)
        context.term()


# --- another local user -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_user() -> pwd.struct_passwd:
    """A second local account (made when the tests run as root, as in CI)."""
    try:
        return pwd.getpwnam(OTHER_USER)
    except KeyError:
        if os.geteuid() != 0:
            pytest.skip(f"needs root, or a user {OTHER_USER!r}, to test what another user can reach")
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                   check=True, capture_output=True)
    return pwd.getpwnam(OTHER_USER)


def as_user(user: pwd.struct_passwd, work, timeout_s: float = 30):
    """`work()` run in a forked child under `user`'s uid and gid; returns what it returns (JSON-able).

    A fork, not a new interpreter: the test's Python may live where the other user cannot read it."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            answer = {"result": work()}
        except BaseException as exc:  # noqa: BLE001 - carried to the test
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(answer).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and select.select([read], [], [], deadline - time.monotonic())[0]:
        chunk = os.read(read, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    if not chunks:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    answer = json.loads(b"".join(chunks) or b'{"error": "timed out"}')
    assert "error" not in answer, answer["error"]
    return answer["result"]


def _reach_control(control: str) -> dict:
    """What another user gets from the control socket: the kernel's answer, and zmq's (a StatusRequest)."""
    raw = socket.socket(socket.AF_UNIX)
    try:
        raw.connect(control[len("ipc://"):])
        kernel = "connected"
    except OSError as exc:
        kernel = type(exc).__name__
    finally:
        raw.close()
    context = zmq.Context()
    req = context.socket(zmq.REQ)
    req.connect(control)
    answered = False
    if req.poll(1500, zmq.POLLOUT):
        req.send(messages.encode(messages.StatusRequest()))
        answered = bool(req.poll(1500))
    context.destroy(linger=0)
    return {"kernel": kernel, "answered": answered}


def _frames_from_tap(endpoint: str, seconds: float) -> int:
    return sum(1 for _ in subscribe(endpoint, timeout_s=seconds, context=zmq.Context()))


def _open_segments(names: list[str]) -> dict[str, str]:
    opened = {}
    for name in names:
        try:
            shared_memory.SharedMemory(name=name).close()
            opened[name] = "opened"
        except OSError as exc:
            opened[name] = type(exc).__name__
    return opened


@pytest.fixture
def open_parent():
    """A folder anyone may enter (as /tmp is), outside pytest's owner-only tmp_path: only what the engine
    makes in it keeps another user out."""
    parent = Path(tempfile.mkdtemp(prefix="anonengine-sec-", dir="/tmp"))
    os.chmod(parent, 0o755)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def test_another_local_user_reaches_neither_control_nor_tap_nor_shared_memory(other_user, models_dir, open_parent):
    """The other user can list the run folder's parent, yet connects to nothing and opens no frame."""
    parent = open_parent
    clip = make_sample(parent / "clip", width=320, height=192, frames=250)  # 10 s as a live camera
    cfg = engine_config(parent, models_dir, {"door": clip.video})
    cfg.anonymizer.detector.imgsz = 320
    cfg.cameras[0].live, cfg.engine.exit_when_done = True, False
    cfg.engine.run_dir, cfg.tap.endpoint = str(parent / "run"), "ipc"
    proc = launch_in(parent, cfg)
    try:
        _check_other_user_is_kept_out(other_user, parent, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _check_other_user_is_kept_out(other_user, parent: Path, proc: subprocess.Popen) -> None:
    run_dir = parent / "run"
    assert wait_for(lambda: list(run_dir.glob("*/tap.sock")) or proc.poll() is not None, 60)
    instance = next(run_dir.glob("*/tap.sock")).parent.name
    endpoints = Endpoints(str(run_dir), instance)
    mine: list = []
    stop = threading.Event()
    threading.Thread(target=_collect, args=(endpoints.tap, None, mine, stop), daemon=True).start()
    try:
        assert wait_for(lambda: mine or proc.poll() is not None, 60) and mine, "the engine's tap gave its owner nothing"
        segments = instance_segments(instance)
        assert segments, "no shared memory to test"
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700

        listing = as_user(other_user, lambda: (sorted(os.listdir(parent)), _listable(run_dir)))
        assert "run" in listing[0] and listing[1] == "PermissionError"
        assert as_user(other_user, lambda: _reach_control(endpoints.control)) == {"kernel": "PermissionError",
                                                                                 "answered": False}
        before = len(mine)
        assert as_user(other_user, lambda: _frames_from_tap(endpoints.tap, 2.0)) == 0
        assert len(mine) > before, "no frame went out while the other user listened: the test proves nothing"
        assert as_user(other_user, lambda: _open_segments(segments)) == dict.fromkeys(segments, "PermissionError")
        status = cli("status", "--run-dir", run_dir)  # and its owner still can
        assert status.returncode == 0 and "door" in json.loads(status.stdout)["cameras"], status.stderr
        tapped = cli("tap", "--run-dir", run_dir, "--frames", "2", "--timeout", "20")  # finds the ipc tap
        assert tapped.returncode == 0 and len(tapped.stdout.splitlines()) == 2, tapped.stderr
    finally:
        stop.set()


def _listable(folder: Path) -> str:
    try:
        os.listdir(folder)
        return "listed"
    except OSError as exc:
        return type(exc).__name__


def test_the_start_up_sweep_skips_what_this_user_may_not_remove(other_user, open_parent):
    """Another user's dead engine left a segment in /dev/shm and, in a shared run folder, a lock this user
    cannot open: an engine starting must leave them, not fail."""
    dead = f"p{_dead_pid()}"
    segment = SHM_DIR / f"{PREFIX}-{dead}-cam"
    segment.write_bytes(b"\0" * 64)  # root's, in the sticky /dev/shm: the other user may not unlink it
    run_dir = open_parent / "shared"
    run_dir.mkdir(mode=0o700)
    (run_dir / dead).mkdir()
    (run_dir / f"{dead}.lock").touch(mode=0o600)  # root's, unreadable to the other user
    os.chown(run_dir, other_user.pw_uid, other_user.pw_gid)
    try:
        def sweep():
            removed = remove_stale_segments(lambda instance: instance != dead)
            cfg = EngineConfig()
            cfg.engine.run_dir = str(run_dir)
            Launcher(cfg)._remove_stale_run_dirs()
            return removed

        assert as_user(other_user, sweep) == []
        assert segment.exists()
    finally:
        segment.unlink(missing_ok=True)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_the_shipped_config_uses_the_safe_defaults():
    shipped = yaml.safe_load((Path(__file__).parents[1] / "config/engine.yaml").read_text())
    assert shipped["engine"]["run_dir"] == "" and shipped["tap"]["endpoint"] == "ipc"


def test_a_subscriber_of_one_camera_gets_no_other_cameras_frames(tmp_path):
    """ZeroMQ subscribes by prefix: `anonengine tap --camera cam1` got `cam10`'s frames too (200 of cam1's and
    250 of cam10's, an integrator's trial), which a consumer given one camera must not see."""
    from anonengine.tap import subscribe

    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    endpoint = f"ipc://{tmp_path}/tap.sock"
    pub.bind(endpoint)
    stop = threading.Event()

    def publish() -> None:
        seq = 0
        while not stop.is_set():
            for camera in ("cam1", "cam10", "cam1x"):
                header = messages.TapHeader(camera=camera, seq=seq, pts=seq, time=seq / 25, width=2, height=2,
                                            format="raw", obscured=False)
                pub.send_multipart([camera.encode(), messages.encode(header), bytes(12)])
            seq += 1
            time.sleep(0.01)

    publisher = threading.Thread(target=publish)
    publisher.start()
    frames = subscribe(endpoint, ("cam1",), timeout_s=10, context=context)
    try:
        seen = [meta["camera"] for meta, _ in itertools.islice(frames, 30)]
    finally:
        frames.close()
        stop.set()
        publisher.join()
        pub.close(linger=0)
        context.term()
    assert seen == ["cam1"] * 30


def test_a_tap_recording_goes_on_across_a_new_stream_and_writes_a_frame_sent_again_once(tmp_path):
    """`anonengine tap --record`: a camera attached again starts at seq 0, time 0 again, and the file failed as a
    whole ("cannot finish rec.mp4: Invalid argument", its 200 good frames lost); an encoder's restart sends its
    last frames again. The new stream follows on, the frames sent again are written once, and a stream of
    another size is fitted into the recording's."""
    import av

    from anonengine.tap import TapRecording

    recording = TapRecording(str(tmp_path / "rec.mp4"))

    def frame(seq: int, size: tuple[int, int]) -> tuple[dict, np.ndarray]:
        image = np.full((*size, 3), 20 * (seq % 10), np.uint8)
        return {"camera": "cam1", "seq": seq, "time": seq / 25, "pixel_aspect": (1, 1)}, image

    written = [recording.write(*frame(seq, (48, 64))) for seq in range(20)]
    written += [recording.write(*frame(seq, (48, 64))) for seq in (18, 19)]  # sent again
    written += [recording.write(*frame(seq, (96, 128))) for seq in range(20)]  # the camera attached again
    recording.close()
    assert written == [True] * 20 + [False] * 2 + [True] * 20
    with av.open(str(tmp_path / "rec.mp4")) as container:
        frames = list(container.decode(video=0))
    times = [float(f.time) for f in frames]
    assert len(frames) == 40 and {(f.height, f.width) for f in frames} == {(48, 64)}
    assert times == sorted(times) and abs(times[-1] - 39 / 25) < 1e-3
    # A folder that is not there is said at once (the tap printed a frame's line before its error).
    from anonengine.errors import OutputError

    with pytest.raises(OutputError, match="folder .*none does not exist"):
        TapRecording(str(tmp_path / "none" / "rec.mp4"))


@pytest.mark.parametrize(("said", "shown"), [
    ("cannot open video rtsp://admin:S3cret@cam:554/s: refused", "cannot open video rtsp://admin:***@cam:554/s: refused"),
    ("rtsp://admin:pa/ss@cam/x", "rtsp://admin:***@cam/x"),  # a password holding / or @
    ("rtsp://admin:p@ss@cam/x", "rtsp://admin:***@cam/x"),
    ("https://cam/live.m3u8?user=a&token=abc&x=1", "https://cam/live.m3u8?user=a&token=***&x=1"),
    # The error's own colon stays (/readyz said `...?token=*** Connection refused`); one inside a secret goes with it.
    ("open rtsp://cam/s?token=abc: Connection refused", "open rtsp://cam/s?token=***: Connection refused"),
    ("rtsp://cam/s?key=a:b:c&x=1", "rtsp://cam/s?key=***&x=1"),
    ("rtsp://viewer@cam/s", "rtsp://viewer@cam/s"),  # no password
    ("http://host/p?mail=a@b.c", "http://host/p?mail=a@b.c"),
    ("clip.mp4: frame 12:30", "clip.mp4: frame 12:30"),
])
def test_a_urls_password_is_redacted_wherever_it_stands(said, shown):
    from anonengine.paths import redacted

    assert redacted(said) == shown
