"""Fresh students: schedules, the checkpoint rule, method configs, the main-table statistics."""

import math

import numpy as np
import pytest

from soar import config, evaluation, retrain, tracking
from soar.data import Problem
from soar.models import load_model
from soar.policy import Policy, load_policy
from soar.student import evaluate_student

SYN = [Problem(id=f"syn{i}", problem=f"What is {i} + 1?", answer=str(i + 1)) for i in range(3)]
HARD = [Problem(id=f"hard{i}", problem=f"What is {i} * 2?", answer=str(2 * i)) for i in range(5)]


def _run(name, steps=6, synthetic_steps=2, per_step=2):
    cfg = config.load("params.yaml", {"retrain": {"steps": steps, "synthetic_steps": synthetic_steps,
                                                  "questions_per_step": per_step}})
    return retrain.run_config(name, cfg)


def test_curriculum_feeds_synthetic_questions_first_then_the_hard_split():
    plan = retrain.schedule(SYN, HARD, _run("pq-curriculum"), seed=0)
    assert len(plan) == 6 and all(len(b) == 2 for b in plan)
    assert all(q.id.startswith("syn") for b in plan[:2] for q in b)
    assert all(q.id.startswith("hard") for b in plan[2:] for q in b)
    # within a source, every question once before any repeats
    assert sorted(q.id for b in plan[2:4] for q in b) == sorted({q.id for b in plan[2:4] for q in b})


def test_mixed_draws_every_step_from_one_mixture_and_hard_only_from_the_hard_split():
    plan = retrain.schedule(SYN, HARD, _run("pq-mixed", steps=4), seed=0)
    ids = [q.id for b in plan for q in b]
    assert sorted(ids) == sorted(q.id for q in SYN + HARD)  # 8 = one pass over the mixture
    plan = retrain.schedule(SYN, HARD, _run("hard_only"), seed=0)
    assert all(q.id.startswith("hard") for b in plan for q in b)


def test_schedule_is_deterministic_for_a_seed_and_changes_with_it():
    run = _run("pq-mixed")
    ids = lambda s: [q.id for b in retrain.schedule(SYN, HARD, run, seed=s) for q in b]  # noqa: E731
    assert ids(0) == ids(0) and ids(0) != ids(1)


def test_a_method_without_its_questions_is_an_error_but_an_empty_pq_trains_on_the_hard_split():
    with pytest.raises(ValueError, match="needs questions"):
        retrain.schedule([], HARD, _run("grounded_t-curriculum"), seed=0)
    with pytest.raises(ValueError, match="needs questions"):
        retrain.schedule(SYN, [], _run("pq-curriculum"), seed=0)
    for name in ("pq-curriculum", "pq-mixed"):  # the SOAR run never promoted: what it gave is nothing
        plan = retrain.schedule([], HARD, _run(name), seed=0)
        assert len(plan) == _run(name)["steps"] and all(q.id.startswith("hard") for b in plan for q in b)
    with pytest.raises(ValueError, match="unknown retrain method"):
        retrain.method("pq-spiral")


def test_oracle_and_pq_runs_differ_only_in_their_data():
    cfg = config.load("params.yaml", {"profile": "paper"})
    pq, oracle = retrain.run_config("pq-mixed", cfg), retrain.run_config("oracle", cfg)
    assert {k for k in pq if pq[k] != oracle[k]} == {"method", "data"}
    hard, g128 = retrain.run_config("hard_only", cfg), retrain.run_config("hard_only-g128", cfg)
    assert g128["samples_per_question"] == 4 * hard["samples_per_question"] == 128
    curriculum = retrain.run_config("pq-curriculum", cfg)
    assert curriculum["warmup_steps"] == 0 and curriculum["synthetic_steps"] == 64 and pq["warmup_steps"] == 20


@pytest.mark.parametrize("name, warmup", [
    ("pq-curriculum", 0),  # Table 3: "0 in the inner loop and curriculum-PQ evaluation"
    ("pq-mixed", 20), ("grounded_t-curriculum", 20), ("base_t-curriculum", 20), ("intrinsic_t-curriculum", 20),
    ("grounded_t_no_promotion-curriculum", 20), ("hard_only", 20), ("hard_only-g128", 20), ("oracle", 20),
    ("oracle-128", 20),  # "20 otherwise"
])
def test_warmup_is_zero_only_for_the_pq_curriculum(name, warmup):
    assert retrain.run_config(name, config.load("params.yaml", {"profile": "paper"}))["warmup_steps"] == warmup


