"""The student: evaluation (success counts, fail@k) and the inner RL loop (PAPER.md, Student).

`evaluate_student` samples answers and counts verified ones per problem; the fail@k filter, the
teacher's grounded reward (greedy accuracy on Q_R) and pass@k evaluation all use it, with the
same student prompt. `train_student` is the inner loop: a fresh copy of the baseline student
trained with RLOO on one teacher dataset. `train_students` runs several inner loops at once
(batched students: one LoRA adapter each on one base, their answers sampled in one batch; or,
under full fine-tuning, the slices of one soar.stacked.Students).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from soar import grading, prompts, rl
from soar.data import Problem, seed_from
from soar.policy import make_optimizer, update
from soar.sampling import Sample, generate
from soar.stacked import Students


@dataclass
class Evaluation:
    """Per-problem results of `evaluate_student`: successes out of n samples each."""

    problems: list[Problem]
    samples: list[list[Sample]]
    correct: list[list[bool]]

    @property
    def counts(self) -> list[int]:
        return [sum(c) for c in self.correct]

    @property
    def accuracy(self) -> float:
        """Mean per-sample accuracy (greedy accuracy when n = 1 and temperature 0)."""
        flat = [x for c in self.correct for x in c]
        return sum(flat) / len(flat) if flat else 0.0

    def records(self) -> list[dict]:
        """Per-problem rows for JSONL: id, gold, n, successes, each completion and its verdict."""
        return [
            {"id": p.id, "answer": p.answer, "n": len(s), "successes": sum(c),
             "completions": [x.text for x in s], "correct": c}
            for p, s, c in zip(self.problems, self.samples, self.correct)
        ]


def grade_samples(samples: Sequence[Sequence[Sample]], problems: Sequence[Problem], grader) -> list[list[bool]]:
    """Verdict of every sample against its problem's accepted answers (math-verify, bounded)."""
    jobs = [(grading.extract_answer(s.text, fallback=False), p.answers or p.answer, p.multiple)
            for p, row in zip(problems, samples) for s in row]
    flat = grader.grade_many(jobs)
    out, i = [], 0
    for row in samples:
        out.append(list(flat[i : i + len(row)]))
        i += len(row)
    return out


def evaluate_student(model, tokenizer, problems: Sequence[Problem], *, n_samples: int, grader,
                     max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                     batch_size: int = 32, backend: str = "hf", progress: bool = True,
                     desc: str = "evaluate", adapters=None) -> Evaluation:
    """Sample n answers per problem with the student prompt and count the verified ones.

    temperature 0 gives greedy decoding (then n_samples should be 1). adapters: per problem, the
    LoRA adapter that answers it (batched students; soar.sampling.generate).
    """
    problems = list(problems)
    samples = generate(model, tokenizer, [prompts.student_messages(p.problem) for p in problems],
                       n=n_samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       seed=seed, batch_size=batch_size, backend=backend, progress=progress, desc=desc,
                       adapters=adapters)
    return Evaluation(problems, samples, grade_samples(samples, problems, grader))


def fail_at_k_summary(ev: Evaluation, k: int) -> dict:
    """Counts for the fail@k stage's metrics.json: pool size, hard share, sample accuracy, box rate."""
    texts = [s.text for row in ev.samples for s in row]
    boxed = sum(grading.extract_answer(t, fallback=False) is not None for t in texts)
    hard = sum(c == 0 for c in ev.counts)
    return {"problems": len(ev.problems), "hard": hard, "hard_fraction": hard / max(len(ev.problems), 1),
            "sample_accuracy": ev.accuracy, "boxed_fraction": boxed / max(len(texts), 1),
            "mean_completion_tokens": sum(len(s.completion_ids) for row in ev.samples for s in row) / max(len(texts), 1)}


@dataclass
class StudentRun:
    """Outcome of one inner loop: the trained weights (adapter) and per-step metrics."""

    state: dict
    metrics: list[dict]


