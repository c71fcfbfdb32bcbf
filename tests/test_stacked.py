"""Batched full students (soar.stacked) against the one-at-a-time path, on an addition-world model
pretrained here for a few seconds (a fresh clone has no models/addition: `dvc repro pretrain` makes it)."""

from pathlib import Path

import pytest
import torch

from soar import addition, config, prompts
from soar import student as student_module
from soar.data import seed_from
from soar.policy import Policy, _logps, _pad, update
from soar.sampling import encode_prompts, generate
from soar.stacked import KV, Students
from soar.student import train_student, train_students
from soar.teacher import q_r_score, q_r_scores

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaForCausalLM

    cfg = config.load(ROOT / "params.yaml", {"profile": "addition"})
    pool = [p for p in addition.pool("addition_train") if p.metadata["level"] >= 2]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the world's worker processes run an inner loop
    model_dir = tmp_path_factory.mktemp("world") / addition.NAME  # partly trained: its rewards vary
    addition.pretrain(config.PretrainConfig(steps=150, batch=64), model_dir, progress=False)
    policy = Policy(LlamaForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir),
                    adapter=cfg.student.adapter)
    yield cfg, policy, pool
    torch.set_num_threads(threads)


def _perturbed(model, count: int) -> Students:
    """`count` students that differ from the model and from each other."""
    students = Students(model, count)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in students.weights.values():
            w.add_(torch.randn(w.shape, generator=g) * 0.02)
    return students


def _load(policy, students: Students, k: int) -> None:
    policy.load_state(students.state(k))