@pytest.mark.parametrize("rewards,smoothing,expected", [
    ([0.0, 0.1, 0.3, 0.6, 0.65, 0.66, 0.66], 1, 5),  # steepest 0.3->0.6; 0.05 is not < 0.045, 0.01 is
    ([0.0, 0.5, 0.52, 0.52, 0.52], 1, 2),  # the plateau starts at step 2: then 0.02 < 0.15 * 0.5
    ([0.5, 0.4, 0.3, 0.2], 1, 4),  # never rises: the last step
    ([0.0, 0.1, 0.2, 0.3], 1, 4),  # never flattens: the last step
    ([0.3], 5, 1),
    ([0.0, 0.0, 1.0, 1.0, 1.0, 1.0], 2, 4),  # smoothed: 0, .5, 1, 1, 1 -> flat from the 4th step
])
def test_checkpoint_rule(rewards, smoothing, expected):
    assert retrain.select_checkpoint(rewards, smoothing=smoothing, fraction=0.15) == expected


def curriculum_curve(noise=0.0, seed=0):
    """A curriculum run's reward, paper-profile shape: 64 synthetic steps rising from 0.2 to 0.7,
    a cliff at the switch to the hard set (0.02), then a slow rise to a plateau near 0.27 over
    1436 hard steps (time constant 150 steps: the slope is 15% of its start after ~285 steps)."""
    t = np.arange(1500 - 64)
    hard = 0.02 + 0.25 * (1 - np.exp(-t / 150))
    return np.concatenate([np.linspace(0.2, 0.7, 64), hard]) + np.random.default_rng(seed).normal(0, noise, 1500)


def test_checkpoint_rule_reads_a_curriculum_run_on_its_hard_part():
    """Read whole, the curve's steepest rise is in the synthetic steps and its cliff ends it: the
    rule stopped at or before step 64. On the hard part, it finds the late plateau."""
    rule = dict(smoothing=20, fraction=0.15)
    assert retrain.select_checkpoint(curriculum_curve(), **rule) <= 64  # the old reading
    chosen = retrain.select_checkpoint(curriculum_curve(), synthetic_steps=64, **rule)
    assert 64 + 250 <= chosen <= 64 + 320  # the plateau: the slope below 15% of its start (noiseless: step 360)
    for seed in range(5):  # an RL reward is noisy: still after the cliff, on the way up or later
        assert retrain.select_checkpoint(curriculum_curve(0.02, seed), synthetic_steps=64, **rule) > 64 + 100
    assert retrain.select_checkpoint([0.1, 0.5, 0.9, 0.0], synthetic_steps=4, **rule) == 4  # no hard part: the last
    assert retrain.select_checkpoint([0.9, 0.0, 0.5, 1.0, 1.0], synthetic_steps=1, smoothing=1, fraction=0.15) == 4


def test_centred_average_does_not_lag():
    assert retrain.centred_average([0, 0, 3, 0, 0], 2).tolist() == [0, 1, 1, 1, 0]  # the spike stays centred
    assert retrain.centred_average([1, 2, 3], 1).tolist() == [1, 2, 3]


def test_checkpoint_window():
    assert retrain.checkpoint_steps(10, 4) == [4, 8, 10]
    # the 200 steps from the chosen step on (paper: the test averaged over the window after it)
    assert retrain.window_checkpoints([50, 100, 150, 200, 250, 300, 350, 400], 160, 200) == [200, 250, 300, 350]
    assert retrain.window_checkpoints([50, 100, 150, 200, 250, 300, 350, 400], 150, 200) == [150, 200, 250, 300]
    assert retrain.window_checkpoints([2, 4], 3, 0) == [4]  # none inside: the first one after
    assert retrain.window_checkpoints([2, 4], 5, 0) == [4]  # none after: the last


def test_olympiadbench_students_are_read_at_step_50_and_others_by_the_rule():
    cfg = config.load("params.yaml", {"profile": "paper"})
    run, rc = retrain.run_config("pq-curriculum", cfg), cfg.retrain
    saved = retrain.checkpoint_steps(rc.steps, rc.eval_every)
    rewards = curriculum_curve().tolist()
    assert retrain.choose_checkpoints(rewards, saved, run, rc, pool="olympiadbench") == (50, [50])
    chosen, window = retrain.choose_checkpoints(rewards, saved, run, rc, pool="math_test")
    assert chosen > 64 and window == [s for s in saved if chosen <= s < chosen + 200] and len(window) == 4
    assert retrain.choose_checkpoints([0.0] * 20, [10, 20], run, rc, pool="olympiadbench") == (20, [20])  # a short run


@pytest.mark.parametrize("pool, schedule", [("math_test", "curriculum"), ("olympiadbench", "mixed"), ("harp", "mixed")])
def test_curriculum_methods_train_on_the_mixture_on_olympiadbench_and_harp(pool, schedule):
    """PAPER.md: curriculum on MATH, mixed on HARP and OlympiadBench (a curriculum of 64 synthetic
    steps would be read at step 50 before its first OlympiadBench question)."""
    cfg = config.load("params.yaml", {"profile": "paper"})
    run = retrain.run_config("pq-curriculum", cfg, pool=pool)
    assert run["schedule"] == schedule and (run["synthetic_steps"] > 0) == (schedule == "curriculum")
    assert retrain.run_config("hard_only", cfg, pool=pool)["schedule"] == "hard"


