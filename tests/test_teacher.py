"""The teacher and the outer loop: the promotion rule as tables, rejection sampling with scripted
outputs, batched students, and whole outer steps with the real embedded model at toy sizes."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import build_run, toy_cfg  # pytest puts tests/ on sys.path

from soar import config, grading
from soar.sampling import Sample
from soar.teacher import best_index, median_index, promotion_due, propose_datasets, sample_questions

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


# --- inner loops and whole outer steps with the real model ---------------------------------------

def test_batched_students_give_the_inner_loops_of_one_after_another(grader):
    """parallel.batch_students 3 over 2 datasets x r = 2 students (a batch of 3, then 1): the same
    gains and trained students as training the 4 students one after another."""
    from soar.data import load_benchmark
    from soar.parallel import Worker
    from soar.policy import load_policy
    from soar.teacher import InnerJob, inner_loops

    over = {"profile": "smoke", "soar": {"r": 2}, "student": {"questions_per_step": 1, "max_new_tokens": 8}}
    alone_cfg = config.load(ROOT / "params.yaml", over)
    batched_cfg = config.load(ROOT / "params.yaml", {**over, "parallel": {"batch_students": 3}})
    student = load_policy(alone_cfg.model, alone_cfg.student)
    problems = load_benchmark("gsm8k_test", limit=4, seed=0)
    jobs = [InnerJob(problems[:2], problems[2:], 0.1, 0, seed, j) for seed in (5, 6) for j in range(2)]
    alone = inner_loops(Worker(student, grader, alone_cfg), jobs)
    together = inner_loops(Worker(student, grader, batched_cfg), jobs)
    assert [a["gain"] for a in alone] == [b["gain"] for b in together]
    for a, b in zip(alone, together):
        assert all(torch.allclose(a["state"][k], b["state"][k], atol=1e-6) for k in a["state"])



# A resumed run equals the uninterrupted one: test_parallel (resumed on Ray actors, from the shared
# reference run) and test_pipeline (a `dvc repro` killed mid-step and rerun).


@pytest.mark.slow
def test_a_checkpoint_of_other_params_is_not_resumed(tmp_path, grader):
    cfg = toy_cfg()
    run = build_run(cfg, tmp_path / "c.pt", grader)
    run.state.step = 1
    run.save()
    assert build_run(cfg, tmp_path / "c.pt", grader).state.step == 1
    other = toy_cfg(tau=0.5)
    assert build_run(other, tmp_path / "c.pt", grader).state.step == 0


@pytest.mark.slow
@pytest.mark.parametrize("variant, no_promotion", [("intrinsic", False), ("base_teacher", True)])
def test_variants_run_one_outer_step(tmp_path, grader, variant, no_promotion):
    """One outer step per variant; the no_promotion variant's override rides on Base-T's step
    (one step less in CI; the grounded variant is the reference run and the pipeline's)."""
    over = {"profile": "smoke", "soar": {"tau": -1.0, "window": 1}}
    if no_promotion:
        variants = yaml.safe_load((ROOT / "params.yaml").read_text())["variants"]
        assert variants["no_promotion"] == {"soar": {"promotion": False}}
        over["soar"]["promotion"] = False
    cfg = config.load(ROOT / "params.yaml", over, variant=variant)
    run = build_run(cfg, tmp_path / "v.pt", grader)
    before = {k: v.clone() for k, v in run.teacher.state().items()}
    row, samples = run.meta_step()
    teacher_moved = any(not torch.equal(before[k], v) for k, v in run.teacher.state().items())
    if variant == "base_teacher":
        assert not teacher_moved, "Base-T is frozen"
    elif row["teacher/frac_reward_zero_std"] < 1:  # some group has a nonzero advantage
        assert teacher_moved
    assert row["promotion"] is not no_promotion and len(run.state.promotions) == (0 if no_promotion else 1)
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


@pytest.mark.slow
@pytest.mark.parametrize("held_out_gain, promoted", [(0.0, False), (0.5, True)])
def test_a_promotion_is_confirmed_on_d_train_outside_q_r(tmp_path, grader, monkeypatch, held_out_gain, promoted):
    """soar.confirm: a due promotion goes ahead only if the candidate (the median student of the
    best dataset) also gains more than tau on the D_train problems outside the step's Q_R; else
    the baseline stays and the moving average is kept, so the next step tries again."""
    from soar.data import sample_problems
    from soar.teacher import SoarRun

    cfg = toy_cfg(tau=0.0, confirm=True)
    run = build_run(cfg, tmp_path / "c.pt", grader)
    seen = []

    def gain(self, state, problems):
        seen.append(({p.id for p in problems}, state))
        return held_out_gain

    monkeypatch.setattr(SoarRun, "held_out_gain", gain)
    monkeypatch.setattr("soar.teacher.promotion_due", lambda history, tau, window: True)
    row, samples = run.meta_step()
    q_r = {p.id for p in sample_problems(run.d_train, cfg.soar.q_r, seed=(cfg.seed, 0, 1))}  # step 0's Q_R
    assert len(seen) == 1 and seen[0][0] == {p.id for p in run.d_train} - q_r and q_r and seen[0][0]
    assert row["student/confirmation_gain"] == held_out_gain and row["promotion"] is promoted
    assert len(run.state.promotions) == int(promoted) and len(run.state.grounded_history) == int(not promoted)
    if promoted:  # the candidate judged is the one promoted
        assert run.state.promotions[0]["state"] is seen[0][1]
    run.save()  # a resumed run goes on from the same decision: the kept average, or the promotion
    resumed = build_run(cfg, tmp_path / "c.pt", grader).state
    assert resumed.step == 1 and resumed.grounded_history == run.state.grounded_history
    assert [p["step"] for p in resumed.promotions] == [p["step"] for p in run.state.promotions]


@pytest.mark.slow
def test_the_held_out_gain_is_the_candidates_score_minus_the_baselines(tmp_path, grader, monkeypatch):
    """held_out_gain scores the baseline (the reference) and then the candidate's weights, on the
    problems it is given. The score here is a number computed from each model's logits, so that a
    candidate that differs from the baseline scores differently (a 135M model is right on no GSM8K
    problem, and greedy accuracy would compare 0 with 0)."""
    from soar.models import load_model

    tokens = torch.tensor([[1, 2, 3, 4]])

    def score(model, tokenizer, problems, cfg, *, grader):
        with torch.no_grad():
            return float(model(tokens).logits[0, -1, :8].sum()) + len(problems)

    monkeypatch.setattr("soar.teacher.q_r_score", score)
    cfg = toy_cfg(confirm=True)
    run = build_run(cfg, tmp_path / "c.pt", grader)
    problems = run.d_train[:3]
    assert run.held_out_gain(run.student.state(), problems) == 0.0  # the baseline itself gains nothing
    torch.manual_seed(0)
    candidate = {k: torch.randn_like(v) * 0.1 for k, v in run.student.state().items()}  # LoRA A and B
    base_model = load_model(cfg.model.name, device="cpu")[0]
    run.student.load_state(candidate)
    expected = score(run.student.model, None, problems, cfg, grader=None) - score(base_model, None, problems, cfg, grader=None)
    run.student.load_state({k: torch.zeros_like(v) for k, v in candidate.items()})
    gain = run.held_out_gain(candidate, problems)
    assert gain != 0 and gain == pytest.approx(expected, rel=1e-4, abs=1e-4)
