"""Executors for the inner loops of a teacher step (independent work items).

An inner-loop job is a module-level function `fn(worker, job)`: `worker` holds a baseline student,
a grader and the run's config. Every job carries its own integer seed (soar.data.seed_from), so
results never depend on the executor or the order (tests compare them):
- `InProcess` runs the jobs one after another on the run's own student (the default);
- `RayExecutor` runs them on `parallel.workers` Ray actors, each holding its own copy of the
  student model (one GPU each on a cluster, `gpus_per_worker: 1`; CPU actors locally). An actor
  replays the run's promotions onto its base before a job, so it always trains from the same
  baseline as the run.
A local Ray (address null) lives in a private temp dir removed at shutdown, with a per-process
token in the environment: nothing is left in /tmp/ray or ~/.ray.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Worker:
    """What an inner-loop job runs on: the baseline student (a Policy), a grader, the config."""

    student: Any
    grader: Any
    cfg: Any


class InProcess:
    slots = 1  # workers that take a share of the jobs

    def map(self, fn: Callable[[Worker, Any], Any], jobs: Sequence[Any], *, local: Worker,
            promotions: Sequence[dict] = ()) -> list[Any]:
        """fn(local, job) for every job; `local.student` already carries the promotions."""
        return [fn(local, job) for job in jobs]

    def close(self) -> None:
        pass


class _Actor:
    """A Ray actor: its own student, grader and config; replays promotions it has not seen."""

    def __init__(self, cfg_dict: dict, threads: int, cwd: str):
        import torch

        from soar import config, grading
        from soar.policy import load_policy

        if os.path.isdir(cwd):  # relative paths (models/, data/) as in the driver; on a cluster,
            os.chdir(cwd)  # every node needs the project at the same path (or a shared filesystem)
        torch.set_num_threads(threads)
        cfg = config.from_dict(cfg_dict)
        grader = grading.Grader(timeout=cfg.grading.timeout_s, workers=1)
        self.worker, self.merged = Worker(load_policy(cfg.model, cfg.student), grader, cfg), 0

    def run(self, fn, job, promotions: list[dict]):
        for state in promotions[self.merged :]:  # promotions only ever append
            self.worker.student.merge(state)
            self.merged += 1
        return fn(self.worker, job)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self.worker.grader.close()  # its math-verify processes; ray.kill would orphan them


class RayExecutor:
    """`workers` Ray actors, started on the first map (they need the run's config)."""

    def __init__(self, workers: int = 2, *, address: str | None = None, gpus_per_worker: float = 0.0):
        if workers < 1:
            raise ValueError(f"parallel.workers must be >= 1, got {workers}")
        self.workers, self.address, self.gpus = workers, address, gpus_per_worker
        self.slots = workers
        self.actors: list = []
        self._temp_dir: str | None = None
        self._env: dict[str, str | None] = {}
        self.startup_s = 0.0  # Ray and the actors' start (each loads its own student), for benchmarks

    def _start(self, cfg) -> None:
        clock = time.perf_counter()
        local = self.address is None and not self._ray_running()
        if local:  # a private local Ray: a per-process token (read when ray is imported), files in a temp dir
            self._temp_dir = tempfile.mkdtemp(prefix="soar-ray-")
            if not any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
                self._setenv("RAY_AUTH_MODE", "token")
                self._setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        try:
            import ray
        except ImportError as e:
            raise ImportError("parallel.backend: ray needs Ray (`pip install -e '.[ray]'`)") from e
        from soar import config

        if local:
            try:
                ray.init(num_cpus=self.workers, include_dashboard=False, _temp_dir=self._temp_dir,
                         log_to_driver=False, configure_logging=False)
            except BaseException:
                self.close()
                raise
        elif not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        threads = max(1, int(ray.available_resources().get("CPU", self.workers) // self.workers))
        remote = ray.remote(num_cpus=1, num_gpus=self.gpus)(_Actor)
        cfg_dict = config.to_dict(cfg)
        self.actors = [remote.remote(cfg_dict, threads, os.getcwd()) for _ in range(self.workers)]
        ray.get([actor.ready.remote() for actor in self.actors])
        self.startup_s = time.perf_counter() - clock

    @staticmethod
    def _ray_running() -> bool:
        import sys

        return "ray" in sys.modules and sys.modules["ray"].is_initialized()

    def _setenv(self, key: str, value: str) -> None:
        self._env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def map(self, fn: Callable[[Worker, Any], Any], jobs: Sequence[Any], *, local: Worker,
            promotions: Sequence[dict] = ()) -> list[Any]:
        """fn(actor's worker, job) for every job, round-robin over the actors; results in job order."""
        if not self.actors:
            self._start(local.cfg)  # before any `import ray`: Ray reads its token settings at import
        import ray

        states = ray.put([p["state"] for p in promotions])  # shipped once per map, not per job
        refs = [self.actors[i % len(self.actors)].run.remote(fn, job, states) for i, job in enumerate(jobs)]
        return ray.get(refs)

    def close(self) -> None:
        """Stop the actors; a local Ray started here is shut down and its files removed."""
        if not self.actors and self._temp_dir is None:
            return
        import ray

        ray.get([actor.close.remote() for actor in self.actors])
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._temp_dir is not None:
            ray.shutdown()
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._env = {}


def make_executor(parallel_cfg=None):
    """The executor of `parallel:` in params (ParallelConfig); None gives InProcess."""
    if parallel_cfg is None or parallel_cfg.backend == "inprocess":
        return InProcess()
    if parallel_cfg.backend == "ray":
        return RayExecutor(parallel_cfg.workers, address=parallel_cfg.address, gpus_per_worker=parallel_cfg.gpus_per_worker)
    raise ValueError(f"unknown executor backend {parallel_cfg.backend!r} (inprocess, ray)")