def _records(counts, n=4, checkpoint=None):
    return [{"id": f"p{i}", "n": n, "successes": c, "checkpoint": checkpoint} for i, c in enumerate(counts)]


def test_summary_matches_pass_at_k_by_hand():
    runs = {"hard_only": {0: _records([0, 1, 0]), 1: _records([0, 0, 2])}}
    s = evaluation.summarize(runs, [1, 2], n_boot=200)["hard_only"]
    p1 = [(1 / 4) / 3, (2 / 4) / 3]  # per-seed mean pass@1
    assert s["per_seed"]["1"] == pytest.approx(p1)
    assert s["mean"]["1"] == pytest.approx(np.mean(p1)) and s["std"]["1"] == pytest.approx(np.std(p1, ddof=1))
    p2 = lambda c: 1 - math.comb(4 - c, 2) / math.comb(4, 2)  # noqa: E731
    assert s["per_problem"]["2"] == pytest.approx([0, p2(1) / 2, p2(2) / 2])
    lo, hi = s["ci"]["1"]
    assert lo <= s["mean"]["1"] <= hi


def test_checkpoints_of_a_window_are_averaged():
    recs = _records([4, 0], checkpoint=2) + _records([0, 0], checkpoint=4)
    assert evaluation.problem_pass_at_k(recs, [1])["p0"][1] == pytest.approx(0.5)


def test_oracle_share_and_its_undefined_case():
    runs = {"hard_only": {0: _records([0, 0, 0, 0])}, "oracle": {0: _records([4, 4, 0, 0])},
            "pq-curriculum": {0: _records([4, 0, 0, 0])}}
    table = evaluation.summarize(runs, [1], n_boot=100)
    share = evaluation.oracle_share(table, [1], n_boot=100)["pq-curriculum"]["1"]
    assert share["value"] == pytest.approx(0.5)
    assert share["undefined_draws"] > 0  # some resamples hold no problem the Oracle solves
    runs["oracle"] = {0: _records([0, 0, 0, 0])}
    table = evaluation.summarize(runs, [1], n_boot=100)
    assert evaluation.oracle_share(table, [1], n_boot=100)["pq-curriculum"]["1"]["value"] is None


def test_difference_to_hard_only_is_paired_over_test_problems():
    runs = {"hard_only": {0: _records([0, 0, 4, 4]), 1: _records([0, 0, 4, 4])},
            "pq-curriculum": {0: _records([4, 0, 4, 4]), 1: _records([0, 4, 4, 4])}}
    m = evaluation.metrics({"addition_test": runs}, [1], n_samples=4, n_boot=200)
    d = m["vs_hard_only"]["addition_test"]["pq-curriculum"]["1"]
    assert d["diff"] == pytest.approx(0.25)  # seed-averaged: problems 0 and 1 at 1/2 each, over 4 problems
    assert 0.0 <= d["ci"][0] <= 0.25 <= d["ci"][1] <= 0.5  # paired: problems 2-3 never differ
    assert "hard_only" not in m["vs_hard_only"]["addition_test"]
    # the pre-registered contrasts (rendered by soar.report): only pairs whose models were both
    # evaluated; the same paired bootstrap, so PQ - Hard-Only is the vs_hard_only number
    from soar import report

    assert report.contrasts(m) == {"addition_test": {("pq-curriculum", "hard_only"): m["vs_hard_only"]["addition_test"]["pq-curriculum"]}}


def test_a_difference_carried_by_one_seed_is_not_shown():
    """Seeds are resampled before problems: one seed that solves everything (the other nothing)
    gives a CI that includes 0, where resampling problems alone would call the +50 points shown."""
    runs = {"hard_only": {0: _records([0] * 8), 1: _records([0] * 8)},
            "pq-curriculum": {0: _records([4] * 8), 1: _records([0] * 8)}}
    m = evaluation.metrics({"addition_test": runs}, [1], n_samples=4, n_boot=400)
    d = m["vs_hard_only"]["addition_test"]["pq-curriculum"]["1"]
    assert d["diff"] == pytest.approx(0.5)
    assert d["ci"][0] == pytest.approx(0.0) and d["ci"][1] == pytest.approx(1.0)  # seed draws {1,1} and {0,0}
    with pytest.raises(ValueError, match="same seeds"):
        evaluation.vs_hard_only(evaluation.summarize({"hard_only": {0: _records([0])}, "oracle": {1: _records([1])}},
                                                     [1], n_boot=10), [1], n_boot=10)


