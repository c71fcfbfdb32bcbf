"""The real pipeline: `dvc repro` of every stage with the smoke profile, in a scratch copy."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soar import models

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
RUN = "results/soar/grounded/seed0"
CKPT = "checkpoints/soar/grounded/seed0/state.pt"


def _run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=2400)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def _link_converted_models(work):
    """models/ of a scratch project: a real folder (the pretrain stage writes models/addition there,
    and DVC refuses outputs behind a symlink), holding links to the models `make setup` converted."""
    (work / "models").mkdir()
    for name in models.EMBEDDED:
        (work / "models" / name).symlink_to(ROOT / "models" / name)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project with profile: smoke, reproduced once."""
    work = tmp_path_factory.mktemp("repro")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, work / name)
    for name in ("profiles", "notebooks", "data/raw", "soar"):
        shutil.copytree(ROOT / name, work / name)
    (work / "results/notebooks").mkdir(parents=True)
    _link_converted_models(work)
    params = (work / "params.yaml").read_text().replace("profile: addition", "profile: smoke")
    assert "profile: smoke\n" in params
    params = params.replace("variants: [grounded, intrinsic, shuffled]", "variants: [grounded]")
    params = params.replace("seeds: [0, 1, 2]\nvariants:", "seeds: [0]\nvariants:")
    assert "seeds: [0]\nvariants:" in params
    assert "variants: [grounded]\n" in params  # one run keeps CI short; the variants: test_teacher
    params = params.replace("taus: [0.01, 0.02]", "taus: [0.01]").replace("ns: [8, 16]", "ns: [1]")
    assert "taus: [0.01]\n" in params and "ns: [1]\n" in params  # one sweep cell, at smoke sizes:
    (work / "params.yaml").write_text(params)
    _run(["git", "init", "-q"], work)
    _run(["dvc", "init", "-q"], work)
    _run(["dvc", "repro"], work)
    return work


def test_every_stage_writes_its_outputs(project):
    for rel in ("data/processed/pools/gsm8k_test.jsonl", "data/processed/hard/gsm8k_test_train.jsonl",
                "results/fail_at_k/metrics.json", "results/figures/fail_at_k_histogram.png",
                "results/notebooks/01_fail_at_k.ipynb", f"{RUN}/metrics.jsonl", f"{RUN}/metrics.json",
                f"{RUN}/pq.jsonl", f"{RUN}/samples/step_000000.jsonl", f"{RUN}/samples/step_000001.jsonl",
                "results/notebooks/02_train_soar-grounded-seed0.ipynb", CKPT, f"{RUN}/questions.jsonl",
                "results/retrain/metrics.json", "results/retrain/questions/base_t.jsonl",
                "results/notebooks/03_train_students.ipynb", "results/figures/retrain_rewards.png",
                "results/eval/metrics.json", "results/tables/main.md", "results/tables/paper_vs_ours.md",
                "results/notebooks/04_evaluate.ipynb", "results/figures/pass_at_k.png",
                "results/analysis/metrics.json", "results/analysis/verdicts.jsonl", "results/tables/questions.md",
                "results/notebooks/05_analyze_questions.ipynb", "results/figures/question_verdicts.png",
                "results/figures/vendi.png", "results/figures/curriculum_drift.png", "results/figures/step_diversity.png",
                "results/notebooks/06_figures.ipynb", "results/figures/teacher_reward.pdf", "results/figures/question_kinds.png",
                "results/figures/baseline_promotions.png", "results/figures/main_table_bars.png",
                "results/figures/oracle_share.png", "results/sweep/tau0.01-n1/metrics.json",
                "results/notebooks/02_train_soar-sweep-tau0.01-n1.ipynb", "results/figures/sensitivity.png"):
        assert (project / rel).exists(), rel


