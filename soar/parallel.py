"""Executors for the inner loops of a teacher step (independent work items).

An inner-loop job is a module-level function `fn(worker, job)`: `worker` holds a baseline student,
a grader and the run's config. Every job carries its own integer seed (soar.data.seed_from), so
results never depend on the executor or the order (tests compare them):
- `InProcess` runs the jobs one after another on the run's own student;
- `ProcessExecutor` runs them on `parallel.workers` processes of this machine, one thread each,
  each with its own student (the laptop world's default: both cores busy where one process
  leaves the second idle);
- `RayExecutor` runs them on `parallel.workers` Ray actors, each holding its own copy of the
  student model (one GPU each on a cluster, `gpus_per_worker: 1`; CPU actors locally). An actor
  merges the run's promotions it has not seen into its base before a job, so it always trains
  from the same baseline as the run. Each promotion goes into Ray's object store once, and to
  each actor once (full fine-tuning: every weight of a student, GBs).
A local Ray (address null) lives in a private temp dir removed at shutdown, with a per-process
token in the environment: nothing is left in /tmp/ray or ~/.ray. Its actors never share the
driver's GPU: they get `actor_gpus` (default: every visible GPU but the driver's), and CPU actors
see no GPU at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The local Rays' auth token: one per process, since Ray reads it once (at import), so a second
# local Ray of the same process (a later run, a test) must be given the same one.
_TOKEN = secrets.token_hex(32)


@dataclass
class Worker:
    """What an inner-loop job runs on: the baseline student (a Policy), a grader, the config."""

    student: Any
    grader: Any
    cfg: Any


class InProcess:
    slots = 1  # workers that take a share of the jobs

    def map(self, fn: Callable[[Worker, Any], Any], jobs: Sequence[Any], *, local: Worker,
            promotions: Sequence[dict] = (), desc: str | None = None) -> list[Any]:
        """fn(local, job) for every job; `local.student` already carries the promotions. desc: a
        progress bar over the jobs."""
        from tqdm.auto import tqdm

        return [fn(local, job) for job in tqdm(jobs, desc=desc, disable=desc is None)]

    def close(self) -> None:
        pass


def _worker(cfg_dict: dict, cwd: str):
    """A Worker built from a config, as each process and actor holds one: its own student (the
    base model), the world's grader, the config; vLLM engines configured."""
    from soar import config, sampling, worlds
    from soar.policy import load_policy

    if os.path.isdir(cwd):  # relative paths (models/, data/) as in the driver; on a cluster,
        os.chdir(cwd)  # every node needs the project at the same path (or a shared filesystem)
    cfg = config.from_dict(cfg_dict)
    sampling.configure(cfg.generation)  # vLLM engines: generation.max_model_len
    grader = worlds.of(cfg).grader(dataclasses.replace(cfg.grading, workers=1))
    return Worker(load_policy(cfg.model, cfg.student), grader, cfg)


def _serve(conn, cfg_dict: dict, cwd: str) -> None:
    """A worker process of ProcessExecutor: one thread, its own Worker; runs (fn, job, new
    promotions) requests in the order they come until it is sent None."""
    import traceback

    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker (GPUs: the ray backend)
    import torch

    torch.set_num_threads(1)
    worker = _worker(cfg_dict, cwd)
    conn.send(("ready", None))
    while (request := conn.recv()) is not None:
        fn, job, promotions = request
        torch.set_num_threads(1)  # again: unpickling fn may import a module that set its own
        try:
            for state in promotions:
                worker.student.merge(state)
            conn.send(("ok", fn(worker, job)))
        except BaseException:  # noqa: BLE001  (the driver raises it, with this traceback)
            conn.send(("error", traceback.format_exc()))
    worker.grader.close()


