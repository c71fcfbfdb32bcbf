"""The teacher and the outer loop (PAPER.md, Method): propose, reward, RLOO, promote.

One outer step (`meta_step`), as in the paper's algorithm box:
  1. propose g*B datasets of n valid question-answer pairs (rejection sampling);
  2. draw Q_R, a fresh sample of D_train, and measure the baseline student on it (greedy);
  3. for every dataset, train r fresh students from the baseline (inner loop) and score them on
     Q_R: the grounded reward is the mean gain over the baseline (or the intrinsic
     learnability reward);
  4. RLOO across the datasets of each group, one policy-gradient step of the teacher on the
     log-probabilities of the pairs of each dataset;
  5. moving average of the mean reward; above tau, promote: the baseline becomes the median
     student of the best dataset, whose questions join the Promotion Questions (PQ) (with
     soar.confirm, only if its gain also holds on the part of D_train Q_R left out).
`SoarRun` owns the state and its atomic checkpoint, so a killed run resumes identically.
Step 3 is the expensive one: its g*B*r inner loops (one job per student, `InnerJob`) go to an
executor (soar.parallel), each worker training its share of the students one after another or,
with parallel.batch_students, several at once on one base (`inner_loops`).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from soar import grading, paths, prompts, rl
from soar.data import Problem, load_problems, sample_problems, seed_from
from soar.metrics import lexical_diversity
from soar.parallel import InProcess, Worker
from soar.policy import make_optimizer, update
from soar.sampling import encode_prompts, generate
from soar.student import evaluate_student, train_student, train_students


def reward_pool(cfg) -> list[Problem]:
    """D_train of a SOAR run: the hard train split of the first pool in fail_at_k.pools (the
    teacher's reward set). Further pools are out of distribution for the teacher, which never
    sees them; their fresh students mix this run's PQ with their own hard train split (the
    paper's OlympiadBench transfer; a HARP-trained teacher is a run with harp first)."""
    return load_problems(paths.hard_split(cfg.fail_at_k.pools[0], "train"))


@dataclass
class Dataset:
    """X_k: n valid pairs and the teacher samples they came from (for the teacher update)."""

    problems: list[Problem]
    samples: list = field(repr=False)


def teacher_prompt(tokenizer, response_prefix: str = "", one_shot: bool = False) -> list[int]:
    """Token ids of the teacher prompt (chat template) followed by the forced start of its reply.
    The prefix is prompt, not action: the policy gradient never touches it."""
    ids = encode_prompts(tokenizer, [prompts.teacher_messages(one_shot)])[0]
    return ids + (tokenizer(response_prefix, add_special_tokens=False)["input_ids"] if response_prefix else [])


def propose_datasets(teacher, count: int, n: int, cfg, generation, *, seed: int, grader,
                     progress: bool = False) -> tuple[list[Dataset], dict]:
    """Sample teacher outputs until `count` datasets of `n` valid pairs exist (rejection
    sampling, capped at max_attempts_factor samples per needed pair). Malformed outputs are
    dropped, never trained on (Proposition 1 keeps the gradient exact on what is kept).
    Returns (datasets, stats) with the rejection rate and the count of each reason.

    cfg: TeacherConfig; generation: GenerationConfig."""
    need, valid, rounds = count * n, [], 0
    reasons = {r: 0 for r in grading.REJECTION_REASONS}
    drawn = 0
    prompt = teacher_prompt(teacher.tokenizer, cfg.response_prefix, cfg.one_shot)
    while len(valid) < need:
        if drawn >= need * cfg.max_attempts_factor:
            raise RuntimeError(f"teacher produced {len(valid)} valid pairs of {need} after {drawn} samples "
                               f"(teacher.max_attempts_factor={cfg.max_attempts_factor}); rejections: {reasons}")
        batch = max(need - len(valid), generation.batch_size)
        samples = generate(teacher.model, teacher.tokenizer, [prompt], n=batch,
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=generation.top_p,
                           stop=("</answer>",), seed=seed_from(seed, rounds), batch_size=generation.batch_size,
                           backend=generation.backend, progress=progress, desc="teacher")[0]
        for s in samples:
            parsed = grading.parse_teacher_output(cfg.response_prefix + s.text, grader=grader)
            if isinstance(parsed, grading.Rejection):
                reasons[parsed.reason] += 1
            elif len(valid) < need:
                pid = f"synthetic/{seed}/{rounds}/{s.sample_index}"
                valid.append((Problem(id=pid, problem=parsed.question, answer=parsed.answer), s))
        drawn += len(samples)
        rounds += 1
    datasets = [Dataset([p for p, _ in valid[k * n : (k + 1) * n]], [s for _, s in valid[k * n : (k + 1) * n]])
                for k in range(count)]
    stats = {"teacher/rejection_rate": sum(reasons.values()) / drawn, "teacher/samples_drawn": drawn,
             **{f"teacher/rejected_{r}": c for r, c in reasons.items()}}
    return datasets, stats


def sample_questions(teacher, count: int, cfg, generation, *, seed: int, grader,
                     progress: bool = True) -> tuple[list[Problem], dict]:
    """`count` valid questions (with the teacher's answers) from any teacher, with the same
    sampling and filter as training (paper: 128 per teacher, for the retraining baselines)."""
    datasets, stats = propose_datasets(teacher, 1, count, cfg, generation, seed=seed, grader=grader,
                                       progress=progress)
    return datasets[0].problems, stats


def intrinsic_reward(student, dataset: Dataset, cfg, generation, *, samples: int, seed: int, grader) -> float:
    """Intrinsic-T's learnability reward: per question s = success rate of the baseline student
    over `samples` answers (against the teacher's answer); r = 0 if s = 0 else 1 - s; mean."""
    with student.reference() as base:
        ev = evaluate_student(base, student.tokenizer, dataset.problems, n_samples=samples, grader=grader,
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed,
                              batch_size=generation.batch_size, backend=generation.backend, progress=False)
    rates = [c / samples for c in ev.counts]
    return sum(0.0 if s == 0 else 1.0 - s for s in rates) / len(rates)


def q_r_score(model, tokenizer, q_r: list[Problem], cfg, *, grader) -> float:
    """The student's greedy score on Q_R: accuracy (paper), or the mean shaped student reward
    when soar.reward_metric is "shaped" (tiny profile: a 135M student is never right on its
    hard split, so accuracy gains are identically zero; README, 'Tiny profile')."""
    return q_r_scores(model, tokenizer, q_r, cfg, grader=grader)[0]


def q_r_scores(model, tokenizer, q_r: list[Problem], cfg, *, grader, adapters=(None,)) -> list[float]:
    """q_r_score of each adapter's student on one base (None: the model as it is), every greedy
    answer in one batch (batched students; adapters: their names, or indexes of a soar.stacked.Students)."""
    mixed = list(adapters) != [None]
    ev = evaluate_student(model, tokenizer, q_r * len(adapters), n_samples=1, grader=grader,
                          max_new_tokens=cfg.student.max_new_tokens, temperature=0.0,
                          batch_size=cfg.generation.batch_size, backend=cfg.generation.backend, progress=False,
                          adapters=[a for a in adapters for _ in q_r] if mixed else None)
    if cfg.soar.reward_metric == "accuracy":
        scores = [float(c[0]) for c in ev.correct]
    else:
        scores = grading.student_rewards([row[0].text for row in ev.samples], [p.answers or p.answer for p in ev.problems],
                                         grader=grader, multiple=[p.multiple for p in ev.problems])
    return [sum(scores[k : k + len(q_r)]) / len(q_r) for k in range(0, len(scores), len(q_r))]


@dataclass(frozen=True)
class InnerJob:
    """One inner loop, as shipped to an executor: the `student`-th of the r students trained on one
    dataset (plain data: problems, not samples). `seed` is the dataset's; the student trains
    with seed_from(seed, student), whichever worker runs it."""

    problems: list[Problem]
    q_r: list[Problem]
    baseline_score: float
    extra_steps: int
    seed: int
    student: int


def inner_loop(worker: Worker, job: InnerJob) -> dict:
    """One student trained from the baseline on the job's dataset (inner loop) and scored greedily
    on Q_R: its gain over the baseline's score, its trained state and its times."""
    cfg, clock = worker.cfg, time.perf_counter()
    run = train_student(worker.student, job.problems, cfg.student, steps=cfg.student.steps + job.extra_steps,
                        seed=seed_from(job.seed, job.student), grader=worker.grader, generation=cfg.generation)
    train_s, clock = time.perf_counter() - clock, time.perf_counter()
    score = q_r_score(worker.student.model, worker.student.tokenizer, job.q_r, cfg, grader=worker.grader)
    return {"gain": score - job.baseline_score, "state": run.state, "train_s": train_s,
            "eval_s": time.perf_counter() - clock}


def inner_loops(worker: Worker, jobs: list[InnerJob]) -> list[dict]:
    """`inner_loop` of several students on one worker: one after another, or
    parallel.batch_students of them at once on the worker's base (soar.student.train_students;
    the same results up to float round-off, in less time where a larger batch is cheaper)."""
    cfg, size = worker.cfg, worker.cfg.parallel.batch_students
    if size <= 1 or not jobs:
        return [inner_loop(worker, job) for job in jobs]
    q_r, steps = jobs[0].q_r, cfg.student.steps + jobs[0].extra_steps
    if any(job.q_r != q_r or job.extra_steps != jobs[0].extra_steps for job in jobs):
        raise ValueError("batched students need the same Q_R and step count for every dataset of a teacher step")
    results = []
    for start in range(0, len(jobs), size):
        chunk, clock = jobs[start : start + size], time.perf_counter()
        with train_students(worker.student, [job.problems for job in chunk], cfg.student, steps=steps,
                            seeds=[seed_from(job.seed, job.student) for job in chunk], grader=worker.grader,
                            generation=cfg.generation, dtype=getattr(torch, cfg.parallel.batch_dtype)) as (model, names, runs):
            train_s, clock = time.perf_counter() - clock, time.perf_counter()
            scores = q_r_scores(model, worker.student.tokenizer, q_r, cfg, grader=worker.grader, adapters=names)
            eval_s = time.perf_counter() - clock
        results += [{"gain": score - job.baseline_score, "state": run.state, "train_s": train_s / len(chunk),
                     "eval_s": eval_s / len(chunk)} for job, score, run in zip(chunk, scores, runs)]  # time shared evenly
    return results


def teacher_reward(students: list[dict]) -> dict:
    """Grounded reward of X_k from its r students (`inner_loop` results): their mean gain on Q_R
    over the baseline. The median student (by gain) is the dataset's promotion candidate."""
    gains = [s["gain"] for s in students]
    median = median_index(gains)
    return {"reward": sum(gains) / len(gains), "gains": gains, "median_state": students[median]["state"],
            "median_gain": gains[median], "train_s": sum(s["train_s"] for s in students),
            "eval_s": sum(s["eval_s"] for s in students)}


def shuffled(rewards: list[float], *, seed: int) -> list[float]:
    """The shuffled-reward control (Shuffled-T): the step's grounded rewards permuted across its
    datasets, a seeded permutation. The teacher takes updates of the same sizes as Grounded-T's,
    with the information of which dataset earned which reward removed; Grounded-T beating it (and
    Base-T) is the evidence that meta-RL, not the update itself, made the questions better."""
    order = list(range(len(rewards)))
    random.Random(seed).shuffle(order)
    return [rewards[i] for i in order]


def median_index(values: list[float]) -> int:
    """Index of the median value (the lower median for an even count; ties by position)."""
    return sorted(range(len(values)), key=lambda j: (values[j], j))[(len(values) - 1) // 2]


def best_index(values: list[float]) -> int:
    """Index of the largest value (the first one on ties)."""
    return max(range(len(values)), key=lambda k: (values[k], -k))


def promotion_due(history: list[float], tau: float, window: int) -> bool:
    """Promote when the moving average of the last `window` step rewards exceeds tau."""
    return len(history) >= window and sum(history[-window:]) / window > tau


@dataclass
class SoarState:
    """Everything a resumed run needs; saved atomically after every outer step.

    promotions[i]["state"] is the promoted student's trained weights (its adapter, or every weight
    under full fine-tuning). Only the latest is kept in fp32 (the masters), which resuming needs:
    the next students start from it exactly. Earlier ones are kept as the model computes with
    them (Policy.compute_weights: bf16 on a GPU, half the bytes), all that the Promoted Student's
    evaluation reads; a full student's merge replaces the base, so replaying them before the
    latest gives the same baseline, and LoRA adapters, which add up, are fp32 either way."""

    step: int = 0
    reward_history: list = field(default_factory=list)  # mean dataset reward of each step (R-hat_t)
    grounded_history: list = field(default_factory=list)  # mean grounded gain (drives promotion)
    promotions: list = field(default_factory=list)  # [{"step", "state" (student weights), "problems"}]
    teacher_state: dict = field(default_factory=dict)
    optimizer_state: dict = field(default_factory=dict)
    scheduler_state: dict = field(default_factory=dict)
    rng: object = None  # torch's global RNG (every sampler is seeded explicitly; this is a guard)
    fingerprint: str = ""


class SoarRun:
    """The meta-RL loop over a teacher Policy and a student Policy sharing no weights."""

    def __init__(self, teacher, student, d_train: list[Problem], cfg, *, grader, checkpoint: Path, fingerprint: str,
                 executor=None):
        self.teacher, self.student, self.d_train, self.cfg, self.grader = teacher, student, d_train, cfg, grader
        self.executor = executor or InProcess()  # runs the inner loops; results never depend on it
        self.checkpoint = Path(checkpoint)
        self.optimizer, self.scheduler = make_optimizer(teacher, lr=cfg.teacher.lr, warmup_steps=cfg.teacher.warmup_steps,
                                                        total_steps=cfg.soar.outer_steps)
        self.state = SoarState(fingerprint=fingerprint)
        if self.checkpoint.exists():
            saved = torch.load(self.checkpoint, weights_only=False)
            if saved.fingerprint == fingerprint:  # a checkpoint of other params is not resumed
                self._restore(saved)

    def _restore(self, saved: SoarState) -> None:
        self.state = saved
        self.teacher.load_state(saved.teacher_state)
        self.optimizer.load_state_dict(saved.optimizer_state)
        self.scheduler.load_state_dict(saved.scheduler_state)
        if saved.rng is not None:
            torch.set_rng_state(saved.rng)
        for p in saved.promotions:  # replay promotions onto the base: the baseline student
            self.student.merge(p["state"])

    def held_out_gain(self, state: dict, problems: list[Problem]) -> float:
        """A promotion candidate's greedy gain over the baseline on `problems` (soar.confirm)."""
        tokenizer, cfg = self.student.tokenizer, self.cfg
        with self.student.reference() as base:
            before = q_r_score(base, tokenizer, problems, cfg, grader=self.grader)
        self.student.load_state(state)  # the next inner loop resets it, whether promoted or not
        return q_r_score(self.student.model, tokenizer, problems, cfg, grader=self.grader) - before

    def promotion_questions(self) -> list[dict]:
        """PQ: the questions of every promoted dataset, with the outer step of its promotion."""
        return [dict(p, promoted_at=pr["step"]) for pr in self.state.promotions for p in pr["problems"]]

    def save(self) -> None:
        s = self.state
        s.teacher_state = self.teacher.state()
        s.optimizer_state, s.scheduler_state = self.optimizer.state_dict(), self.scheduler.state_dict()
        s.rng = torch.get_rng_state()
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_suffix(f".tmp{os.getpid()}")
        torch.save(s, tmp)
        os.replace(tmp, self.checkpoint)  # atomic: a kill leaves the previous step's checkpoint

    def meta_step(self) -> tuple[dict, list[dict]]:
        """One outer step; returns (metrics row, per-dataset sample records)."""
        cfg, sc, t = self.cfg, self.cfg.soar, self.state.step
        seed, times = seed_from(cfg.seed, t), {}
        clock = start = time.perf_counter()
        # 1. propose g*B datasets (the frozen Base-T teacher proposes too, it just never learns)
        n_datasets = sc.group_size * sc.groups_per_step
        datasets, row = propose_datasets(self.teacher, n_datasets, sc.n, cfg.teacher, cfg.generation,
                                         seed=seed_from(seed, 0), grader=self.grader)
        times["time/propose_s"] = time.perf_counter() - clock
        # 2. Q_R: a fresh sample of D_train; the baseline student's greedy score on it
        clock = time.perf_counter()
        q_r = sample_problems(self.d_train, min(sc.q_r, len(self.d_train)), seed=(cfg.seed, t, 1))
        with self.student.reference() as base:
            baseline_score = q_r_score(base, self.student.tokenizer, q_r, cfg, grader=self.grader)
        eval_s = time.perf_counter() - clock
        # 3. inner loops: r students per dataset, rewarded on Q_R
        extra = cfg.student.extra_steps_after_promotion if self.state.promotions else 0
        jobs = [InnerJob(X.problems, q_r, baseline_score, extra, seed_from(seed, 2, k), j)
                for k, X in enumerate(datasets) for j in range(sc.r)]
        size = -(-len(jobs) // self.executor.slots)  # one contiguous share of the g*B*r students per worker
        shares = self.executor.map(inner_loops, [jobs[i : i + size] for i in range(0, len(jobs), size)],
                                   local=Worker(self.student, self.grader, cfg), promotions=self.state.promotions)
        students = [res for share in shares for res in share]
        results = [teacher_reward(students[k * sc.r : (k + 1) * sc.r]) for k in range(n_datasets)]
        grounded = [res["reward"] for res in results]
        clock = time.perf_counter()
        if sc.reward == "intrinsic":
            rewards = [intrinsic_reward(self.student, X, cfg.student, cfg.generation, samples=sc.intrinsic_samples,
                                        seed=seed_from(seed, 3, k), grader=self.grader) for k, X in enumerate(datasets)]
        elif sc.reward == "shuffled":  # the control: the grounded rewards, each given to another dataset
            rewards = shuffled(grounded, seed=seed_from(seed, 4))
        else:
            rewards = grounded
        times["time/inner_loops_s"] = sum(res["train_s"] for res in results)  # summed over students (and workers)
        times["time/reward_eval_s"] = eval_s + sum(res["eval_s"] for res in results) + time.perf_counter() - clock
        # 4. RLOO across the datasets of each group; one teacher step on every pair of X_k
        clock = time.perf_counter()
        R = torch.tensor(rewards).view(sc.groups_per_step, sc.group_size)  # (B, g)
        A = rl.rloo_advantages(R).flatten()  # (B*g,)
        if sc.teacher_mode == "trained":
            pairs = [s for X in datasets for s in X.samples]
            adv = torch.cat([A[k].repeat(len(X.samples)) for k, X in enumerate(datasets)])
            row.update({f"teacher/{k}": v for k, v in update(self.teacher, self.optimizer, self.scheduler, pairs, adv,
                                                             kl_coef=cfg.teacher.kl_coef,
                                                             max_grad_norm=cfg.teacher.max_grad_norm,
                                                             micro_batch=cfg.teacher.micro_batch).items()})
        times["time/teacher_update_s"] = time.perf_counter() - clock
        # 5. moving average and promotion (grounded gain decides, whatever the teacher's reward)
        self.state.reward_history.append(sum(rewards) / len(rewards))
        self.state.grounded_history.append(sum(grounded) / len(grounded))
        promoted = sc.promotion and promotion_due(self.state.grounded_history, sc.tau, sc.window)
        best = best_index(grounded)  # the best dataset; its median student becomes the baseline
        drawn = {q.id for q in q_r}
        held_out = [p for p in self.d_train if p.id not in drawn]
        confirmation = None
        if promoted and sc.confirm and held_out:  # judged on problems that did not pick the winner
            confirmation = self.held_out_gain(results[best]["median_state"], held_out)
            promoted = confirmation > sc.tau
        if promoted:
            self.student.merge(results[best]["median_state"])
            if self.state.promotions:  # superseded: kept as computed (SoarState.promotions)
                last = self.state.promotions[-1]
                last["state"] = self.student.compute_weights(last["state"])
            self.state.promotions.append({"step": t, "state": results[best]["median_state"],
                                          "problems": [p.to_dict() for p in datasets[best].problems]})
            self.state.grounded_history.clear()  # a new baseline starts a new average
        row.update({"step": t, "student/baseline_score": baseline_score,
                    "student/trained_score_mean": baseline_score + sum(grounded) / len(grounded),
                    **{f"teacher/{k}": v for k, v in rl.group_stats(R).items()},
                    "teacher/reward_max": max(rewards), "teacher/grounded_mean": sum(grounded) / len(grounded),
                    "teacher/question_length_mean": sum(len(p.problem) for X in datasets for p in X.problems)
                    / max(1, sum(len(X.problems) for X in datasets)),
                    "teacher/question_diversity": lexical_diversity([p.problem for X in datasets for p in X.problems]),
                    "promotion": promoted, "promotions": len(self.state.promotions),
                    **({"student/confirmation_gain": confirmation} if confirmation is not None else {}), **times,
                    "wall_s": time.perf_counter() - start})  # the step's wall clock (workers run side by side)
        samples = [{"step": t, "dataset": k, "group": k // sc.group_size, "reward": rewards[k], "grounded": grounded[k],
                    "gains": results[k]["gains"], "advantage": float(A[k]),
                    "questions": [p.problem for p in X.problems], "answers": [p.answer for p in X.problems]}
                   for k, X in enumerate(datasets)]
        self.state.step += 1
        return row, samples