def test_nested_seeds_resample_their_soar_runs_first():
    """Six fresh seeds over three SOAR runs (0, 3 learn from run 0; 1, 4 from 1; 2, 5 from 2); PQ
    beats Hard-Only by 1 in the fresh seeds of runs 0 and 1, by 0 in run 2's. Seeds drawn as if
    independent leave out every winning seed in (2/6)^6 = 0.1% of draws: "shown". Drawn by SOAR run
    first, run 2 alone is (1/3)^3 = 3.7% of draws: the CI reaches 0, not shown. Without groups, or
    with one seed a group, the draws are the plain seed resample's."""
    win = {0: 1, 1: 1, 2: 0, 3: 1, 4: 1, 5: 0}
    runs = {"hard_only": {s: _records([0] * 8) for s in win},
            "pq-curriculum": {s: _records([4 * w] * 8) for s, w in win.items()}}
    groups = {s: s % 3 for s in win}
    plain = evaluation.metrics({"t": runs}, [1], n_samples=4, n_boot=2000)
    nested = evaluation.metrics({"t": runs}, [1], n_samples=4, n_boot=2000, groups=groups)
    d_plain, d_nested = (m["vs_hard_only"]["t"]["pq-curriculum"]["1"] for m in (plain, nested))
    assert d_plain["diff"] == d_nested["diff"] == pytest.approx(2 / 3)
    assert d_plain["ci"][0] > 0 and d_nested["ci"][0] == pytest.approx(0.0)
    assert nested["seed_groups"] == {str(s): g for s, g in groups.items()} and plain["seed_groups"] is None
    singletons = evaluation.metrics({"t": runs}, [1], n_samples=4, n_boot=2000, groups={s: s for s in win})
    assert singletons["vs_hard_only"] == plain["vs_hard_only"] and singletons["benchmarks"] == plain["benchmarks"]
    from soar import report  # the README's pre-registered contrasts draw the same way

    assert report.contrasts(nested)["t"][("pq-curriculum", "hard_only")] == {"1": d_nested}
    assert "SOAR seeds, then the fresh seeds" in report._resampled(nested) and "SOAR" not in report._resampled(plain)


def test_tables_have_a_row_per_method_and_the_paper_column():
    runs = {"base": {0: _records([0, 1])}, "pq-curriculum": {0: _records([1, 1])}}
    m = evaluation.metrics({"gsm8k_test": runs}, [1, 4], n_samples=4, n_boot=50)
    table = evaluation.main_table(m)
    assert "| Base model |" in table and "| SOAR-PQ (curriculum) |" in table and "gsm8k_test @4" in table
    assert "| 0.3 |" in evaluation.paper_vs_ours(m, label="toy").replace(" | 0.3", "| 0.3")
    with pytest.raises(ValueError, match="above evaluate.n_samples"):
        evaluation.metrics({"gsm8k_test": runs}, [8], n_samples=4)


def test_metrics_sum_the_wall_time_of_every_evaluation_job():
    job = lambda counts, s: [dict(r, wall_s=s) for r in _records(counts)]  # noqa: E731  a job's time on each record
    runs = {"base": {0: job([0, 1], 2.0), 1: job([1, 1], 3.0)}, "oracle": {0: job([4, 0], 5.5), 1: job([0, 0], 0.5)}}
    m = evaluation.metrics({"gsm8k_test": runs}, [1], n_samples=4, n_boot=10)
    assert m["jobs"] == 4 and m["wall_s"] == pytest.approx(11.0)


def test_evaluation_is_deterministic_for_a_seed(grader):
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    kw = dict(n_samples=2, grader=grader, max_new_tokens=8, batch_size=4, progress=False)
    a = evaluate_student(model, tok, HARD[:2], seed=3, **kw).records()
    assert a == evaluate_student(model, tok, HARD[:2], seed=3, **kw).records()
    assert a != evaluate_student(model, tok, HARD[:2], seed=4, **kw).records()


