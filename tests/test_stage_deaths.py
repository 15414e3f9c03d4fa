"""Every stage may die: `kill -9` of one stage in the middle of `anonengine run` on a file, and the run
still ends well (exit 0), with every frame exactly once, in order, and nobody shown.

A restarted capture resumes after the last frame written; a restarted detector or compositor gets the
frames in flight again as soon as it is ready; a restarted compositor starts its background afresh
(what it has not seen is filled, nobody is pasted back), so only its frames may differ from an
undisturbed run. An encoder's death still loses what it had written (its output is one file):
recording in segments is the open part of this work, and its test says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import LEAK_SHARE, shown_share, stage_pids

from anonengine.sample import make_sample
from anonengine.shm import instance_segments
from anonengine.video import VideoReader

FRAMES = 150
WIDTH, HEIGHT = 320, 192


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("deaths_clip"), width=WIDTH, height=HEIGHT, frames=FRAMES)


def run(models_dir: Path, clip, folder: Path, kill_stage: str | None = None) -> subprocess.CompletedProcess:
    """`anonengine run` on the clip; with `kill_stage`, that stage is killed with -9 once 40 frames are out."""
    folder.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "ANONENGINE_DEBUG"}
    env["ANONENGINE_MODELS"] = str(models_dir)
    proc = subprocess.Popen([sys.executable, "-m", "anonengine.cli", "run", "--quiet", "--video-source",
                             str(clip.video), "--output-video", str(folder / "out.mp4"), "--metadata",
                             str(folder / "out.jsonl")], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if kill_stage:
            partial = folder / "out.jsonl.partial"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if partial.exists() and len(partial.read_text().splitlines()) >= 40:
                    break
                time.sleep(0.05)
            victims = [pid for pid in stage_pids(f"p{proc.pid}") if _title(pid).startswith(f"anonengine-{kill_stage}[")]
            assert victims, f"no {kill_stage} stage found"
            os.kill(victims[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not instance_segments(f"p{proc.pid}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def undisturbed(clip, models_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("undisturbed")
    result = run(models_dir, clip, folder)
    assert result.returncode == 0, result.stderr
    return [f.image for f in VideoReader(str(folder / "out.mp4"))]


@pytest.mark.parametrize("stage", ["capture", "detect", "composite"])
def test_a_stage_killed_mid_file_is_restarted_and_every_frame_comes_out_once(
        stage, clip, models_dir, undisturbed, tmp_path):
    result = run(models_dir, clip, tmp_path, kill_stage=stage)
    assert result.returncode == 0, result.stderr
    frames = list(VideoReader(str(tmp_path / "out.mp4")))
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [f.seq for f in frames] == list(range(FRAMES)) == [r["index"] for r in records]
    background = clip.true_background()
    for frame, persons, source in zip(frames, clip.boxes(), VideoReader(str(clip.video))):
        for person in persons:
            assert shown_share(source.image, frame.image, background, person["box"]) <= LEAK_SHARE, (
                f"frame {frame.seq} shows {person['actor']}")
    if stage != "composite":  # a compositor's background starts again from nothing: its pixels differ
        worst = max(np.abs(a.astype(int) - b).max() for a, b in zip(undisturbed, (f.image for f in frames)))
        assert worst <= 2, f"frames differ from the undisturbed run by up to {worst} levels"


def test_an_encoder_killed_mid_file_is_an_honest_failure_today(clip, models_dir, tmp_path):
    """What an encoder's death costs until recording in segments exists: the frames it wrote. The run
    must say so (exit 1, one line), keep the rest as a partial output, and never pass it off as whole."""
    result = run(models_dir, clip, tmp_path, kill_stage="encode")
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "its encoder died and frames 0 to" in line and "out.partial.mp4" in line, result.stderr
    assert not (tmp_path / "out.mp4").exists()
    kept = len(list(VideoReader(str(tmp_path / "out.partial.mp4"))))
    assert 0 < kept < FRAMES


@pytest.mark.xfail(strict=True, reason="an encoder's death loses what it wrote: recording in segments is not built")
def test_an_encoder_killed_mid_file_loses_nothing(clip, models_dir, tmp_path):
    result = run(models_dir, clip, tmp_path, kill_stage="encode")
    assert result.returncode == 0, result.stderr
    assert [f.seq for f in VideoReader(str(tmp_path / "out.mp4"))] == list(range(FRAMES))