def question_schedule(n_questions: int, steps: int, per_step: int, seed: int) -> list[list[int]]:
    """Which questions each inner step uses: passes over seeded permutations of the dataset,
    so every question is seen before any repeats."""
    order: list[int] = []
    epoch = 0
    while len(order) < steps * per_step:
        perm = list(range(n_questions))
        random.Random(seed_from(seed, epoch)).shuffle(perm)
        order += perm
        epoch += 1
    return [order[s * per_step : (s + 1) * per_step] for s in range(steps)]


def rl_step(policy, optimizer, scheduler, questions: Sequence[Problem], cfg, *, samples_per_question: int,
            max_new_tokens: int, seed: int, grader, generation, progress: bool = False, desc: str = "student") -> dict:
    """One RLOO step of a student on a batch of questions (PAPER.md, Student): sample G answers
    per question, shaped reward against each question's answer, leave-one-out advantages, one
    policy-gradient step. Returns the step's reward and update statistics.

    cfg: StudentConfig (kl_coef, temperature, max_grad_norm); generation: GenerationConfig."""
    # 1. sample G answers per question from the current student
    samples = generate(policy.model, policy.tokenizer, [prompts.student_messages(q.problem) for q in questions],
                       n=samples_per_question, max_new_tokens=max_new_tokens, temperature=cfg.temperature,
                       top_p=generation.top_p, seed=seed, batch_size=generation.batch_size,
                       backend=generation.backend, progress=progress, desc=desc)
    return reinforce(policy, optimizer, scheduler, questions, samples, cfg, grader=grader)


def reinforce(policy, optimizer, scheduler, questions: Sequence[Problem], samples: list[list[Sample]], cfg, *,
              grader) -> dict:
    """Steps 2-4 of an RLOO step, on G sampled answers per question (samples[q])."""
    rewards, advantages = group_rewards(questions, samples, grader=grader)
    # 4. one policy-gradient step on all Q*G completions
    stats = update(policy, optimizer, scheduler, [s for row in samples for s in row], advantages.flatten(),
                   kl_coef=cfg.kl_coef, max_grad_norm=cfg.max_grad_norm, micro_batch=cfg.micro_batch)
    return step_stats(rewards, stats)


def group_rewards(questions: Sequence[Problem], samples: list[list[Sample]], *, grader) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-3 of an RLOO step: the shaped reward of every answer against its question's answer,
    and leave-one-out advantages per question. -> (rewards, advantages), each (Q, G)."""
    samples_per_question = len(samples[0])
    flat = grading.student_rewards([s.text for row in samples for s in row],
                                   [q.answers or q.answer for q, row in zip(questions, samples) for _ in row],
                                   grader=grader, multiple=[q.multiple for q, row in zip(questions, samples) for _ in row])
    rewards = torch.tensor(flat).view(len(questions), samples_per_question)  # (Q, G)
    return rewards, rl.rloo_advantages(rewards)


def step_stats(rewards: torch.Tensor, update_stats: dict) -> dict:
    """An RLOO step's metrics row: its rewards' group statistics and its update's."""
    return {**{f"student/{k}": v for k, v in rl.group_stats(rewards).items()},
            **{f"student/{k}": v for k, v in update_stats.items()}}


def train_student(policy, dataset: Sequence[Problem], cfg, *, steps: int, seed: int, grader,
                  generation, progress: bool = False) -> StudentRun:
    """The inner loop (PAPER.md, Student): reset the student to the baseline, then `steps` RLOO
    steps on the teacher's questions, rewarded against the teacher's answers with the shaped
    student reward. The baseline (policy.reference()) never changes.

    cfg: StudentConfig; generation: GenerationConfig.
    """
    policy.reset(seed=seed_from(seed, 0))
    optimizer, scheduler = make_optimizer(policy, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=steps)
    history = []
    for step, batch in enumerate(question_schedule(len(dataset), steps, cfg.questions_per_step, seed)):
        stats = rl_step(policy, optimizer, scheduler, [dataset[i] for i in batch], cfg,
                        samples_per_question=cfg.samples_per_question, max_new_tokens=cfg.max_new_tokens,
                        seed=seed_from(seed, 1, step), grader=grader, generation=generation, progress=progress,
                        desc=f"student step {step}")
        history.append({"step": step, **stats})
    return StudentRun(policy.state(), history)