def test_fresh_student_logs_its_schedule_keeps_its_window_and_is_not_retrained(grader, tmp_path):
    import torch

    cfg = config.load("params.yaml", {"retrain": {"steps": 2, "synthetic_steps": 1, "questions_per_step": 1,
                                                  "samples_per_question": 2, "max_new_tokens": 8, "eval_every": 1},
                                      "generation": {"batch_size": 4}})
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    policy = Policy(model, tok, adapter="lora", lora_r=4, lora_alpha=8)
    run = retrain.run_config("pq-curriculum", cfg)
    ckpt = tmp_path / "ckpt"
    kw = dict(seed=0, out=tmp_path / "run", checkpoints=ckpt, grader=grader, progress=False)
    res = retrain.train_fresh_student(policy, SYN, HARD, run, cfg, **kw)
    rows = tracking.read_log(tmp_path / "run" / "metrics.jsonl")
    assert [r["synthetic"] for r in rows] == [1, 0]
    assert rows[0]["ids"][0].startswith("syn") and rows[1]["ids"][0].startswith("hard")
    assert res["saved"] == [1, 2] and res["chosen_step"] in (1, 2) and res["eval_checkpoints"] and res["wall_s"] > 0
    # only what evaluation reads is kept: the window's checkpoints, each the adapter as trained
    assert sorted(ckpt.iterdir()) == [retrain.checkpoint_file(ckpt, s) for s in res["eval_checkpoints"]]
    last, state = torch.load(retrain.checkpoint_file(ckpt, 2)), policy.state()
    assert last.keys() == state.keys() and all(torch.equal(last[k], state[k]) for k in state)
    mtime = (tmp_path / "run" / "metrics.json").stat().st_mtime_ns
    assert retrain.train_fresh_student(policy, SYN, HARD, run, cfg, **kw) == res  # skipped, not retrained
    assert (tmp_path / "run" / "metrics.json").stat().st_mtime_ns == mtime
    # a skipped run is read anew (the rule or the pool's reading may have changed since)
    again = retrain.train_fresh_student(policy, SYN, HARD, run, cfg, **kw, pool="olympiadbench")
    assert (again["chosen_step"], again["eval_checkpoints"]) == (2, [2])  # READ_AT 50, capped at the run's 2 steps
    assert again["fingerprint"] == res["fingerprint"] and again["wall_s"] == res["wall_s"]  # not retrained
    assert sorted(ckpt.iterdir()) == [retrain.checkpoint_file(ckpt, 2)]
    # a choice whose checkpoints are gone trains the run again: the same student, bit for bit
    retrain.checkpoint_file(ckpt, 2).unlink()
    redone = retrain.train_fresh_student(policy, SYN, HARD, run, cfg, **kw, pool="olympiadbench")
    assert redone["wall_s"] != again["wall_s"] and {**redone, "wall_s": 0} == {**again, "wall_s": 0}
    assert all(torch.equal(torch.load(retrain.checkpoint_file(ckpt, 2))[k], last[k]) for k in last)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_checkpoint_is_what_evaluation_loads_in_the_compute_dtype(dtype):
    """Full fine-tuning (the paper's): a checkpoint holds the student's weights as the model
    computes with them, and evaluation loads the very model it loaded from the fp32 masters that
    checkpoints held before. bf16 (a GPU): half the bytes; fp32 (CPU): the masters themselves,
    with the same digest, so earlier evaluations are reused."""
    import torch
    from test_policy import learned_update  # a tiny random Llama after 2 RLOO updates

    _, policy = learned_update(getattr(torch, dtype), steps=2)
    masters = policy.state()
    ckpt = policy.compute_weights(masters)

    def evaluated(state):  # as evaluate_all loads a checkpoint
        policy.reset(seed=0)
        policy.load_state(state)
        return {k: v.clone() for k, v in policy.model.state_dict().items()}

    before, now = evaluated(masters), evaluated(ckpt)
    assert before.keys() == now.keys() and all(torch.equal(before[k], now[k]) for k in now)
    size = lambda s: sum(t.nbytes for t in s.values())  # noqa: E731
    if dtype == "float32":
        assert all(torch.equal(ckpt[k], masters[k]) for k in masters)
        assert retrain.weights_digest([ckpt]) == retrain.weights_digest([masters])
    else:
        assert 2 * size(ckpt) == size(masters) and {t.dtype for t in ckpt.values()} == {torch.bfloat16}


def test_disk_use_of_the_paper_profile():
    """Llama-3.2-3B (3.21e9 weights) in bf16: 6.42 GB a checkpoint; per pool 10 methods x 3 seeds
    keeping the 4 checkpoints of a 200-step window every 50 steps (MATH) or the one read at step 50
    (OlympiadBench); a SOAR state of 12 + 4 + 3 x 2 bytes a weight (teacher masters and moments,
    the latest of 4 promotions in fp32, the 3 earlier in bf16), for each SOAR run (params.yaml's
    runs: 3 variants with the shuffled control, x 3 seeds) and 2 x 2 sweep cells."""
    params, paper = 3.21e9, config.load("params.yaml", {"profile": "paper"})
    use = retrain.disk_use(paper, params=params)
    assert use["checkpoint"] == params * 2
    assert use["retrain"] == pytest.approx((4 + 1) * 10 * 3 * params * 2)
    assert use["retrain_run_peak"] == pytest.approx(30 * params * 2)  # 1500 steps / 50
    assert use["soar_state"] == pytest.approx(params * (12 + 4 + 3 * 2))
    assert len(paper.runs.variants) * len(paper.runs.seeds) == 3 * 3
    assert use["soar"] == pytest.approx((3 * 3 + 2 * 2) * use["soar_state"])
    assert use["total"] == pytest.approx(use["retrain"] + use["soar"]) and 1.85e12 < use["total"] < 1.9e12
    assert retrain.disk_use(paper, params=params, promotions=0)["soar_state"] == pytest.approx(12 * params)
    with pytest.raises(ValueError, match="LoRA"):
        retrain.disk_use(config.load("params.yaml", {"profile": "tiny"}), params=params)


