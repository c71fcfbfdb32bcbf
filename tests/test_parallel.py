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
    assert isinstance(parallel.make_executor(cfg.parallel), parallel.InProcess)
    ray_cfg = config.load(ROOT / "params.yaml", {"parallel": {"backend": "ray", "workers": 3}})
    ex = parallel.make_executor(ray_cfg.parallel)
    assert isinstance(ex, parallel.RayExecutor) and ex.workers == 3 and not ex.actors  # started lazily
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