def test_each_soar_run_records_the_config_it_read(project):
    """What a sweep set is what the run read: the resolved config (profile, variant, papermill
    overrides) beside the run's results; the sweep cell's tau is its own."""
    from soar import config

    cfg = json.loads((project / RUN / "config.json").read_text())
    assert cfg == config.to_dict(config.load(project / "params.yaml", {"seed": 0}, variant="grounded"))
    assert cfg["profile"] == "smoke"
    assert json.loads((project / "results/sweep/tau0.01-n1/config.json").read_text())["soar"]["tau"] == 0.01


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_retrain_schedules_are_visible_in_the_logged_question_ids(project):
    hard = {r["id"] for r in _jsonl(project / "data/processed/hard/gsm8k_test_train.jsonl")}
    base_t = {r["id"] for r in _jsonl(project / "results/retrain/questions/base_t.jsonl")}
    for seed in (0, 1):
        curriculum = _jsonl(project / f"results/retrain/gsm8k_test/base_t-curriculum/seed{seed}/metrics.jsonl")
        assert [r["step"] for r in curriculum] == [1, 2]
        assert set(curriculum[0]["ids"]) <= base_t and set(curriculum[1]["ids"]) <= hard  # synthetic_steps = 1
        hard_only = _jsonl(project / f"results/retrain/gsm8k_test/hard_only/seed{seed}/metrics.jsonl")
        assert all(set(r["ids"]) <= hard for r in hard_only)
        oracle = _jsonl(project / f"results/retrain/gsm8k_test/oracle/seed{seed}/metrics.jsonl")
        assert all(i.startswith("gsm8k/train/") or i in hard for r in oracle for i in r["ids"])


def test_main_table_recomputed_from_the_per_sample_outputs(project):
    """pass@k by hand (math.comb) from every completion's verdict, against metrics.json."""
    from math import comb

    metrics = json.loads((project / "results/eval/metrics.json").read_text())
    table = metrics["benchmarks"]["gsm8k_test"]
    assert set(table) == {"base", "ps", "pq-mixed", "base_t-curriculum", "hard_only", "oracle"}
    for model, row in table.items():
        for k in metrics["ks"]:
            per_seed = []
            for seed in (0, 1):
                recs = _jsonl(project / f"results/eval/samples/gsm8k_test/{model}/seed{seed}.jsonl")
                assert all(r["n"] == len(r["correct"]) == metrics["n_samples"] and r["successes"] == sum(r["correct"])
                           for r in recs)
                per_seed.append(sum(1 - comb(r["n"] - r["successes"], k) / comb(r["n"], k) for r in recs) / len(recs))
            assert abs(row["mean"][str(k)] - sum(per_seed) / 2) < 1e-12, (model, k)
    main = (project / "results/tables/main.md").read_text()
    assert "| Hard-Only |" in main and "| Oracle |" in main and "gsm8k_test @2" in main