def test_weights_digest_follows_the_values_not_the_objects(tmp_path):
    import torch

    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16)}
    same = {k: v.clone() for k, v in reversed(list(a.items()))}
    assert retrain.weights_digest([a]) == retrain.weights_digest([same])
    same["w"][0, 0] = 1e-7
    assert retrain.weights_digest([a]) != retrain.weights_digest([same])
    assert retrain.weights_digest([a, a]) != retrain.weights_digest([a])  # a window of two checkpoints
    torch.save(a, tmp_path / "step.pt")  # as evaluate_all reads a checkpoint back
    assert retrain.weights_digest([torch.load(tmp_path / "step.pt", map_location="cpu", mmap=True)]) == \
        retrain.weights_digest([a])


def test_a_second_pool_is_out_of_distribution_and_extra_benchmarks_test_the_first_pools_students(
        grader, tmp_path, monkeypatch):
    """Paper profile shape (pools [math_test, olympiadbench], extra [aime24, amc23]) at toy size:
    the OlympiadBench students mix PQ with OlympiadBench's own hard train split, each pool is
    tested on its own hard test split, and AIME/AMC test the first pool's students."""
    from pathlib import Path

    from soar import data, paths

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/raw").symlink_to(root / "data/raw")
    (tmp_path / "models").symlink_to(root / "models")
    for pool in ("math_test", "olympiadbench"):
        for split in ("train", "test"):
            data.write_jsonl(paths.hard_split(pool, split),
                             [Problem(f"{pool}/{split}/{i}", f"What is {i} + 2?", str(i + 2)) for i in range(3)])
    cfg = config.load(root / "params.yaml", {
        "fail_at_k": {"pools": ["math_test", "olympiadbench"]}, "generation": {"batch_size": 4},
        "retrain": {"methods": ["pq-mixed"], "seeds": [0], "steps": 1, "questions_per_step": 2,
                    "samples_per_question": 2, "max_new_tokens": 8, "eval_every": 1},
        "evaluate": {"extra": ["aime24", "amc23"], "limit": 2}})
    student = Policy(*load_model("smollm2-135m-instruct", device="cpu"), adapter="lora", lora_r=4, lora_alpha=8)
    pq = [Problem("pq/0", "What is 7 - 3?", "4")]
    runs = retrain.train_all(cfg, student, {0: {"pq": pq}}, grader=grader)  # fresh seed 0 <- SOAR seed 0
    assert [r["pool"] for r in runs] == ["math_test", "olympiadbench"]
    for pool in ("math_test", "olympiadbench"):
        rows = tracking.read_log(paths.stage_dir("retrain", paths.retrain_run(pool, "pq-mixed", 0)) / "metrics.jsonl")
        ids = {i for r in rows for i in r["ids"]}
        assert ids <= {"pq/0"} | {f"{pool}/train/{i}" for i in range(3)} and any(i.startswith(pool) for i in ids)
    sets = retrain.test_sets(cfg)
    assert {b: pool for b, (pool, _) in sets.items()} == {
        "math_test": "math_test", "olympiadbench": "olympiadbench", "aime24": "math_test", "amc23": "math_test"}
    assert all(p.id.startswith("olympiadbench/test/") for p in sets["olympiadbench"][1])
    assert all(len(problems) == 2 for _, problems in sets.values())  # evaluate.limit


def _toy_project(tmp_path, monkeypatch, pools=("gsm8k_test",)):
    """A scratch project (cwd) with the raw data and models linked in, toy hard splits, and the
    project's params.yaml and profiles at profile: tiny (GSM8K on the embedded SmolLM2). Returns
    its root."""
    from pathlib import Path

    from soar import data, paths

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/raw").symlink_to(root / "data/raw")
    (tmp_path / "models").symlink_to(root / "models")
    (tmp_path / "profiles").symlink_to(root / "profiles")
    params = (root / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("profile: addition\n", "profile: tiny\n"))
    for pool in pools:
        for split in ("train", "test"):
            data.write_jsonl(paths.hard_split(pool, split),
                             [Problem(f"{pool}/{split}/{i}", f"What is {i} + 2?", str(i + 2)) for i in range(3)])
    return tmp_path


def test_oracle_128_trains_on_n_random_real_questions_the_same_for_every_seed(tmp_path, monkeypatch):
    root = _toy_project(tmp_path, monkeypatch)
    cfg = config.load(root / "params.yaml", {"retrain": {"methods": ["oracle", "oracle-128"], "seeds": [0, 1],
                                                         "questions": 5}})
    seen = {}
    monkeypatch.setattr(retrain, "train_fresh_student",
                        lambda policy, synthetic, hard, run, cfg, **kw: seen.setdefault((run["method"], kw["seed"]), synthetic) and {})
    retrain.train_all(cfg, None, {}, grader=None)
    full, sample = seen["oracle", retrain.seed_from(cfg.seed, 0)], seen["oracle-128", retrain.seed_from(cfg.seed, 0)]
    assert len(sample) == 5 and {p.id for p in sample} < {p.id for p in full} and len(full) > 1000  # GSM8K train
    assert [p.id for p in seen["oracle-128", retrain.seed_from(cfg.seed, 1)]] == [p.id for p in sample]


