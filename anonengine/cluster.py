"""Batches on a Ray cluster: each file a task, outputs on storage every node sees, one manifest.

    anonengine run --ray [ADDRESS] --video-source DIR --output-dir OUT    (pip install 'anonengine[cluster]')

The driver finds the jobs and skips what the manifest says is done, as a local batch does; every job
left is a Ray task that anonymizes one file with the local batch's own code (`batch.FileRunner`),
writing under a partial name in the shared output folder and renaming when complete. Only the driver
writes the manifest, one record as each task returns, so a file is recorded once.

A task whose worker process or node dies is run again (Ray's `max_retries`) from the start of its
file, whose leftovers it removes first: nothing is lost, nothing recorded twice. A file that fails on
its own (unreadable input: an `AnonError`) comes back as a failure and is not retried.

Each worker process keeps its detector loaded for the files it gets next (a worker is reused for tasks
of the same function); on a cluster with GPUs every task reserves one (`num_gpus=1`) and runs its own
detector on it. ADDRESS is a running cluster's (`ray start --head` prints it; `auto`: the one this node
belongs to); without it, Ray starts a cluster of this machine alone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from anonengine.audio import CarryPolicy
from anonengine.batch import Done, FileRunner, Job, Summary, not_recorded, output_settings, pending_jobs, record_of
from anonengine.config import EngineConfig
from anonengine.errors import AnonError, ConfigError
from anonengine.interrupts import INTERRUPTS, Interrupted
from anonengine.manifest import Manifest, ManifestUnwritable

TASK_RETRIES = 3  # a file's task is run again this often when its worker or node dies
WAIT_S = 0.5  # how often the driver looks for finished tasks (and a stop signal)
CONNECT_S = 10  # a cluster's address answers within this, or the batch is refused
# While no file finishes, the cluster's address is tried this often: one that takes no connection went away (Ray's
# driver gives up 60 s after its cluster's control store went, and ends the process, before any summary).
GONE_CHECK_S = 2.0


@dataclass(frozen=True)
class Outcome:
    """What a task hands back: the file done (`batch.Done`), or why it failed."""

    rel: str
    done: Done | None = None
    seconds: float = 0.0
    node: str = ""
    gpus: tuple[str, ...] = ()  # the GPUs Ray reserved for the task (its detector's CUDA devices)
    error: str | None = None


_runner: tuple[str, FileRunner] | None = None  # this worker process's runner, by the settings it serves


def anonymize_job(cfg_json: str, settings_key: str, policy: CarryPolicy, job: Job) -> Outcome:
    """One file, in a Ray worker: the local batch's runner, kept for the next file of the same job."""
    import ray

    global _runner
    if _runner is None or _runner[0] != settings_key:
        if _runner is not None:
            _runner[1].close()
        _runner = (settings_key, FileRunner(EngineConfig.model_validate(json.loads(cfg_json)), policy))
    context = ray.get_runtime_context()
    node = context.get_node_id()
    gpus = tuple(str(gpu) for gpu in context.get_accelerator_ids().get("GPU", []))
    started = time.monotonic()
    try:
        done = _runner[1].run(job)
    except AnonError as exc:
        return Outcome(job.rel, error=str(exc).splitlines()[0], node=node, gpus=gpus)
    return Outcome(job.rel, done, round(time.monotonic() - started, 3), node, gpus)


def reachable(address: str | None) -> None:
    """ConfigError, in one line, where the cluster's `address` (HOST:PORT, or ray://HOST:PORT) takes no connection
    within CONNECT_S. Ray's own client tried a port nobody listened on, or a host name that does not resolve, for
    minutes without end, naming another address (a user's trial: killed after 180 s)."""
    problem = unanswered(address, CONNECT_S)
    if problem is not None:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {problem}")


def unanswered(address: str | None, timeout: float) -> str | None:
    """Why the cluster's `address` takes no connection within `timeout`; None where it does, or where it names no
    HOST:PORT (a cluster this process starts, or one Ray finds itself)."""
    if address in (None, "", "auto", "local"):
        return None
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return None  # Ray says what it makes of it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or str(exc) or "no answer"
    return None