def test_the_stacked_forward_is_the_hf_llama_of_each_student(world):
    """Left-padded prompts as soar.sampling prefills them, then one cached decode step, and the
    update's completion log-probs as soar.policy._logps takes them (right padding)."""
    cfg, policy, pool = world
    students = _perturbed(policy.model, 3)
    ids = encode_prompts(policy.tokenizer, [prompts.student_messages(p.problem) for p in pool[:4]])
    seqs = [ids[0], ids[1][:-3], ids[2][2:], ids[3][:5]]  # four lengths: padding in every mode
    width = max(map(len, seqs))
    x, mask = torch.zeros((4, width), dtype=torch.long), torch.zeros((4, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        x[r, width - len(s):], mask[r, width - len(s):] = torch.tensor(s), 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = KV(students.layers)
        attend = (torch.ones(width, width, dtype=torch.bool).tril() & mask.bool().repeat(3, 1)[:, None, :]) \
            | torch.eye(width, dtype=torch.bool)
        ours = students.logits(students.hidden(x.repeat(3, 1).view(3, 4, width), pos.repeat(3, 1).view(3, 4, width),
                                               attend[:, None], cache))
        step = torch.tensor([[5], [7], [9], [11]])  # one more token, on the KV cache
        ours_next = students.logits(students.hidden(step.repeat(3, 1).view(3, 4, 1), (pos[:, -1:] + 1).repeat(3, 1).view(3, 4, 1),
                                                    torch.cat((mask.bool(), torch.ones(4, 1, dtype=torch.bool)), 1).repeat(3, 1)[:, None, None, :],
                                                    cache))  # the prompt's padding stays masked
    samples = [s for row in generate(students, policy.tokenizer, [prompts.student_messages(p.problem) for p in pool[:6]],
                                     n=2, max_new_tokens=12, keys=[(1, i) for i in range(6)], adapters=[0, 0, 1, 1, 2, 2],
                                     progress=False) for s in row]
    logps, lmask = students.logps([samples[4 * k : 4 * (k + 1)] for k in range(3)])
    for k in range(3):
        _load(policy, students, k)
        with torch.no_grad():
            theirs = policy.model(input_ids=x, attention_mask=mask, position_ids=pos).logits
            full = torch.cat((x, step), 1)
            theirs_next = policy.model(input_ids=full, attention_mask=torch.cat((mask, torch.ones(4, 1, dtype=torch.long)), 1),
                                       position_ids=torch.cat((pos, pos[:, -1:] + 1), 1)).logits[:, -1:]
            ids_, attn, comp = _pad(samples[4 * k : 4 * (k + 1)], policy.tokenizer.pad_token_id, "cpu")
            ref = _logps(policy.model, ids_, attn)
        assert (ours[k] - theirs)[mask.bool()].abs().max() < 1e-4
        assert (ours_next[k] - theirs_next).abs().max() < 1e-4
        for r in range(4):
            assert torch.allclose(logps[k, r][lmask[k, r].bool()], ref[r][comp[r, 1:].bool()], atol=1e-4)
    assert (ours[0] - ours[1]).abs().max() > 0.1, "the students differ"


def test_batched_full_students_are_the_students_trained_one_after_another(world, monkeypatch):
    """K = 3 students (own datasets and seeds), 2 RLOO steps: the same answers at both steps (the second
    sampled after one update), the same rewards, Q_R scores, and weights up to float round-off; a
    student mixed up with another would fail. Two steps, not three: SGD at lr 30 amplifies round-off
    step by step, and on an Intel Xeon the third step's samples flipped a token (on an AMD EPYC they
    did not), while a mixed-up student already shows in the second step's answers and the weights."""
    cfg, policy, pool = world
    # questions this partly trained model half solves, so every step's rewards vary
    easy = [p for p in addition.pool("addition_train") if p.metadata["level"] <= 1]
    datasets, seeds, steps = [easy[16 * k : 16 * (k + 1)] for k in range(3)], [seed_from(7, k) for k in range(3)], 2
    q_r = pool[-32:]

    def sgd(params, *, lr, warmup_steps, total_steps):
        """Plain SGD for both paths: AdamW's first step is lr * sign(g) in every coordinate, so a
        coordinate whose true gradient is 0 moves by +-lr as round-off picks its sign, and the
        comparison would measure AdamW, not the students (AdamW over a stack: the next test)."""
        opt = torch.optim.SGD(list(params.parameters()), lr=30.0)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    monkeypatch.setattr(student_module, "make_optimizer", sgd)
    seen = []
    group_rewards = student_module.group_rewards

    def spy(questions, samples, *, grader):
        seen.append([[s.text for s in row] for row in samples])
        return group_rewards(questions, samples, grader=grader)

    monkeypatch.setattr("soar.student.group_rewards", spy)
    grader = addition.ExactGrader()
    alone, alone_scores = [], []
    for d, s in zip(datasets, seeds):
        alone.append(train_student(policy, d, cfg.student, steps=steps, seed=s, grader=grader, generation=cfg.generation))
        alone_scores.append(q_r_score(policy.model, policy.tokenizer, q_r, cfg, grader=grader))
    alone_seen, seen[:] = seen[:], []
    with train_students(policy, datasets, cfg.student, steps=steps, seeds=seeds, grader=grader,
                        generation=cfg.generation) as (model, names, together):
        scores = q_r_scores(model, policy.tokenizer, q_r, cfg, grader=grader, adapters=names)
    assert isinstance(model, Students) and names == [0, 1, 2]
    # seen: alone student by student, step by step; together step by step, student by student
    assert seen[:3] == alone_seen[::steps], "the first step's answers, sample for sample"
    assert seen == [alone_seen[k * steps + t] for t in range(steps) for k in range(3)]
    assert scores == alone_scores
    for k, (a, b) in enumerate(zip(alone, together)):
        assert [m["student/reward_mean"] for m in a.metrics] == [m["student/reward_mean"] for m in b.metrics]
        assert [m["student/grad_norm"] for m in a.metrics] == pytest.approx([m["student/grad_norm"] for m in b.metrics], rel=1e-3, abs=1e-6)  # SGD at lr 30 amplifies round-off step by step; abs: equal rewards
        assert a.state.keys() == b.state.keys()
        gap = max((a.state[n] - b.state[n]).abs().max().item() for n in a.state)
        for other in (alone[j] for j in range(3) if j != k):  # a mixed-up student is far outside the round-off
            assert gap < 1e-3 * max((other.state[n] - b.state[n]).abs().max().item() for n in a.state)
        policy.load_state(b.state)  # each student's state loads into the HF model


def test_students_that_see_no_reward_spread_do_not_move(world, monkeypatch):
    """Every answer at the format credit (a hard question answered wrongly in the right format): no
    signal, so no step, one at a time or batched. The float32 mean of eight 0.1s is not 0.1, and
    AdamW would turn the ~1e-8 leftover into lr-sized steps (every Hard-Only student drifted so)."""
    cfg, policy, pool = world
    monkeypatch.setattr("soar.grading.student_rewards", lambda texts, golds, **k: [0.1] * len(texts))
    assert cfg.student.samples_per_question == 8  # a group size whose mean of 0.1s rounds off
    grader, datasets, seeds = addition.ExactGrader(), [pool[:16], pool[16:32]], [seed_from(7, k) for k in range(2)]
    with policy.reference() as base:
        start = {n: w.detach().clone() for n, w in base.state_dict().items()}
    alone = train_student(policy, datasets[0], cfg.student, steps=2, seed=seeds[0], grader=grader,
                          generation=cfg.generation)
    assert all(torch.equal(start[n], alone.state[n]) for n in alone.state), "a step with no signal moved the student"
    with train_students(policy, datasets, cfg.student, steps=2, seeds=seeds, grader=grader,
                        generation=cfg.generation) as (model, names, together):
        assert isinstance(model, Students)
    assert all(torch.equal(start[n], run.state[n]) for run in together for n in run.state)


def test_each_student_is_clipped_by_its_own_gradient_norm(world):
    """One student with huge advantages (clipped) beside one with small ones (not clipped): each
    update equals soar.policy.update of that student alone (SGD, so the step is the clipped
    gradient itself; AdamW's first step would hide a gradient's scale), KL term included."""
    cfg, policy, pool = world
    with policy.reference() as base:  # the baseline (policy.model holds whatever was loaded last)
        students, reference = Students(base, 2), Students(base, 2, trainable=False)
    questions = [prompts.student_messages(p.problem) for p in pool[:4]]
    out = generate(students, policy.tokenizer, questions * 2, n=4, max_new_tokens=12, keys=[(3, i) for i in range(8)],
                   adapters=[0] * 4 + [1] * 4, progress=False)
    samples = [[s for row in out[4 * k : 4 * (k + 1)] for s in row] for k in range(2)]
    advantages = [torch.linspace(-1, 1, 16) * 1e-3, torch.linspace(1, -1, 16) * 1e4]
    sgd = torch.optim.SGD(students.parameters(), lr=1e-2)
    stats = students.update(sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: 1.0), samples, advantages,
                            kl_coef=0.05, max_grad_norm=1.0, reference=reference)
    assert stats[0]["grad_norm"] < 1.0 < stats[1]["grad_norm"]
    for k in range(2):
        policy.reset(seed=0)
        opt = torch.optim.SGD(policy.parameters(), lr=1e-2)
        alone = update(policy, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), samples[k], advantages[k],
                       kl_coef=0.05, max_grad_norm=1.0, micro_batch=64)
        assert stats[k]["grad_norm"] == pytest.approx(alone["grad_norm"], rel=1e-4)
        assert stats[k]["loss"] == pytest.approx(alone["loss"], rel=1e-4, abs=1e-7)
        mine, theirs = students.state(k), policy.state()
        assert max((mine[n] - theirs[n]).abs().max().item() for n in theirs) < 1e-6


