"""The inner loop with the real embedded model at toy sizes."""

import torch

from soar.config import GenerationConfig, StudentConfig
from soar.data import Problem
from soar.models import load_model
from soar.policy import Policy
from soar import student
from soar.student import question_schedule, train_student, train_students

CFG = StudentConfig(steps=1, questions_per_step=2, samples_per_question=2, max_new_tokens=8, lr=1e-3)
GEN = GenerationConfig(batch_size=8)
DATASET = [Problem(id="q1", problem="What is 2 + 2?", answer="4"), Problem(id="q2", problem="What is 3 * 3?", answer="9")]


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_one_inner_step_changes_the_student_and_not_the_baseline(grader, monkeypatch):
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    policy = Policy(model, tok, adapter="lora", lora_r=4, lora_alpha=8)
    # Rewards need variance within a group for a nonzero RLOO step; the 135M model rarely boxes
    # anything in 8 tokens, so the reward here is made to differ between the two samples
    # (the real shaped reward is tested in test_grading; this test is about the update).
    monkeypatch.setattr("soar.grading.student_rewards", lambda texts, golds, **k: [float(i % 2) for i in range(len(texts))])
    with policy.reference() as ref:
        before_ref = _weights(ref)
    before = policy.state()
    run = train_student(policy, DATASET, CFG, steps=1, seed=0, grader=grader, generation=GEN)
    changed = [k for k in before if not torch.equal(before[k], run.state[k])]
    assert changed, "the student's adapter did not move"
    with policy.reference() as ref:
        after_ref = _weights(ref)
    base_keys = [k for k in before_ref if "lora_" not in k]
    assert all(torch.equal(before_ref[k], after_ref[k]) for k in base_keys), "the baseline changed"
    assert run.metrics[0]["student/grad_norm"] > 0


def test_reset_restores_the_baseline_outputs(grader):
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    policy = Policy(model, tok, adapter="lora", lora_r=4, lora_alpha=8)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad(), policy.reference() as ref:
        base_logits = ref(input_ids=ids).logits
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
        moved = policy.model(input_ids=ids).logits
        policy.reset(seed=1)
        back = policy.model(input_ids=ids).logits
    assert not torch.allclose(moved, base_logits)
    assert torch.allclose(back, base_logits, atol=1e-5)


def test_merge_makes_the_state_the_new_baseline():
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    policy = Policy(model, tok, adapter="lora", lora_r=4, lora_alpha=8)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05)
        trained = policy.model(input_ids=ids).logits
        policy.merge(policy.state())
        with policy.reference() as ref:
            new_base = ref(input_ids=ids).logits
    assert torch.allclose(new_base, trained, atol=1e-4)


def test_question_schedule_covers_the_dataset_before_repeating():
    sched = question_schedule(5, steps=4, per_step=2, seed=0)
    flat = [i for s in sched for i in s]
    assert sorted(flat[:5]) == list(range(5))
    assert sched == question_schedule(5, steps=4, per_step=2, seed=0)
    assert sched != question_schedule(5, steps=4, per_step=2, seed=1)


def test_batched_students_train_as_if_one_after_another(grader, monkeypatch):
    """Two students trained together on one base (mixed-adapter batches, one AdamW each) draw the
    same answers and end with the same adapters as when trained one after another."""
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    policy = Policy(model, tok, adapter="lora", lora_r=4, lora_alpha=8)
    other = [Problem(id="q3", problem="What is 10 - 7?", answer="3"),
             Problem(id="q4", problem="Name a prime number larger than 10.", answer="11"),
             Problem(id="q5", problem="What is 6 / 2?", answer="3")]
    # a reward of the text (the 135M model rarely boxes an answer): the step-2 answers then
    # depend on the step-1 update, so the adapters must move the same way in both modes
    monkeypatch.setattr("soar.grading.student_rewards", lambda texts, golds, **k: [float(len(t) % 3) for t in texts])
    seen = []
    reinforce = student.reinforce

    def spy(policy, optimizer, scheduler, questions, samples, cfg, *, grader):
        seen.append([[s.text for s in row] for row in samples])
        return reinforce(policy, optimizer, scheduler, questions, samples, cfg, grader=grader)

    monkeypatch.setattr("soar.student.reinforce", spy)
    cfg = StudentConfig(steps=2, questions_per_step=1, samples_per_question=2, max_new_tokens=8, lr=1e-2)
    alone = [train_student(policy, d, cfg, steps=2, seed=s, grader=grader, generation=GEN)
             for d, s in ((DATASET, 0), (other, 1))]
    alone_seen, seen[:] = seen[:], []
    with train_students(policy, [DATASET, other], cfg, steps=2, seeds=[0, 1], grader=grader,
                        generation=GEN) as (_, names, together):
        assert len(names) == 2 and set(names) <= set(policy.model.peft_config)
    assert list(policy.model.peft_config) == ["default"], "the batch's adapters are removed"
    assert seen == [alone_seen[0], alone_seen[2], alone_seen[1], alone_seen[3]]  # step by step, both students
    for a, b in zip(alone, together):
        assert a.state.keys() == b.state.keys()
        assert all(torch.allclose(a.state[k], b.state[k], atol=1e-6) for k in a.state)
        assert any(v.abs().sum() > 0 for k, v in b.state.items() if "lora_B" in k), "the student moved (B starts at 0)"
        assert [m["student/reward_mean"] for m in a.metrics] == [m["student/reward_mean"] for m in b.metrics]
