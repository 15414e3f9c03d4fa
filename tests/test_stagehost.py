"""Stages forked from the warm fork server (anonengine.engine.stagehost) run as `python -m services.X`
would: the same arguments, environment, folder and exit codes, a session and a title of their own, and
signals that reach them alone. Real stage processes; the engine's own tests (test_engine, test_stage_deaths)
start every stage this way too, the launcher killed alone included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import stage_pids

from anonengine.config import EngineConfig
from anonengine.engine import stagehost
from anonengine.engine.launcher import _project_root

pytestmark = pytest.mark.skipif(not stagehost.available(), reason="no fork server on this platform")


def stage_env(tmp_path: Path, instance: str) -> dict[str, str]:
    return {**os.environ, "ANONENGINE_ERROR_FILE": str(tmp_path / "stage.error"), "ANONENGINE_INSTANCE": instance}


def test_a_forked_stage_reads_its_arguments_folder_and_environment_and_exits_with_its_code(tmp_path):
    """A config given relative to the launcher's folder, found there; its error written to the file the
    environment names; exit code 2 (a user error, not restarted), as from `python -m services.encode`."""
    (tmp_path / "bad.yaml").write_text("engine:\n  no_such_setting: 1\n")
    spawn = stagehost.StageHost(_project_root())
    stage = spawn([sys.executable, "-m", "services.encode", "--config", "bad.yaml", "--instance", "t1"],
                  env=stage_env(tmp_path, "t1"), cwd=str(tmp_path), stdin=subprocess.DEVNULL)
    assert stage.wait(timeout=60) == 2 and stage.returncode == 2 and stage.poll() == 2
    assert "no_such_setting" in (tmp_path / "stage.error").read_text()
    stage.kill()  # a stage that ended is never signalled (its pid may be another process's by now)


def test_a_forked_stage_has_its_own_session_and_title_and_stops_on_sigterm(tmp_path):
    cfg = EngineConfig()
    cfg.engine.run_dir = str(tmp_path / "run")
    cfg.tap.endpoint = ""
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    instance = f"t{os.getpid()}"
    spawn = stagehost.StageHost(_project_root())
    stage = spawn([sys.executable, "-m", "services.encode", "--config", "engine.yaml", "--instance", instance],
                  env=stage_env(tmp_path, instance), cwd=str(tmp_path), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while stage.pid not in stage_pids(instance) and stage.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stage.poll() is None and stage.pid in stage_pids(instance)
        assert os.getsid(stage.pid) == stage.pid != os.getsid(0)  # Ctrl-C in a terminal does not reach it
        with pytest.raises(subprocess.TimeoutExpired):
            stage.wait(timeout=0.2)
        stage.send_signal(signal.SIGTERM)
        assert stage.wait(timeout=30) == 0  # an idle encoder drains nothing and leaves
    finally:
        stage.kill()
        if stage.poll() is None:
            stage.wait(timeout=10)


def test_a_killed_stage_reports_its_signal_as_popen_does(tmp_path):
    cfg = EngineConfig()
    cfg.engine.run_dir = str(tmp_path / "run")
    cfg.tap.endpoint = ""
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    spawn = stagehost.StageHost(_project_root())
    stage = spawn([sys.executable, "-m", "services.encode", "--config", "engine.yaml", "--instance", "t3"],
                  env=stage_env(tmp_path, "t3"), cwd=str(tmp_path), stdin=subprocess.DEVNULL)
    stage.kill()
    assert stage.wait(timeout=30) == -signal.SIGKILL


def test_each_stage_runs_opencv_on_its_share_of_the_cores():
    """Stages side by side: OpenCV's threads in each are the cores shared among the engine's processes."""
    from anonengine.config import CameraConfig
    from anonengine.engine.runtime import opencv_threads

    cores = len(os.sched_getaffinity(0))
    cfg = EngineConfig(cameras=[CameraConfig(name="a", source="a.mp4", output="a_out.mp4")])
    assert opencv_threads(cfg) == max(1, cores // 4)  # a capture, a detector, a compositor, an encoder
    cfg.engine.composite_workers = cfg.engine.encode_workers = 4
    cfg.cameras = [CameraConfig(name=f"c{i}", source="a.mp4", output=f"c{i}.mp4") for i in range(16)]
    assert opencv_threads(cfg) == max(1, cores // 25)