@contextlib.contextmanager
def train_students(policy, datasets: Sequence[Sequence[Problem]], cfg, *, steps: int, seeds: Sequence[int], grader,
                   generation, dtype: torch.dtype = torch.float32):
    """Batched students: train_student for every (datasets[k], seeds[k]) at once from one baseline.
    Under LoRA each student is its own adapter on the policy's base (policy.students), its answers
    sampled in one mixed-adapter batch, then updated with its own AdamW; under full fine-tuning the
    students are the slices of one soar.stacked.Students (one forward, one backward and one
    elementwise AdamW for all, each clipped by its own gradient norm). Student k draws the samples
    train_student would draw (same seed keys), so its result is train_student's up to float
    round-off from the larger batch. dtype: full students' compute dtype while they train
    (parallel.batch_dtype); they answer in fp32 once trained.

    A context manager: yields (model, names, [StudentRun]); generate(model, ..., adapters=names)
    answers with the trained students (LoRA: they stay on the base until the block ends).
    cfg: StudentConfig; generation: GenerationConfig."""
    per_step = cfg.questions_per_step
    plans = [question_schedule(len(d), steps, per_step, s) for d, s in zip(datasets, seeds)]
    with _batched(policy, seeds, cfg, steps, grader, dtype) as (model, names, learn, state):
        histories: list[list[dict]] = [[] for _ in names]
        for step in range(steps):
            batches = [[d[i] for i in plan[step]] for d, plan in zip(datasets, plans)]
            samples = generate(model, policy.tokenizer,
                               [prompts.student_messages(q.problem) for batch in batches for q in batch],
                               n=cfg.samples_per_question, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_p=generation.top_p, batch_size=generation.batch_size,
                               backend=generation.backend, progress=False,
                               keys=[(seed_from(s, 1, step), i) for s, batch in zip(seeds, batches)
                                     for i in range(len(batch))],
                               adapters=[name for name, batch in zip(names, batches) for _ in batch])
            own = [samples[k * per_step : (k + 1) * per_step] for k in range(len(names))]  # each student's answers
            for history, stats in zip(histories, learn(batches, own)):
                history.append({"step": step, **stats})
        if isinstance(model, Students):
            model.dtype = torch.float32  # scored as the baseline is: a bf16 argmax near a tie would be noise in a gain
        yield model, names, [StudentRun(state(k), history) for k, history in enumerate(histories)]


@contextlib.contextmanager
def _batched(policy, seeds: Sequence[int], cfg, steps: int, grader, dtype: torch.dtype):
    """The students of train_students: yields (model, names, learn, state): generate(model, ...,
    adapters=names) samples them, learn(batches, samples) makes one RLOO step of every student
    (-> its metrics row each), state(k) is student k's trained state."""
    if policy.adapter == "full":
        with policy.reference() as base:  # fresh full copies of the baseline (a full reset draws nothing)
            students = Students(base, len(seeds), dtype=dtype)
            reference = Students(base, len(seeds), trainable=False, dtype=dtype) if cfg.kl_coef else None
        optimizer, scheduler = make_optimizer(students, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=steps)

        def learn(batches, samples):
            scored = [group_rewards(b, s, grader=grader) for b, s in zip(batches, samples)]
            stats = students.update(optimizer, scheduler, [[x for row in s for x in row] for s in samples],
                                    [advantages.flatten() for _, advantages in scored], kl_coef=cfg.kl_coef,
                                    max_grad_norm=cfg.max_grad_norm, reference=reference)
            return [step_stats(rewards, s) for (rewards, _), s in zip(scored, stats)]

        yield students, list(range(len(seeds))), learn, students.state
        return
    with policy.students([seed_from(s, 0) for s in seeds]) as names:
        optimizers = []
        for name in names:
            with policy.training(name):
                optimizers.append(make_optimizer(policy, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=steps))

        def learn(batches, samples):
            out = []
            for name, optimizer, batch, own in zip(names, optimizers, batches, samples):
                with policy.training(name):
                    out.append(reinforce(policy, *optimizer, batch, own, cfg, grader=grader))
            return out

        yield policy.model, names, learn, lambda k: policy.student_state(names[k])