class ProcessExecutor:
    """`workers` processes on this machine, one thread each, each holding its own student: the
    cores a single process leaves idle in decoding and Python work are kept busy. Started on the
    first map (they need the run's config). Every job runs on one thread whichever worker takes
    it, so the results do not depend on the number of workers or on who ran what (they may differ
    from a 2-thread InProcess run by float round-off: a matmul's sums split otherwise). Spawned:
    a script that uses it needs the `if __name__ == "__main__":` guard (notebooks do not)."""

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise ValueError(f"parallel.workers must be >= 1, got {workers}")
        self.workers = self.slots = workers
        self.procs: list = []
        self.conns: list = []
        self.sent: list[int] = []  # per worker: promotions sent to it

    def _start(self, cfg) -> None:
        import multiprocessing

        from soar import config

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of torch's threads
        cfg_dict = config.to_dict(cfg)
        for _ in range(self.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, cfg_dict, os.getcwd()), daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        for conn in self.conns:
            self._receive(conn)
        self.sent = [0] * self.workers

    def _receive(self, conn):
        try:
            status, value = conn.recv()
        except EOFError:
            self.close()
            raise RuntimeError("a parallel worker process died (out of memory?)") from None
        if status == "error":
            self.close()
            raise RuntimeError(f"a job failed in a parallel worker process:\n{value}")
        return value

    def map(self, fn: Callable[[Worker, Any], Any], jobs: Sequence[Any], *, local: Worker,
            promotions: Sequence[dict] = (), desc: str | None = None) -> list[Any]:
        """fn(worker, job) for every job, each sent to the next idle worker; results in job order.
        A worker is sent the promotions it has not merged yet with its next job. desc: a
        progress bar over the jobs."""
        from multiprocessing.connection import wait

        from tqdm.auto import tqdm

        if not self.procs:
            self._start(local.cfg)
        results: list[Any] = [None] * len(jobs)
        todo, busy = list(enumerate(jobs))[::-1], {}  # busy: connection -> job index
        with tqdm(total=len(jobs), desc=desc, disable=desc is None) as bar:
            while todo or busy:
                for w, conn in enumerate(self.conns):
                    if conn not in busy and todo:
                        i, job = todo.pop()
                        conn.send((fn, job, [p["state"] for p in promotions[self.sent[w] :]]))
                        self.sent[w], busy[conn] = len(promotions), i
                for conn in wait(list(busy)):
                    results[busy.pop(conn)] = self._receive(conn)
                    bar.update()
        return results

    def close(self) -> None:
        """Stop the worker processes (they finish the job they are on first)."""
        for conn in self.conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(None)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.procs, self.conns, self.sent = [], [], []


class _Actor:
    """A Ray actor: its own student, grader and config; merges the promotions it is sent."""

    def __init__(self, cfg_dict: dict, threads: int, cwd: str, gpus: float):
        if not gpus:  # a CPU actor: Ray leaves the node's GPUs visible, and model.device auto would take one
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch first touches CUDA
        import torch

        torch.set_num_threads(threads)
        self.worker = _worker(cfg_dict, cwd)

    def run(self, fn, job, *promotions: dict):
        """fn(worker, job) after merging `promotions`: the run's promotions since this actor's
        previous job (an actor runs its jobs in the order they were sent)."""
        for state in promotions:
            self.worker.student.merge(state)
        return fn(self.worker, job)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self.worker.grader.close()  # its math-verify processes; ray.kill would orphan them