def test_vendi_recomputed_from_the_saved_embeddings_and_every_question_judged(project):
    """Vendi by hand (eigenvalues of the cosine kernel / n) from embeddings.npz, against metrics.json."""
    import numpy as np

    m = json.loads((project / "results/analysis/metrics.json").read_text())
    emb = np.load(project / "results/analysis/embeddings.npz")
    assert {"Base-T", "Grounded-T"} <= set(m["vendi"])
    # smoke runs the grounded variant only, and PQ exists only if a promotion happened
    assert {x.split(":")[0] for x in m["missing"]} <= {"Intrinsic-T", "Shuffled-T", "Intrinsic PQ", "PQ"}, m["missing"]

    def vendi(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        w = np.linalg.eigvalsh(x @ x.T / len(x))
        w = w[w > 1e-12]
        return float(np.exp(-(w * np.log(w)).sum()))

    for label, v in m["vendi"].items():
        x, draws = emb[v["array"]], emb[v["array"] + "__draws"]
        assert v["full"] == pytest.approx(vendi(x), rel=1e-6)
        if len(x) < 2:
            assert v["mean"] is None
        else:
            assert draws.shape == (v["draws"], v["size"])
            assert v["mean"] == pytest.approx(np.mean([vendi(x[i]) for i in draws]), rel=1e-6)
    judged = {r["question"] for r in _jsonl(project / "results/analysis/verdicts.jsonl")}
    proposed = {q for f in (project / RUN / "samples").glob("*.jsonl") for r in _jsonl(f) for q in r["questions"]}
    assert proposed <= judged
    assert all(s["questions"] == s["parsed"] + sum(s["unparseable"].values()) for s in m["variants"].values())


def test_executed_notebooks_keep_their_figures_as_images(project):
    """A reader opening results/notebooks/ sees the figures, not '<Figure size ...>'."""
    for name in ("05_analyze_questions.ipynb", "06_figures.ipynb"):
        cells = json.loads((project / "results/notebooks" / name).read_text())["cells"]
        images = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"] if "image/png" in o.get("data", {})]
        assert len(images) >= 4, name


def test_executed_notebooks_name_no_path_of_this_machine(project):
    """They are committed as run records (the project speaks of itself only)."""
    for nb in (project / "results/notebooks").glob("*.ipynb"):
        text = nb.read_text()
        assert "site-packages" not in text and str(project) not in text and str(ROOT) not in text, nb.name


def test_fail_at_k_metrics_are_consistent_with_samples(project):
    metrics = json.loads((project / "results/fail_at_k/metrics.json").read_text())
    rows = [json.loads(x) for x in (project / "results/fail_at_k/samples/gsm8k_test.jsonl").read_text().splitlines()]
    pool = metrics["pools"]["gsm8k_test"]
    assert pool["problems"] == len(rows)
    assert pool["hard"] == sum(r["successes"] == 0 for r in rows)
    assert all(len(r["completions"]) == metrics["k"] == r["n"] for r in rows)
    hard_ids = {r["id"] for r in rows if r["successes"] == 0}
    split = [json.loads(x)["id"] for s in ("train", "test")
             for x in (project / f"data/processed/hard/gsm8k_test_{s}.jsonl").read_text().splitlines()]
    assert sorted(split) == sorted(hard_ids)  # the splits partition the 0/k problems


def test_second_repro_does_nothing_and_status_is_clean(project):
    out = _run(["dvc", "repro"], project)
    assert "didn't change, skipping" in out or "Data and pipelines are up to date" in out
    assert "changed" not in _run(["dvc", "status"], project).replace("didn't change", "")


def _rows(project):
    rows = [json.loads(x) for x in (project / RUN / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "wall_s"} for r in rows]


def test_soar_logs_every_outer_step_and_its_datasets(project):
    rows = _rows(project)
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        for key in ("teacher/reward_mean", "teacher/reward_std", "teacher/frac_reward_zero_std",
                    "teacher/rejection_rate", "student/baseline_score", "teacher/question_diversity", "promotion"):
            assert key in r, key
        samples = [json.loads(x) for x in (project / RUN / f"samples/step_{r['step']:06d}.jsonl").read_text().splitlines()]
        assert len(samples) == 2 and all(len(s["questions"]) == len(s["answers"]) == 1 for s in samples)
        assert r["teacher/reward_mean"] == sum(s["reward"] for s in samples) / len(samples)


def test_killed_soar_run_resumes_to_the_uninterrupted_result(project):
    """Kill `dvc repro` in the middle of outer step 1, re-run it: it resumes from the checkpoint of
    step 0 and writes exactly what the uninterrupted run wrote."""
    uninterrupted = _rows(project)
    samples = (project / RUN / "samples/step_000001.jsonl").read_text()
    (project / CKPT).unlink()
    proc = subprocess.Popen(["dvc", "repro", "-f", "-s", "soar@grounded-0"], cwd=project, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 900
        while not (project / CKPT).exists():  # the checkpoint appears when step 0 is complete
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.5)
        time.sleep(5)  # well inside step 1
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert len(_rows(project)) == 1  # step 1 never completed
    _run(["dvc", "repro", "-s", "soar@grounded-0"], project)
    executed = (project / "results/notebooks/02_train_soar-grounded-seed0.ipynb").read_text()
    assert "resuming at outer step 1" in executed
    assert _rows(project) == uninterrupted
    assert (project / RUN / "samples/step_000001.jsonl").read_text() == samples


def _results(project):
    """What a fresh clone must reproduce: the SOAR run's records (timings aside), the fresh
    students' schedules, every evaluated completion and the tables."""
    soar = {name: (project / RUN / name).read_text() for name in ("pq.jsonl", "questions.jsonl")}
    students = {p.relative_to(project).as_posix(): p.read_text()
                for p in sorted((project / "results/retrain").glob("*/*/seed*/metrics.jsonl"))}
    evals = {p.relative_to(project).as_posix(): [(r["id"], r["checkpoint"], r["correct"], r["completions"])
                                                for r in _jsonl(p)]
             for p in sorted((project / "results/eval/samples").glob("*/*/seed*.jsonl"))}
    tables = {name: (project / "results/tables" / name).read_text() for name in ("main.md", "paper_vs_ours.md")}
    return _rows(project), soar, students, evals, tables


def test_a_fresh_clone_reproduces_the_same_results(project, tmp_path):
    """Commit the reproduced project with the real .gitignore, clone it: the clone lacks what git
    does not hold (data/processed/, checkpoints/ with the SOAR state and the students' adapters),
    and `dvc repro` there must rebuild it and write the same results (last: it re-runs stages)."""
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    _run([*git, "add", "-A"], project)
    _run([*git, "commit", "-q", "-m", "reproduced"], project)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "checkpoints").exists() and not (clone / "data/processed").exists()
    _link_converted_models(clone)
    _run(["dvc", "repro"], clone)
    assert _results(clone) == _results(project)
    assert "changed" not in _run(["dvc", "status"], clone).replace("didn't change", "")