def test_bf16_students_take_the_fp32_gradient_in_fp32_masters(world):
    """parallel.batch_dtype: bfloat16. On the same answers and advantages, each bf16 student's
    gradient (on its fp32 master: the weights never leave fp32) points where the fp32 student's
    does and its log-probs are the fp32 ones up to bf16 round-off; with .dtype float32 the same
    weights answer exactly as fp32 students do."""
    cfg, policy, pool = world
    with policy.reference() as base:
        fp32, bf16 = Students(base, 2), Students(base, 2, dtype=torch.bfloat16)
    questions = [prompts.student_messages(p.problem) for p in pool[:4]]
    out = generate(fp32, policy.tokenizer, questions * 2, n=4, max_new_tokens=12, keys=[(5, i) for i in range(8)],
                   adapters=[0] * 4 + [1] * 4, progress=False)
    samples = [[s for row in out[4 * k : 4 * (k + 1)] for s in row] for k in range(2)]
    advantages = [torch.linspace(-1, 1, 16), torch.linspace(1, -1, 16)]
    bf16.dtype = torch.float32
    again = generate(bf16, policy.tokenizer, questions * 2, n=4, max_new_tokens=12, keys=[(5, i) for i in range(8)],
                     adapters=[0] * 4 + [1] * 4, progress=False)
    assert [[s.completion_ids for s in row] for row in again] == [[s.completion_ids for s in row] for row in out]
    bf16.dtype = torch.bfloat16
    (exact, mask), (rounded, _) = fp32.logps(samples), bf16.logps(samples)
    assert rounded.dtype == torch.float32 and 0 < (rounded - exact)[mask.bool()].abs().max() < 0.05
    start = torch.cat([w[0].detach().flatten() for w in fp32.parameters()])
    grads = []  # SGD at lr 1: each student's step is minus its gradient
    for students in (fp32, bf16):
        sgd = torch.optim.SGD(students.parameters(), lr=1.0)
        students.update(sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: 1.0), samples, advantages,
                        kl_coef=0.0, max_grad_norm=1e9)
        assert {w.dtype for w in students.parameters()} == {torch.float32}
        grads.append([start - torch.cat([w[k].detach().flatten() for w in students.parameters()]) for k in range(2)])
    for k in range(2):
        cos = torch.nn.functional.cosine_similarity(grads[0][k], grads[1][k], dim=0)
        other = torch.nn.functional.cosine_similarity(grads[0][1 - k], grads[1][k], dim=0)
        assert cos > 0.99 and other < 0.9, (cos, other)  # a mixed-up student would point elsewhere


