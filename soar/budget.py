"""What a profile costs: the tokens each stage samples and trains on, counted from the resolved
config (`soar_work`, `retrain_work`, `evaluate_work`), and the hours that takes at given
throughputs (`hours`); `roofline_rates` gives a GPU's ideal throughputs for a model shape.
`benchmarks/project_paper.py` builds the paper-profile projection on it.

Counts are upper bounds where lengths vary: every completion is taken at its token cap, prompts
at a given mean length. Not counted: the teacher's rejected samples and the extra inner steps
after a promotion (both small next to the inner loops), grading, and model loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from soar.retrain import checkpoint_steps, method, window_checkpoints


@dataclass(frozen=True)
class Work:
    """sampled: completion tokens decoded; trained: prompt + completion tokens through a
    policy-gradient update (forward, backward and the reference model's forward)."""

    sampled: float = 0.0
    trained: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.sampled + other.sampled, self.trained + other.trained)

    def __mul__(self, k: float) -> Work:
        return Work(self.sampled * k, self.trained * k)


def rl_steps(steps: int, sequences_per_step: int, max_new_tokens: int, prompt: float) -> Work:
    """`steps` RLOO steps of `sequences_per_step` completions each."""
    seqs = steps * sequences_per_step
    return Work(seqs * max_new_tokens, seqs * (prompt + max_new_tokens))


def soar_work(cfg, *, prompt: float, teacher_prompt: float) -> Work:
    """One SOAR run (cfg resolved for its variant): per outer step, g*B datasets of n teacher
    questions (sampled, then trained on), the baseline's greedy Q_R answers, and per dataset r
    inner loops each scored on Q_R; the intrinsic variant also samples intrinsic_samples answers
    per question for its reward. Its inner loops still run: the grounded gain decides its
    promotions (soar.teacher.SoarRun.meta_step)."""
    sc, st, tc = cfg.soar, cfg.student, cfg.teacher
    datasets = sc.groups_per_step * sc.group_size
    step = rl_steps(1, datasets * sc.n, tc.max_new_tokens, teacher_prompt)  # teacher: propose, then update
    step += Work(sc.q_r * st.max_new_tokens)  # baseline score on Q_R
    inner = rl_steps(st.steps, st.questions_per_step * st.samples_per_question, st.max_new_tokens, prompt)
    step += (inner + Work(sc.q_r * st.max_new_tokens)) * (datasets * sc.r)
    if sc.reward == "intrinsic":
        step += Work(datasets * sc.n * sc.intrinsic_samples * st.max_new_tokens)
    return step * sc.outer_steps


def retrain_work(cfg, *, prompt: float) -> Work:
    """Every fresh student of the retrain stage: pools x methods x seeds RLOO runs."""
    rc, total = cfg.retrain, Work()
    for name in rc.methods:
        per_step = rc.questions_per_step * rc.samples_per_question * method(name).group_factor
        total += rl_steps(rc.steps, per_step, rc.max_new_tokens, prompt)
    return total * (len(cfg.fail_at_k.pools) * len(rc.seeds))


def evaluated_checkpoints(cfg) -> int:
    """Checkpoints a fresh student's test score averages: those of the window after a chosen
    step in the middle of the run (the rule picks it from the rewards; the count differs only
    near the end of a run)."""
    rc = cfg.retrain
    saved = checkpoint_steps(rc.steps, rc.eval_every)
    return len(window_checkpoints(saved, saved[len(saved) // 2], rc.window))


def evaluate_work(cfg, test_problems: Mapping[str, int]) -> Work:
    """The evaluate stage: on every benchmark, n_samples answers per test problem from the base
    model and the PS (one checkpoint each) and every fresh student (its window's checkpoints),
    once per seed. test_problems: {benchmark: problem count}."""
    ec, rc = cfg.evaluate, cfg.retrain
    models = 2 + len(rc.methods) * evaluated_checkpoints(cfg)
    return Work(sum(test_problems.values()) * ec.n_samples * ec.max_new_tokens * models * len(rc.seeds))


@dataclass(frozen=True)
class Shape:
    """What throughput depends on: parameters, KV-cache bytes per token, bytes per weight."""

    params: float
    kv_bytes_per_token: float
    bytes_per_param: int = 2


@dataclass(frozen=True)
class Hardware:
    """Peak dense matmul FLOP/s and memory bandwidth (bytes/s) of one accelerator."""

    name: str
    flops: float
    bandwidth: float


def roofline_rates(shape: Shape, hw: Hardware, *, batch: int, context: float, full: bool,
                   kl: bool = True) -> tuple[float, float]:
    """(sampled tokens/s, trained tokens/s) of one accelerator at its roofline.

    Decoding is memory-bound: each step of `batch` rows reads every weight once and each row's
    KV cache (`context` tokens on average). Training is compute-bound: per token 2N FLOPs
    forward, 4N backward with weight gradients (full fine-tuning) or 2N without (LoRA: only
    activation gradients reach the base), and 2N for the reference forward of the KL term."""
    step_bytes = shape.params * shape.bytes_per_param + batch * context * shape.kv_bytes_per_token
    flops_per_token = shape.params * (2 + (4 if full else 2) + (2 if kl else 0))
    return batch * hw.bandwidth / step_bytes, hw.flops / flops_per_token


def hours(work: Work, *, sampled_per_s: float, trained_per_s: float) -> float:
    """Hours of one device (or device-hours) for `work` at the given throughputs."""
    return (work.sampled / sampled_per_s + work.trained / trained_per_s) / 3600