class RayExecutor:
    """`workers` Ray actors, started on the first map (they need the run's config)."""

    def __init__(self, workers: int = 2, *, address: str | None = None, gpus_per_worker: float = 0.0,
                 actor_gpus: Sequence[int] | None = None):
        if workers < 1:
            raise ValueError(f"parallel.workers must be >= 1, got {workers}")
        self.workers, self.address, self.gpus, self.actor_gpus = workers, address, gpus_per_worker, actor_gpus
        self.slots = workers
        self.actors: list = []
        self.promotion_refs: list = []  # the run's promotions in the object store (None once every actor has one)
        self.sent: list[int] = []  # per actor: promotions sent to it
        self._temp_dir: str | None = None
        self._env: dict[str, str | None] = {}
        self.startup_s = 0.0  # Ray and the actors' start (each loads its own student), for benchmarks

    def _start(self, cfg) -> None:
        clock = time.perf_counter()
        local = self.address is None and not self._ray_running()
        gpus = self._local_gpus(cfg) if local else []
        if local:  # a private local Ray: a per-process token (read when ray is imported), files in a temp dir
            self._temp_dir = tempfile.mkdtemp(prefix="soar-ray-")
            if not any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
                self._setenv("RAY_AUTH_MODE", "token")
                self._setenv("RAY_AUTH_TOKEN", _TOKEN)
        try:
            import ray
        except ImportError as e:
            raise ImportError("parallel.backend: ray needs Ray (`pip install -e '.[ray]'`)") from e
        from soar import config

        if local:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)  # Ray's processes inherit it; the driver keeps its own
            try:
                ray.init(num_cpus=self.workers, num_gpus=len(gpus), include_dashboard=False,
                         _temp_dir=self._temp_dir, log_to_driver=False, configure_logging=False)
            except BaseException:
                self.close()
                raise
            finally:
                _putenv("CUDA_VISIBLE_DEVICES", visible)
        elif not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        threads = max(1, int(ray.available_resources().get("CPU", self.workers) // self.workers))
        remote = ray.remote(num_cpus=1, num_gpus=self.gpus)(_Actor)
        cfg_dict = config.to_dict(cfg)
        self.actors = [remote.remote(cfg_dict, threads, os.getcwd(), self.gpus) for _ in range(self.workers)]
        self.sent = [0] * self.workers
        ray.get([actor.ready.remote() for actor in self.actors])
        self.startup_s = time.perf_counter() - clock

    def _local_gpus(self, cfg) -> list[str]:
        """The GPUs a local Ray gets: none for CPU actors, else those the actors may use
        (`actor_gpus`), enough for every worker."""
        if not self.gpus:
            return []
        gpus = actor_gpus(visible_gpus(), driver_gpu(cfg.model.device), self.actor_gpus)
        if len(gpus) < self.workers * self.gpus:
            raise ValueError(f"parallel: {self.workers} workers x {self.gpus} GPUs need more than the {len(gpus)} "
                             f"GPUs the actors may use ({gpus}: parallel.actor_gpus, or every visible one but the "
                             "driver's)")
        return gpus

    @staticmethod
    def _ray_running() -> bool:
        import sys

        return "ray" in sys.modules and sys.modules["ray"].is_initialized()

    def _setenv(self, key: str, value: str) -> None:
        self._env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def map(self, fn: Callable[[Worker, Any], Any], jobs: Sequence[Any], *, local: Worker,
            promotions: Sequence[dict] = (), desc: str | None = None) -> list[Any]:
        """fn(actor's worker, job) for every job, round-robin over the actors; results in job order
        (no progress bar: desc is ignored).
        `promotions` only ever grow: the new ones are put into the object store, and each actor
        is sent those it has not been sent yet with its next job."""
        if not self.actors:
            self._start(local.cfg)  # before any `import ray`: Ray reads its token settings at import
        import ray

        refs = self.promotion_refs
        refs += [ray.put(p["state"]) for p in promotions[len(refs) :]]
        results = []
        for i, job in enumerate(jobs):
            a = i % len(self.actors)
            results.append(self.actors[a].run.remote(fn, job, *refs[self.sent[a] :]))
            self.sent[a] = len(refs)
        for j in range(min(self.sent)):  # sent to every actor: Ray frees it once their jobs have it
            refs[j] = None
        return ray.get(results)

    def close(self) -> None:
        """Stop the actors; a local Ray started here is shut down and its files removed."""
        if not self.actors and self._temp_dir is None:
            return
        import ray

        ray.get([actor.close.remote() for actor in self.actors])
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.promotion_refs, self.sent = [], [], []
        if self._temp_dir is not None:
            ray.shutdown()
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        for key, value in self._env.items():
            _putenv(key, value)
        self._env = {}


def _putenv(key: str, value: str | None) -> None:
    """Set an environment variable back to `value` (None: unset)."""
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def visible_gpus() -> list[str]:
    """This process's GPUs in CUDA index order, as CUDA_VISIBLE_DEVICES names them (how a local
    Ray is told which GPUs it has)."""
    import torch

    count = torch.cuda.device_count()
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return os.environ["CUDA_VISIBLE_DEVICES"].split(",")[:count]
    return [str(i) for i in range(count)]


def driver_gpu(device: str) -> int | None:
    """The CUDA index of the GPU the driver's teacher and student are on (model.device), or None."""
    import torch

    from soar.models import pick_device

    d = pick_device(device)
    return (d.index if d.index is not None else torch.cuda.current_device()) if d.type == "cuda" else None


def actor_gpus(visible: Sequence[str], driver: int | None, chosen: Sequence[int] | None) -> list[str]:
    """The GPUs a local Ray's actors may use: `chosen` (CUDA indexes, parallel.actor_gpus: a
    memory plan's placement), or every visible GPU but the driver's."""
    indexes = chosen if chosen is not None else [i for i in range(len(visible)) if i != driver]
    return [visible[i] for i in indexes]


def make_executor(parallel_cfg=None):
    """The executor of `parallel:` in params (ParallelConfig); None gives InProcess."""
    if parallel_cfg is None or parallel_cfg.backend == "inprocess":
        return InProcess()
    if parallel_cfg.backend == "processes":
        return ProcessExecutor(parallel_cfg.workers)
    if parallel_cfg.backend == "ray":
        return RayExecutor(parallel_cfg.workers, address=parallel_cfg.address, gpus_per_worker=parallel_cfg.gpus_per_worker,
                           actor_gpus=parallel_cfg.actor_gpus)
    raise ValueError(f"unknown executor backend {parallel_cfg.backend!r} (inprocess, processes, ray)")