def run_on_ray(cfg: EngineConfig, jobs: list[Job], output_dir: Path, policy: CarryPolicy, address: str | None,
               progress: bool = True) -> Summary:
    """Runs the batch's pending jobs as Ray tasks; returns the same summary as a local batch."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'anonengine[cluster]'") from None
    started = time.monotonic()
    summary = Summary()
    # Keyed as a local batch keys them, models by the names given: keyed after the paths below, a local batch and
    # one on Ray each redid the other's files (a user's trial).
    settings = output_settings(cfg, policy)
    # Workers run in folders of their own, maybe on other machines: every path they get is absolute.
    cfg = with_absolute_models(cfg)
    output_dir = output_dir.resolve()
    jobs = [replace(job, source=job.source.resolve(), output=job.output.resolve()) for job in jobs]
    manifest = Manifest(output_dir)
    todo, summary.skipped = pending_jobs(jobs, manifest, settings)
    if not todo:
        summary.seconds = time.monotonic() - started
        return summary
    reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"ANONENGINE_LOG_LEVEL": os.environ.get("ANONENGINE_LOG_LEVEL", "ERROR")}})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address or 'this machine'}: "
                          f"{str(exc).splitlines()[0]}") from None
    from tqdm import tqdm

    bar = tqdm(total=sum(frames for _, frames in todo) or None, desc=f"batch of {len(todo)} on Ray", unit="frame",
               dynamic_ncols=True, disable=not (progress and sys.stderr.isatty()))
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.anonymizer.detector.device != "cpu" else 0
        task = ray.remote(anonymize_job).options(max_retries=TASK_RETRIES, retry_exceptions=False, num_gpus=gpus,
                                                 num_cpus=1)
        cfg_json = json.dumps(cfg.model_dump(mode="json"))
        pending = {task.remote(cfg_json, settings["key"], policy, job): job for job, _ in todo}
        checked = time.monotonic()
        while pending:
            if INTERRUPTS.requested:
                raise Interrupted(INTERRUPTS.signum)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
            if not ready and time.monotonic() - checked >= GONE_CHECK_S:
                checked = time.monotonic()
                if (problem := unanswered(address, GONE_CHECK_S)) is not None:
                    raise ClusterGone(f"its address: {problem}")
            for ref in ready:
                _record(ray, ref, pending[ref], manifest, settings, summary, bar)
                del pending[ref]  # after: a file whose record failed is one not done
    except ManifestUnwritable as exc:
        summary.stopped = not_recorded(exc, len(pending))
        for ref in pending:
            ray.cancel(ref, force=True)
    except ClusterGone as exc:
        summary.stopped = (f"stopped: the Ray cluster at {address or 'this machine'} went away ({exc}); "
                           f"{len(pending)} file(s) not done. Run the same command again once it is back "
                           "(what is recorded is kept)")
    except Interrupted as stop:
        summary.interrupted_by = stop.signum
        for ref in pending:  # the files in flight are redone by the next run
            ray.cancel(ref, force=True)
    finally:
        bar.close()
        ray.shutdown()
        summary.seconds = time.monotonic() - started
    return summary


def with_absolute_models(cfg: EngineConfig) -> EngineConfig:
    """The config with each model named by its absolute path (as resolved here), for workers elsewhere."""
    from anonengine import models

    detector = cfg.anonymizer.detector.model_copy()
    fields = ("pose_model", "bbox_model", *(("seg_model",) if cfg.anonymizer.method == "seg" else ()))
    for field in fields:
        spec = getattr(detector, field)
        if spec and not models.is_architecture(spec):
            setattr(detector, field, str(Path(models.resolve(spec)).resolve()))
    return cfg.model_copy(update={"anonymizer": cfg.anonymizer.model_copy(update={"detector": detector})})


class ClusterGone(Exception):
    """The cluster stopped under the batch (`ray stop`, its head's machine down): every file still to come would
    fail alike, and none is at fault."""


def _record(ray, ref, job: Job, manifest: Manifest, settings: dict, summary: Summary, bar) -> None:
    try:
        outcome: Outcome = ray.get(ref)
    except ray.exceptions.LocalRayletDiedError as exc:
        # Said of every file left, each as "its workers died 4 times", and counted as failed files (a studio's
        # trial): the batch stops, and says why.
        raise ClusterGone(type(exc).__name__) from None
    except ray.exceptions.RayTaskError as exc:  # the task raised what is not the input's fault: not retried
        outcome = Outcome(job.rel, error=f"internal error: {type(exc.cause).__name__}: {exc.cause}".splitlines()[0])
    except ray.exceptions.RayError as exc:  # its retries spent: every worker that took it died
        outcome = Outcome(job.rel, error=f"its workers died {TASK_RETRIES + 1} times: {type(exc).__name__}")
    done = outcome.done
    if done is None:
        summary.failed.append((job.rel, outcome.error))
        bar.write(f"anonengine: failed: {job.rel}: {outcome.error}", file=sys.stderr)
        return
    with INTERRUPTS.deferred():
        manifest.add(record_of(job, manifest.folder, done, settings["key"], outcome.seconds), settings["settings"])
    summary.add(done)
    summary.nodes.add(outcome.node)
    summary.gpus.update(f"{outcome.node}:{gpu}" for gpu in outcome.gpus)
    bar.update(done.frames)