def test_batched_bf16_students_are_scored_in_fp32(world):
    """train_students with dtype bf16 trains in bf16 and hands out students that answer in fp32."""
    cfg, policy, pool = world
    policy.reset(seed=0)
    with train_students(policy, [pool[:8], pool[8:16]], cfg.student, steps=2, seeds=[1, 2], grader=addition.ExactGrader(),
                        generation=cfg.generation, dtype=torch.bfloat16) as (model, names, runs):
        assert isinstance(model, Students) and model.dtype == torch.float32
    assert all(v.dtype == torch.float32 for run in runs for v in run.state.values())


def test_one_adamw_over_stacked_students_is_one_adamw_per_student():
    """soar.policy.make_optimizer over a Students stack: the same steps as K AdamWs over the slices."""
    torch.manual_seed(0)
    stacked = torch.randn(3, 5, 4, requires_grad=True)
    alone = [stacked[k].detach().clone().requires_grad_(True) for k in range(3)]
    opts = [torch.optim.AdamW([stacked], lr=1e-2, weight_decay=0.0)] + \
           [torch.optim.AdamW([w], lr=1e-2, weight_decay=0.0) for w in alone]
    for _ in range(3):
        g = torch.randn(3, 5, 4) * torch.tensor([1.0, 1e-6, 1e3])[:, None, None]  # very different scales
        stacked.grad = g.clone()
        for k, w in enumerate(alone):
            w.grad = g[k].clone()
        for o in opts:
            o.step()
    for k, w in enumerate(alone):
        assert torch.allclose(stacked[k], w, rtol=0, atol=1e-7)
