"""The work model of soar.budget, counted by hand on small configs."""

import pytest

from soar import budget, config

P, T = 100.0, 50.0  # mean student and teacher prompt tokens


def _cfg(**overrides):
    return config.load("params.yaml", overrides)


def test_retrain_counts_every_run_and_the_group_factor():
    cfg = _cfg(retrain={"methods": ["hard_only", "hard_only-g128"], "seeds": [0, 1], "steps": 3,
                        "questions_per_step": 2, "samples_per_question": 4, "max_new_tokens": 10},
               fail_at_k={"pools": ["gsm8k_test"]})
    seqs = 3 * 2 * 4 * (1 + 4) * 2  # steps x questions x samples x (group 1 + group 4) x seeds
    w = budget.retrain_work(cfg, prompt=P)
    assert (w.sampled, w.trained) == (seqs * 10, seqs * (P + 10))


def test_evaluate_counts_models_seeds_and_the_window_checkpoints():
    cfg = _cfg(retrain={"methods": ["hard_only", "oracle"], "seeds": [0, 1, 2], "steps": 8, "eval_every": 2,
                        "window": 4},
               evaluate={"n_samples": 4, "max_new_tokens": 10})
    assert budget.evaluated_checkpoints(cfg) == 2  # saved 2, 4, 6, 8; the window [6, 10) holds 6, 8
    models = 2 + 2 * 2  # base and PS once, each fresh student at 2 checkpoints
    w = budget.evaluate_work(cfg, {"a": 5, "b": 3})
    assert (w.sampled, w.trained) == (8 * 4 * 10 * models * 3, 0)


@pytest.mark.parametrize("reward", ["grounded", "intrinsic"])
def test_soar_counts_the_teacher_the_baseline_and_the_inner_loops(reward):
    cfg = _cfg(soar={"reward": reward, "outer_steps": 2, "n": 3, "group_size": 2, "groups_per_step": 1, "r": 2,
                     "q_r": 5, "intrinsic_samples": 4},
               student={"steps": 2, "questions_per_step": 2, "samples_per_question": 2, "max_new_tokens": 10},
               teacher={"max_new_tokens": 20})
    teacher = (2 * 3 * 20, 2 * 3 * (T + 20))  # 2 datasets x 3 questions, sampled then trained on
    baseline = 5 * 10  # greedy Q_R answers of the baseline
    # 4 students: 2 steps x 4 answers, trained on, then 5 Q_R answers each (intrinsic too: its
    # promotions follow the grounded gain, so it runs the inner loops)
    sampled, trained = teacher[0] + baseline + 4 * (8 * 10 + 50), teacher[1] + 4 * 8 * (P + 10)
    if reward == "intrinsic":  # and its reward: 4 answers per question of each dataset
        sampled += 2 * 3 * 4 * 10
    w = budget.soar_work(cfg, prompt=P, teacher_prompt=T)
    assert (w.sampled, w.trained) == (2 * sampled, 2 * trained)


def test_roofline_rates_and_hours():
    shape, hw = budget.Shape(params=1e9, kv_bytes_per_token=1000), budget.Hardware("toy", flops=1e12, bandwidth=1e11)
    sampled, trained = budget.roofline_rates(shape, hw, batch=10, context=100, full=True)
    assert sampled == pytest.approx(10 * 1e11 / (2e9 + 10 * 100 * 1000))  # weights once + every row's KV per step
    assert trained == pytest.approx(1e12 / 8e9)  # 2N forward + 4N backward + 2N reference forward
    assert budget.roofline_rates(shape, hw, batch=10, context=100, full=False, kl=False)[1] == pytest.approx(1e12 / 4e9)
    assert budget.hours(budget.Work(3600, 7200), sampled_per_s=1, trained_per_s=2) == pytest.approx(2.0)
