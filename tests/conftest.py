"""Shared fixtures. Nothing here changes the test process's environment or the current folder; its stop
signals only as said below."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# The tests stop runs as a terminal's Ctrl-C, a service manager or a hangup would, and a run keeps a stop signal
# it was started with ignored (a shell's background job is started so: `.ci/run &`). Caught here rather than
# ignored, the suite stays as it was started, and every process it starts gets them as from a terminal.
for _sig in (signal.SIGINT, signal.SIGHUP):
    if signal.getsignal(_sig) is signal.SIG_IGN:
        signal.signal(_sig, lambda *_: None)

POSE_MODEL = "yolo11n-pose.pt"
CLI_TIMEOUT_S = 90  # a run on a short clip takes seconds; past this the CLI is taken to hang


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A folder holding the pose model, pulled offline (bundled copy) so a clean checkout works.

    Point `ANONENGINE_MODELS` at it per subprocess (see `anonengine_cli`) or pass the file path;
    the fixture itself sets no environment variable.
    """
    from anonengine import models

    folder = tmp_path_factory.mktemp("models")
    models.pull(POSE_MODEL, folder)
    return folder


@pytest.fixture(scope="session")
def small_sample_clip(tmp_path_factory):
    """A short, small sample clip (320x192, 8 frames) with persons in it; treat its files as read-only."""
    from anonengine.sample import make_sample

    return make_sample(tmp_path_factory.mktemp("sample"), width=320, height=192, frames=8)


@pytest.fixture
def anonengine_cli(models_dir):
    """Runs `python -m anonengine.cli ARGS...` in a subprocess with the test models; returns CompletedProcess.

    The child gets `ANONENGINE_MODELS=models_dir` and no `ANONENGINE_DEBUG` (which would turn one-line
    errors into tracebacks). A run that outlives `timeout` raises `subprocess.TimeoutExpired`.
    """

    def run(*args: str, cwd: Path | None = None, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "ANONENGINE_DEBUG"}
        env["ANONENGINE_MODELS"] = str(models_dir)
        return subprocess.run(
            [sys.executable, "-m", "anonengine.cli", *map(str, args)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
