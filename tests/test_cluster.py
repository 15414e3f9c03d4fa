"""Batches on a Ray cluster (`anonengine run --ray`): a local cluster of two worker nodes (Ray's own
`cluster_utils.Cluster`, every node a set of processes on this machine), and workers that die mid-file.

Each file is a task; the driver alone writes the manifest. A worker killed with -9, or a whole node
removed, in the middle of a file: its task runs again elsewhere from the file's start, and the job ends
with every file done once, recorded once, and no half file left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is the extra anonengine[cluster]")
from ray.cluster_utils import Cluster

from anonengine.audio import CarryPolicy
from anonengine.batch import find_jobs
from anonengine.cluster import run_on_ray
from anonengine.config import EngineConfig
from anonengine.manifest import MANIFEST_NAME
from anonengine.sample import make_sample
from anonengine.video import VideoReader

pytestmark = pytest.mark.slow  # a Ray cluster and three batches on it: 80 s here

FILES, FRAMES = 4, 60  # long enough (seconds each, several at a time) to be caught in the middle


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray_inputs")
    for i in range(FILES):
        clip = make_sample(folder / f"clip{i}", width=160, height=96, frames=FRAMES, seed=i)
        target = folder / "in" / ("night" if i % 2 else "day") / f"cam{i}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip.video, target)
    return folder / "in"


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no task and two worker nodes of two CPUs and one GPU each (GPUs Ray is told of: this
    machine has none). One cluster for the module (starting one takes 12 to 16 s here): the test that
    removes a node comes last."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, nodes
    cluster.shutdown()


def config(models_dir: Path) -> EngineConfig:
    cfg = EngineConfig()
    cfg.anonymizer.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.anonymizer.detector.device = "cpu"
    cfg.anonymizer.detector.imgsz = 320
    return cfg


def anonymizing_workers() -> list[int]:
    """Ray worker processes running a file now (Ray titles them after the task's function)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::anonymize_job"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def in_the_middle(output_dir: Path) -> bool:
    """A file is being written (its staged video exists), so a death now loses work in flight."""
    return any(".video." in p.name for p in output_dir.rglob(".*"))


def check_done_once(inputs: Path, output_dir: Path) -> None:
    lines = [json.loads(line) for line in (output_dir / MANIFEST_NAME).read_text().splitlines()]
    records = [r for r in lines if "input" in r]
    assert sorted(r["input"] for r in records) == sorted(p.relative_to(inputs).as_posix() for p in inputs.rglob("*.mp4"))
    assert all(r["frames"] == FRAMES for r in records)
    for source in inputs.rglob("*.mp4"):
        output = output_dir / source.relative_to(inputs)
        assert [f.seq for f in VideoReader(str(output))] == list(range(FRAMES)), output
    leftovers = [p for p in output_dir.rglob("*") if p.is_file() and (p.name.startswith(".") or ".partial" in p.name)]
    assert leftovers == [], leftovers


def batch_with_a_death(head: Cluster, models_dir: Path, inputs: Path, output_dir: Path, kill):
    """Runs the batch on the cluster while `kill` is called once a file is in the middle of being written
    (until it names a victim); returns the summary and the victims."""
    done, victims = threading.Event(), []

    def watch():
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            if in_the_middle(output_dir) and (victim := kill()):
                victims.append(victim)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = run_on_ray(config(models_dir), find_jobs(str(inputs), output_dir), output_dir, CarryPolicy(),
                             head.address, progress=False)
    finally:
        done.set()
        watcher.join()
    return summary, victims


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_a_cluster_address_nobody_answers_at_is_one_line_at_once(address, inputs, anonengine_cli, tmp_path):
    """A wrong port: Ray's client tried it for minutes without end, naming another address (a user's trial,
    killed after 180 s). Nothing is written."""
    from helpers import free_port

    address = address.format(port=free_port())
    result = anonengine_cli("run", "--ray", address, "--video-source", inputs, "--output-dir", tmp_path / "out",
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"anonengine: error: cannot reach the Ray cluster at {address}: Connection refused"
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_on_a_cluster_with_gpus_every_task_reserves_one(inputs, models_dir, tmp_path, cluster):
    """Two nodes of two CPUs and one GPU each (this machine has none, so the detector, on `auto`, runs on the
    CPU). A task takes a GPU, so a node runs one file at a time, not two."""
    head, _ = cluster
    cfg = config(models_dir)
    cfg.anonymizer.detector.device = "auto"
    output_dir = tmp_path / "out"
    done, most_at_once = threading.Event(), [0]

    def count_running():  # files in flight: those whose video is being written
        while not done.is_set():
            staged = [p for p in output_dir.rglob(".*.video.partial.*")] if output_dir.exists() else []
            most_at_once[0] = max(most_at_once[0], len(staged))
            time.sleep(0.05)

    counter = threading.Thread(target=count_running, daemon=True)
    counter.start()
    try:
        summary = run_on_ray(cfg, find_jobs(str(inputs), output_dir), output_dir, CarryPolicy(), head.address,
                             progress=False)
    finally:
        done.set()
        counter.join()
    assert (summary.done, summary.failed) == (FILES, [])
    assert len(summary.nodes) == 2 and len(summary.gpus) == 2, (summary.nodes, summary.gpus)
    assert most_at_once[0] == 2, f"{most_at_once[0]} files at once on two GPUs"
    assert "on 2 node(s), 2 GPU(s)" in summary.line(output_dir)
    check_done_once(inputs, output_dir)


def test_a_worker_killed_mid_file_has_its_file_redone_and_every_file_recorded_once(
        inputs, models_dir, tmp_path, cluster):
    head, _ = cluster
    output_dir = tmp_path / "out"

    def kill_one_worker():
        workers = anonymizing_workers()
        if workers:
            os.kill(workers[0], signal.SIGKILL)
            return workers[0]
        return None

    summary, killed = batch_with_a_death(head, models_dir, inputs, output_dir, kill_one_worker)
    assert killed, "no worker was caught in the middle of a file"
    assert (summary.done, summary.failed, summary.frames) == (FILES, [], FILES * FRAMES)
    check_done_once(inputs, output_dir)

    # A rerun finds everything done: nothing is sent to the cluster.
    again = run_on_ray(config(models_dir), find_jobs(str(inputs), output_dir), output_dir, CarryPolicy(), head.address,
                       progress=False)
    assert (again.done, again.skipped) == (0, FILES)


def test_a_node_lost_mid_job_has_its_files_done_on_the_other(inputs, models_dir, tmp_path, cluster):
    head, nodes = cluster
    output_dir = tmp_path / "out"

    def remove_a_node():
        head.remove_node(nodes[0], allow_graceful=False)
        return nodes[0]

    summary, removed = batch_with_a_death(head, models_dir, inputs, output_dir, remove_a_node)
    assert removed, "the node was not removed in the middle of a file"
    assert (summary.done, summary.failed) == (FILES, [])
    check_done_once(inputs, output_dir)


def test_a_cluster_gone_mid_batch_stops_it_and_says_so(inputs, models_dir, tmp_path):
    """The cluster stopped under the batch (`ray stop` on its machines): every file left failed, each said as "its
    workers died 4 times: LocalRayletDiedError", and counted as a failed file (a studio's trial). The batch stops
    and says that the cluster went away; what was done is recorded, and nothing is counted as failed."""
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    node = head.add_node(num_cpus=1)
    head.wait_for_nodes()
    address, output_dir = head.address, tmp_path / "out"

    def stop_the_cluster():  # as `ray stop --force` does, on this cluster alone
        for each in (node, head.head_node):
            each.kill_all_processes(check_alive=False, allow_graceful=False)
        return head

    try:
        summary, stopped = batch_with_a_death(head, models_dir, inputs, output_dir, stop_the_cluster)
    finally:
        with contextlib.suppress(Exception):
            head.shutdown()
    assert stopped, "the cluster was not stopped in the middle of a file"
    assert summary.failed == [] and summary.done < FILES
    assert summary.stopped.startswith(f"stopped: the Ray cluster at {address} went away"), summary.stopped
    assert f"{FILES - summary.done} file(s) not done" in summary.stopped
