"""Executors: a run resumed on Ray actors gives the uninterrupted in-process results for the same
seeds (real model, local Ray)."""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import base_weights, build_run, comparable, toy_cfg  # pytest puts tests/ on sys.path

from soar import config, grading, parallel

ROOT = Path(__file__).resolve().parent.parent


def test_make_executor_reads_the_parallel_section():
    cfg = config.load(ROOT / "params.yaml")
    assert isinstance(parallel.make_executor(cfg.parallel), parallel.ProcessExecutor)  # the world's default
    assert isinstance(parallel.make_executor(config.load(ROOT / "params.yaml", {"profile": "tiny"}).parallel),
                      parallel.InProcess)
    ray_cfg = config.load(ROOT / "params.yaml", {"parallel": {"backend": "ray", "workers": 3, "actor_gpus": [1, 2]}})
    ex = parallel.make_executor(ray_cfg.parallel)
    assert isinstance(ex, parallel.RayExecutor) and ex.workers == 3 and not ex.actors  # started lazily
    assert ex.actor_gpus == (1, 2)
    with pytest.raises(config.ConfigError, match="parallel.backend"):
        config.load(ROOT / "params.yaml", {"parallel": {"backend": "dask"}})
    assert config.fingerprint(cfg) == config.fingerprint(ray_cfg), "the executor never changes a run's results"


@pytest.mark.slow
def test_run_resumed_on_ray_actors_equals_the_uninterrupted_run_and_leaves_no_files(tmp_path, monkeypatch, reference_run):
    if importlib.util.find_spec("ray") is None:  # not imported here: Ray reads its token at import
        pytest.skip("ray is not installed")
    home = tmp_path / "home"
    home.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="soar-t-", dir="/tmp"))  # short: Ray's socket paths are <= 107 bytes
    monkeypatch.setenv("HOME", str(home))  # Ray's default token file is ~/.ray/auth_token
    monkeypatch.setenv("TMPDIR", str(tmp))  # its session files: /tmp/ray unless told otherwise
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    # resumed after the reference run's step 0, which promoted: the actors must replay that promotion
    shutil.copy(reference_run.step0, tmp_path / "b.pt")
    try:
        with grading.Grader(workers=1) as grader:
            ray_ex = parallel.RayExecutor(2)
            try:
                remote = build_run(toy_cfg(), tmp_path / "b.pt", grader, executor=ray_ex)
                assert remote.state.step == 1 and len(remote.state.promotions) == 1
                row, samples = remote.meta_step()
                assert len(ray_ex.actors) == 2
                cpu = ray_ex.map(lambda worker, job: os.environ["CUDA_VISIBLE_DEVICES"], [0, 1], local=None)
                assert cpu == ["", ""]  # CPU actors see no GPU (model.device auto would take the driver's)
            finally:
                ray_ex.close()
        ref_row, ref_samples = reference_run.steps[1]
        assert comparable(row) == comparable(ref_row)
        assert samples == ref_samples  # questions, answers, rewards, every student's gain
        for a, b in ((reference_run.teacher, remote.teacher.state()), (reference_run.student, base_weights(remote.student))):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert remote.promotion_questions() == reference_run.pq  # step 0's replayed, step 1's from an actor
        assert list(home.iterdir()) == [] and list(tmp.iterdir()) == [], "Ray left files behind"
        assert "RAY_AUTH_TOKEN" not in os.environ
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_actors_get_the_chosen_gpus_or_every_visible_one_but_the_drivers():
    visible = ["4", "5", "6"]  # CUDA_VISIBLE_DEVICES=4,5,6: CUDA indexes 0, 1, 2
    assert parallel.actor_gpus(visible, 0, None) == ["5", "6"]
    assert parallel.actor_gpus(visible, 1, None) == ["4", "6"]
    assert parallel.actor_gpus(visible, None, None) == visible  # a CPU driver
    assert parallel.actor_gpus(visible, 0, (2,)) == ["6"]  # a memory plan's placement (parallel.actor_gpus)


def _ray_env(monkeypatch, tmp_path) -> Path:
    """A private HOME and a short TMPDIR for Ray (its default token file is ~/.ray/auth_token, its
    session files /tmp/ray, its socket paths at most 107 bytes); returns the TMPDIR to remove."""
    home = tmp_path / "home"
    home.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="soar-t-", dir="/tmp"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    return tmp


def _promotion(student, seed):
    """A promotion: a LoRA adapter with B != 0 (a fresh one is the identity), as meta_step stores it."""
    student.reset(seed=seed)
    return {"state": {k: v + 1e-3 for k, v in student.state().items()}}