def test_grounded_t_without_promotion_learns_from_the_no_promotion_runs_final_teacher(tmp_path, monkeypatch):
    from soar import data, paths

    root = _toy_project(tmp_path, monkeypatch)
    for variant, answer in (("grounded", "1"), ("no_promotion", "2")):
        name = paths.soar_run(variant, 0)
        data.write_json(paths.stage_dir("soar", name) / "metrics.json", {})
        data.write_jsonl(paths.stage_dir("soar", name) / "questions.jsonl", [Problem(f"{variant}/q", "Q?", answer)])
        paths.run_checkpoint("soar", name).mkdir(parents=True)
        (paths.run_checkpoint("soar", name) / "state.pt").write_bytes(b"")
    cfg = config.load(root / "params.yaml", {"retrain": {"methods": ["grounded_t-curriculum",
                                                                     "grounded_t_no_promotion-curriculum"],
                                                         "soar_seed": 0}})
    sources = retrain.load_sources(cfg, grader=None)[0]
    assert [p.id for p in sources["grounded_t_no_promotion"]] == ["no_promotion/q"]
    assert [p.id for p in sources["grounded_t"]] == ["grounded/q"]
    assert evaluation.LABELS["grounded_t_no_promotion-curriculum"] == "Grounded-T without promotion (curriculum)"


@pytest.mark.parametrize("scores, expected", [
    ([0.1, 0.3, 0.2], 2),  # the best on D_train, not the last
    ([0.1, 0.2, 0.3], 3),  # the last when it is the best
    ([0.2, 0.2], 2),  # ties: the later, more taught one
    ([], 0),  # never promoted: the base model
])
def test_best_promotion(scores, expected):
    assert retrain.best_promotion(scores) == expected


def test_promoted_student_is_the_promoted_student_best_on_d_train(tmp_path, monkeypatch):
    """Three promotions scoring 0.1, 0.3, 0.2 greedily on D_train: the PS holds the first two."""
    import torch

    from soar import data, paths, teacher
    from soar.teacher import SoarState

    root = _toy_project(tmp_path, monkeypatch)
    cfg = config.load(root / "params.yaml", {"student": {"lora_r": 4, "lora_alpha": 8}})
    student = Policy(*load_model("smollm2-135m-instruct", device="cpu"), adapter="lora", lora_r=4, lora_alpha=8)
    promotions = []
    for k in range(3):  # distinct adapters (B != 0), small enough to leave the model sane
        student.reset(seed=k)
        promotions.append({"step": k, "state": {n: t + 1e-4 * (k + 1) for n, t in student.state().items()},
                           "problems": []})
    name = paths.soar_run("grounded", 0)
    data.write_json(paths.stage_dir("soar", name) / "metrics.json", {})
    paths.run_checkpoint("soar", name).mkdir(parents=True)
    torch.save(SoarState(promotions=promotions), paths.run_checkpoint("soar", name) / "state.pt")
    scores = iter([0.1, 0.3, 0.2])
    monkeypatch.setattr(teacher, "q_r_score", lambda model, tok, q_r, cfg, *, grader: next(scores))
    ps = retrain.promoted_student(cfg, 0, grader=None)
    assert (ps.promotions, ps.d_train_scores) == (2, [0.1, 0.3, 0.2])
    assert ps.digest == retrain.weights_digest([p["state"] for p in promotions[:2]])
    built, expected = retrain.promoted_policy(cfg, ps), load_policy(cfg.model, cfg.student)
    for p in promotions[:2]:  # what evaluate_all evaluates: the base with the first two merged
        expected.merge(p["state"])
    got, want = built.model.state_dict(), expected.model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(got[k := next(k for k in want if "lora" not in k and "proj" in k)],
                           load_policy(cfg.model, cfg.student).model.state_dict()[k])  # merged: not the base


