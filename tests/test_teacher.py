"""The teacher and the outer loop: the promotion rule as tables, rejection sampling with scripted
outputs, and whole outer steps with the real embedded model at toy sizes (seeded and resumed)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from soar import config, grading
from soar.data import load_benchmark
from soar.models import load_model
from soar.policy import Policy
from soar.sampling import Sample
from soar.teacher import SoarRun, best_index, median_index, promotion_due, propose_datasets, sample_questions

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("values, expected, why", [
    ([0.3], 0, "one student is its own median"),
    ([0.1, 0.5, 0.3], 2, "odd count: the middle value"),
    ([0.4, 0.1, 0.3, 0.2], 3, "even count: the lower median (0.2), not the upper (0.3)"),
    ([0.2, 0.2, 0.2], 1, "ties: the middle position"),
    ([-0.1, 0.0, 0.1, 0.2], 1, "negative gains sort below zero"),
])
def test_median_index(values, expected, why):
    assert median_index(values) == expected, why


@pytest.mark.parametrize("values, expected, why", [
    ([0.1, 0.4, 0.2], 1, "the largest"),
    ([0.4, 0.1, 0.4], 0, "ties: the first dataset"),
    ([-0.3, -0.1], 1, "all negative: still the largest"),
])
def test_best_index(values, expected, why):
    assert best_index(values) == expected, why


@pytest.mark.parametrize("history, tau, due, why", [
    ([0.5, 0.5], 0.01, False, "fewer steps than the window"),
    ([0.0, 0.0, 0.04], 0.01, True, "mean 0.0133 > 0.01"),
    ([0.25, 0.25, 0.25], 0.25, False, "equal to tau is not above it (exact in binary)"),
    ([1.0, 0.0, 0.0, 0.02], 0.01, False, "only the last window counts (mean 0.0067)"),
    ([-0.2, 0.1, 0.16], 0.01, True, "negative rewards count in the mean (0.02)"),
])
def test_promotion_due(history, tau, due, why):
    assert promotion_due(history, tau=tau, window=3) is due, why


# --- rejection sampling with scripted teacher outputs -------------------------------------------
# The embedded model's outputs are random; scripting them covers every rejection reason exactly.

SCRIPT = [
    "What is 2 + 3?</question><answer>\\boxed{5}</answer>",  # valid
    "no tags at all",  # missing_tags
    "   </question><answer>\\boxed{1}</answer>",  # empty_question
    "What is 1 + 1?</question><answer>2</answer>",  # no_boxed
    "What is 3 * 3?</question><answer>\\boxed{9}</answer>",  # valid
    "import os; os.system('x')</question><answer>\\boxed{\\frac{1}{}</answer>",  # unparsable / no box
    "What is 10 - 4?</question><answer>\\boxed{6}</answer>",  # valid
    "What is 8 / 2?</question><answer>\\boxed{4}</answer>",  # valid
]


def _scripted_generate(calls):
    def fake(model, tok, prompts, *, n, **kw):
        calls.append((prompts, n))
        out = []
        for j in range(n):
            text = SCRIPT[(len(calls) - 1) * n + j] if (len(calls) - 1) * n + j < len(SCRIPT) else "junk"
            out.append(Sample(0, j, tuple(prompts[0]), (1, 2, 3), text, True))
        return [out]
    return fake


def test_malformed_teacher_outputs_are_rejected_and_never_kept(monkeypatch, grader, smol):
    calls = []
    monkeypatch.setattr("soar.teacher.generate", _scripted_generate(calls))
    teacher = SimpleNamespace(model=None, tokenizer=smol[1])  # generation is scripted
    cfg = config.TeacherConfig(response_prefix="<question>", max_attempts_factor=10)
    datasets, stats = propose_datasets(teacher, 2, 2, cfg, config.GenerationConfig(batch_size=4), seed=0,
                                       grader=grader)
    questions = [p.problem for X in datasets for p in X.problems]
    assert questions == ["What is 2 + 3?", "What is 3 * 3?", "What is 10 - 4?", "What is 8 / 2?"]
    assert [p.answer for X in datasets for p in X.problems] == ["5", "9", "6", "4"]
    kept = [s.text for X in datasets for s in X.samples]  # exactly what the teacher update sees
    assert all(isinstance(grading.parse_teacher_output("<question>" + t, grader=grader), grading.TeacherPair)
               for t in kept)
    assert stats["teacher/samples_drawn"] == 8 and stats["teacher/rejection_rate"] == 0.5  # 4 of 8 rejected
    assert stats["teacher/rejected_missing_tags"] == 1 and stats["teacher/rejected_empty_question"] == 1
    assert stats["teacher/rejected_no_boxed"] == 2  # "2" and the unclosed \frac box
    # the prompt ends with the forced prefix, so the policy gradient never covers it
    prefix_ids = teacher.tokenizer("<question>", add_special_tokens=False)["input_ids"]
    assert list(calls[0][0][0][-len(prefix_ids):]) == prefix_ids


def test_sample_questions_draws_n_valid_questions(monkeypatch, grader, smol):
    monkeypatch.setattr("soar.teacher.generate", _scripted_generate([]))
    teacher = SimpleNamespace(model=None, tokenizer=smol[1])
    questions, stats = sample_questions(teacher, 3, config.TeacherConfig(response_prefix="<question>"),
                                        config.GenerationConfig(batch_size=8), seed=0, grader=grader)
    assert [q.answer for q in questions] == ["5", "9", "6"] and stats["teacher/samples_drawn"] == 8


def test_rejection_sampling_gives_up_with_the_reasons(monkeypatch, grader, smol):
    monkeypatch.setattr("soar.teacher.generate", lambda m, t, p, *, n, **kw: [
        [Sample(0, j, (1,), (2,), "junk", True) for j in range(n)]])
    teacher = SimpleNamespace(model=None, tokenizer=smol[1])
    cfg = config.TeacherConfig(max_attempts_factor=3)
    with pytest.raises(RuntimeError, match=r"0 valid pairs of 4 .*max_attempts_factor=3.*'missing_tags': 12"):
        propose_datasets(teacher, 2, 2, cfg, config.GenerationConfig(batch_size=4), seed=0, grader=grader)


# --- whole outer steps with the real model ------------------------------------------------------

def _toy_cfg(**soar):
    """Smoke sizes; tau below any reward so every step promotes (exercises promotion replay)."""
    return config.load(ROOT / "params.yaml", {"profile": "smoke", "soar": {"tau": -1.0, "window": 1, **soar}})


class ReversedOrder:
    """An executor that runs the inner loops last-first: results must not depend on the order."""

    def map(self, fn, jobs, *, local, promotions=()):
        return list(reversed([fn(local, job) for job in reversed(list(jobs))]))


def _run(cfg, checkpoint, grader, executor=None):
    d_train = load_benchmark("gsm8k_test", limit=4, seed=0)
    policies = [Policy(*load_model(cfg.model.name, device="cpu"), adapter=role.adapter, lora_r=role.lora_r,
                       lora_alpha=role.lora_alpha) for role in (cfg.teacher, cfg.student)]
    return SoarRun(*policies, d_train, cfg, grader=grader, checkpoint=checkpoint, fingerprint=config.fingerprint(cfg),
                   executor=executor)


def _comparable(row):
    return {k: v for k, v in row.items() if not k.startswith("time/")}


def _base_weights(policy):
    with policy.reference() as ref:
        return {k: v.clone() for k, v in ref.state_dict().items() if "lora_" not in k}


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_and_same_seed_repeats_on_any_executor(tmp_path, grader):
    cfg = _toy_cfg()
    whole = _run(cfg, tmp_path / "a.pt", grader)
    rows_a = [whole.meta_step() for _ in range(2)]
    assert all(r["promotion"] for r, _ in rows_a) and whole.state.promotions[0]["step"] == 0

    first = _run(cfg, tmp_path / "b.pt", grader, executor=ReversedOrder())
    row_b0 = first.meta_step()
    assert _comparable(row_b0[0]) == _comparable(rows_a[0][0]), "same seed (and another executor), same step"
    assert row_b0[1] == rows_a[0][1]
    first.save()
    del first
    resumed = _run(cfg, tmp_path / "b.pt", grader)  # a new process would see exactly this
    assert resumed.state.step == 1 and len(resumed.state.promotions) == 1
    row_b1 = resumed.meta_step()
    assert _comparable(row_b1[0]) == _comparable(rows_a[1][0])
    assert row_b1[1] == rows_a[1][1]  # the datasets, their questions, answers and rewards
    for a, b in ((whole.teacher.state(), resumed.teacher.state()),
                 (_base_weights(whole.student), _base_weights(resumed.student))):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.promotion_questions() == whole.promotion_questions()


@pytest.mark.slow
def test_a_checkpoint_of_other_params_is_not_resumed(tmp_path, grader):
    cfg = _toy_cfg()
    run = _run(cfg, tmp_path / "c.pt", grader)
    run.state.step = 1
    run.save()
    assert _run(cfg, tmp_path / "c.pt", grader).state.step == 1
    other = _toy_cfg(tau=0.5)
    assert _run(other, tmp_path / "c.pt", grader).state.step == 0


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["intrinsic", "base_teacher", "no_promotion"])
def test_variants_run_one_outer_step(tmp_path, grader, variant):
    cfg = config.load(ROOT / "params.yaml", {"profile": "smoke", "soar": {"tau": -1.0, "window": 1}}, variant=variant)
    run = _run(cfg, tmp_path / "v.pt", grader)
    before = {k: v.clone() for k, v in run.teacher.state().items()}
    row, samples = run.meta_step()
    teacher_moved = any(not torch.equal(before[k], v) for k, v in run.teacher.state().items())
    if variant == "base_teacher":
        assert not teacher_moved, "Base-T is frozen"
    elif row["teacher/frac_reward_zero_std"] < 1:  # some group has a nonzero advantage
        assert teacher_moved
    assert row["promotion"] == (variant != "no_promotion")
    if variant == "intrinsic":  # the learnability reward lies in [0, 1); the grounded gain is kept too
        assert all(0 <= s["reward"] < 1 for s in samples) and all("grounded" in s for s in samples)


def test_the_reward_pool_is_the_first_pool_only(tmp_path, monkeypatch):
    """D_train is the first pool's hard train split; a second pool (OlympiadBench in the paper)
    stays out of distribution for the teacher."""
    from soar import config, data, paths
    from soar.data import Problem
    from soar.teacher import reward_pool

    monkeypatch.chdir(tmp_path)
    for pool, n in (("math_test", 3), ("olympiadbench", 2)):
        data.write_jsonl(paths.hard_split(pool, "train"), [Problem(f"{pool}/{i}", f"Q{i}?", "1") for i in range(n)])
    cfg = config.load(ROOT / "params.yaml", {"fail_at_k": {"pools": ["math_test", "olympiadbench"]}})
    assert [p.id for p in reward_pool(cfg)] == ["math_test/0", "math_test/1", "math_test/2"]