@pytest.mark.slow
def test_ray_actors_take_each_promotion_once_and_never_the_drivers_gpu(tmp_path, monkeypatch):
    """Real local Ray, 2 actors with one GPU each, on a machine whose GPUs 4,5,6 the driver sees as
    CUDA 0,1,2 (stand-ins: the actors load their students on the CPU either way) and holds CUDA 0:
    the actors get 5 and 6. Jobs alternate between them; each promotion is put into the object
    store once, and every actor's base is the driver's student with the same promotions merged."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed")
    from soar.policy import load_policy
    from soar.retrain import weights_digest

    def probe(worker, job):  # defined here, so Ray ships it by value
        with worker.student.reference() as ref:
            base = {k: v for k, v in ref.state_dict().items() if "lora_" not in k}
        return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid(), weights_digest([base])

    def driver_base():
        return weights_digest([base_weights(student)])

    tmp = _ray_env(monkeypatch, tmp_path)
    monkeypatch.setattr(parallel, "visible_gpus", lambda: ["4", "5", "6"])
    monkeypatch.setattr(parallel, "driver_gpu", lambda device: 0)
    cfg = toy_cfg()
    student = load_policy(cfg.model, cfg.student)
    promotions = [_promotion(student, 1)]
    local, visible = parallel.Worker(student, None, cfg), os.environ.get("CUDA_VISIBLE_DEVICES")
    ex = parallel.RayExecutor(2, gpus_per_worker=1)
    try:
        first = ex.map(probe, range(4), local=local, promotions=promotions)
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible  # only Ray's processes were told
        student.merge(promotions[0]["state"])
        gpus = [gpu for gpu, _, _ in first]  # which actor Ray gave which GPU is its choice, not ours
        assert sorted(gpus[:2]) == ["5", "6"] and gpus[2:] == gpus[:2]  # round-robin, off the driver's GPU
        assert len({pid for _, pid, _ in first}) == 2 and {d for *_, d in first} == {driver_base()}
        import ray

        puts = []
        monkeypatch.setattr(ray, "put", lambda value, put=ray.put: puts.append(1) or put(value))
        assert ex.map(probe, range(2), local=local, promotions=promotions) == first[:2] and puts == []
        promotions.append(_promotion(student, 2))
        student.merge(promotions[1]["state"])
        assert {d for *_, d in ex.map(probe, range(2), local=local, promotions=promotions)} == {driver_base()}
        assert puts == [1]  # the new promotion only
    finally:
        ex.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _threads_and_pid(worker, job):  # module level: sent to worker processes by reference
    return torch.get_num_threads(), os.getpid(), job


def test_process_workers_run_each_job_on_one_thread_and_report_failures():
    cfg = config.load(ROOT / "params.yaml", {"profile": "smoke", "parallel": {"backend": "processes", "workers": 2}})
    ex = parallel.make_executor(cfg.parallel)
    assert isinstance(ex, parallel.ProcessExecutor) and ex.slots == 2 and not ex.procs  # started lazily
    try:
        out = ex.map(_threads_and_pid, ["a", "b", "c"], local=parallel.Worker(None, None, cfg))
        assert [job for _, _, job in out] == ["a", "b", "c"]  # job order
        assert {threads for threads, _, _ in out} == {1}
        assert len({pid for _, pid, _ in out}) == 2 and os.getpid() not in {pid for _, pid, _ in out}
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            ex.map(_fails, [0], local=parallel.Worker(None, None, cfg))
    finally:
        ex.close()
    assert not ex.procs


def _fails(worker, job):
    return 1 / job


@pytest.mark.slow
def test_inner_loops_give_the_same_students_on_one_or_two_worker_processes(reference_run):
    """A teacher step's students (gains and trained weights) do not depend on how many processes
    train them: every job runs on one thread, seeded by itself; promotions are replayed."""
    from soar.data import load_benchmark
    from soar.teacher import InnerJob, inner_loops

    cfg = toy_cfg()
    problems = load_benchmark("gsm8k_test", limit=4, seed=0)[:2]
    jobs = [InnerJob(problems, problems, 0.0, 0, seed, student) for seed, student in ((3, 0), (4, 1))]  # one per worker
    promotions = torch.load(reference_run.step0, weights_only=False).promotions  # replayed by every worker
    results = {}
    for workers in (1, 2):
        ex = parallel.ProcessExecutor(workers)
        try:
            size = -(-len(jobs) // ex.slots)
            shares = ex.map(inner_loops, [jobs[i : i + size] for i in range(0, len(jobs), size)],
                            local=parallel.Worker(None, None, cfg), promotions=promotions)
        finally:
            ex.close()
        results[workers] = [r for share in shares for r in share]
    for a, b in zip(results[1], results[2], strict=True):
        assert a["gain"] == b["gain"]
        assert a["state"].keys() == b["state"].keys() and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