def test_fresh_seeds_are_nested_in_the_soar_seeds_and_learn_from_their_runs(tmp_path, monkeypatch):
    """retrain.soar_seed null: the i-th fresh seed learns from the (i mod n)-th SOAR seed's
    grounded teacher and PQ (each seed's own questions reach its students); a set soar_seed is
    every seed's; one that is no SOAR seed is refused."""
    from soar import data, paths

    root = _toy_project(tmp_path, monkeypatch)
    for s in (10, 20):
        name = paths.soar_run("grounded", s)
        data.write_json(paths.stage_dir("soar", name) / "metrics.json", {})
        data.write_jsonl(paths.stage_dir("soar", name) / "questions.jsonl", [Problem(f"t{s}", "Q?", "1")])
        data.write_jsonl(paths.stage_dir("soar", name) / "pq.jsonl", [Problem(f"pq{s}", "Q?", "2").to_dict()])
        paths.run_checkpoint("soar", name).mkdir(parents=True)
        (paths.run_checkpoint("soar", name) / "state.pt").write_bytes(b"")
    nested = {"runs": {"seeds": [10, 20]},
              "retrain": {"methods": ["grounded_t-curriculum", "pq-mixed"], "seeds": [5, 6, 7], "soar_seed": None}}
    cfg = config.load(root / "params.yaml", nested)
    assert retrain.soar_seeds(cfg) == {5: 10, 6: 20, 7: 10}
    seen = {}
    monkeypatch.setattr(retrain, "train_fresh_student", lambda policy, synthetic, hard, run, cfg, **kw:
                        seen.setdefault((run["method"], kw["seed"]), [p.id for p in synthetic]) and {})
    runs = retrain.train_all(cfg, None, retrain.load_sources(cfg, grader=None), grader=None)
    assert [(r["seed"], r["soar_seed"]) for r in runs] == [(5, 10), (6, 20), (7, 10)] * 2
    fresh = {s: retrain.seed_from(cfg.seed, s) for s in (5, 6, 7)}
    assert [seen["grounded_t-curriculum", fresh[s]] for s in (5, 6, 7)] == [["t10"], ["t20"], ["t10"]]
    assert [seen["pq-mixed", fresh[s]] for s in (5, 6, 7)] == [["pq10"], ["pq20"], ["pq10"]]
    cfg = config.load(root / "params.yaml", nested | {"retrain": nested["retrain"] | {"soar_seed": 20}})
    assert retrain.soar_seeds(cfg) == {5: 20, 6: 20, 7: 20}
    with pytest.raises(config.ConfigError, match="retrain.soar_seed: 30 is not a SOAR seed"):
        config.load(root / "params.yaml", nested | {"retrain": nested["retrain"] | {"soar_seed": 30}})


def test_read_at_reads_every_method_at_the_same_steps():
    """retrain.read_at: every method's test is read at that step and the window after it, whatever
    its reward curve (the rule would read a curve that rises early in its first steps)."""
    cfg = config.load("params.yaml", {"retrain": {"read_at": 30, "window": 11, "steps": 40, "eval_every": 5}})
    rc = cfg.retrain
    saved = retrain.checkpoint_steps(rc.steps, rc.eval_every)
    early = [0.0, 0.9] + [1.0] * 38  # the rule stops at its plateau, step 2
    for name in ("hard_only", "pq-curriculum"):
        run = retrain.run_config(name, cfg)
        assert retrain.choose_checkpoints(early, saved, run, rc) == (30, [30, 35, 40])
    rule = config.load("params.yaml", {"retrain": {"read_at": None}}).retrain
    assert retrain.choose_checkpoints(early, saved, retrain.run_config("hard_only", cfg), rule)[0] < 10
    assert retrain.kept_checkpoints(cfg, "addition_test") == 3
    short = config.load("params.yaml", {"retrain": {"read_at": 30, "steps": 20, "eval_every": 5}}).retrain
    assert retrain.choose_checkpoints(early[:20], [5, 10, 15, 20], run, short) == (20, [20])  # its last step
    with pytest.raises(config.ConfigError, match="retrain.read_at"):
        config.load("params.yaml", {"retrain": {"read_at": 0}})


def test_a_run_that_learned_then_collapsed_to_the_format_credit_died():
    learned_then_lost = [0.1, 0.3, 0.5, 0.6, 0.4, 0.2] + [0.1] * 8
    assert retrain.died(learned_then_lost)
    assert not retrain.died([0.1] * 40)  # never rose (Hard-Only on problems it never solves): never lived
    assert not retrain.died([0.1, 0.3, 0.5, 0.6] + [0.5] * 10)  # still answers
    assert not retrain.died([0.1, 0.5, 0.1])  # too short to tell
    # a curriculum: right on its easy synthetic questions, never on the hard ones that follow. It
    # did not die (the committed run at 3e-4 once counted 8 such students as dead)
    easy_then_hard = [0.56, 0.55, 0.48, 0.42, 0.23, 0.33, 0.72, 0.79, 0.65, 0.62] + [0.1] * 30
    assert retrain.died(easy_then_hard)  # one phase, as the rule read it before
    assert not retrain.died(easy_then_hard, synthetic_steps=10)
    assert retrain.died([0.6] * 10 + learned_then_lost, synthetic_steps=10)  # lived on hard ones, then lost them
    assert retrain.died(learned_then_lost + [0.1] * 20, synthetic_steps=len(learned_then_lost))  # lost the easy ones
