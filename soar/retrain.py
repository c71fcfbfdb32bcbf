"""Fresh students (PAPER.md, "Data and evaluation protocol"): what each method trains on, in
which order, and which checkpoint counts.

Every method is a fresh student trained from the base model with RLOO (`soar.student.rl_step`),
with the same optimizer, step budget and seeds; methods differ only in their data:
  - `pq-*`: the Promotion Questions of the grounded SOAR run;
  - `grounded_t-*`, `base_t-*`, `intrinsic_t-*`: N questions sampled from a teacher (the final
    teacher of the grounded, intrinsic SOAR run; the untrained one); `grounded_t_no_promotion-*`:
    the final teacher of the no_promotion SOAR run (the paper's "Grounded-T without promotion");
  - `hard_only`: the hard train split alone (`hard_only-g128`: 4x the group, the compute control);
  - `oracle`: the official train set of the pool's benchmark (MATH train for MATH) plus the hard
    train split; `oracle-128`: N random questions of that train set instead (the paper's 128).
and in their schedule: *curriculum* (the first `synthetic_steps` on the synthetic questions, then
the hard train split) or *mixed* (one shuffled mixture of both). Warmup is 20 steps (paper) for
every method but the PQ curriculum, which has none (PAPER.md Table 3).
The checkpoint rule (`select_checkpoint`, on the hard-set part of the reward curve) is the one
for every method; OlympiadBench students are read at step 50 instead (`READ_AT`). A run keeps
only the checkpoints evaluation reads (its window), each as the model computes with it
(`train_fresh_student`); `disk_use` states what a profile's runs leave on disk.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from soar import config, data, grading, parallel, paths, tracking, worlds
from soar.data import Problem, seed_from
from soar.models import pick_dtype
from soar.policy import load_policy, make_optimizer
from soar.evaluation import BASE, PS
from soar.student import evaluate_student, question_schedule, rl_step
from soar.teacher import sample_questions


@dataclass(frozen=True)
class Method:
    """data: where the non-hard questions come from (None: hard train split only);
    schedule: curriculum | mixed | hard; group_factor: multiple of the RLOO group; warmup: False
    for no warmup steps (the PQ curriculum); sample: train on a seeded sample of N
    (retrain.questions) of the data's questions instead of all of them."""

    data: str | None
    schedule: str
    group_factor: int = 1
    warmup: bool = True
    sample: bool = False


# data -> the SOAR variant whose final teacher samples the N questions (None: the untrained teacher)
TEACHERS = {"grounded_t": "grounded", "intrinsic_t": "intrinsic", "base_t": None,
            "grounded_t_no_promotion": "no_promotion", "shuffled_t": "shuffled"}
METHODS = {
    **{f"{d}-{s}": Method(d, s) for d in ("pq", *TEACHERS) for s in ("curriculum", "mixed")},
    "pq-curriculum": Method("pq", "curriculum", warmup=False),  # Table 3: 0 only for curriculum-PQ
    "hard_only": Method(None, "hard"),
    "hard_only-g128": Method(None, "hard", group_factor=4),
    "oracle": Method("oracle", "mixed"),
    "oracle-128": Method("oracle", "mixed", sample=True),
}
# PAPER.md: OlympiadBench students are read at a fixed step (50), not by the checkpoint rule.
READ_AT = {"olympiadbench": 50}
# PAPER.md: curriculum on MATH, mixed on HARP and OlympiadBench; a curriculum method's students of
# these pools train on the mixture (a curriculum would reach step 50 before any hard question).
MIXED_POOLS = ("olympiadbench", "harp")


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown retrain method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def run_config(name: str, cfg, *, pool: str | None = None) -> dict:
    """Everything that defines one fresh-student run besides its seed: the method's data and
    schedule (mixed for every method with synthetic data on a MIXED_POOLS pool), and the
    optimizer and budget shared by every method."""
    m, rc, sc = method(name), cfg.retrain, cfg.student
    schedule = "mixed" if pool in MIXED_POOLS and m.schedule == "curriculum" else m.schedule
    return {"method": name, "data": m.data, "schedule": schedule,
            "samples_per_question": rc.samples_per_question * m.group_factor,
            "warmup_steps": rc.warmup_steps if m.warmup else 0,
            "steps": rc.steps, "synthetic_steps": rc.synthetic_steps if schedule == "curriculum" else 0,
            "questions_per_step": rc.questions_per_step, "max_new_tokens": rc.max_new_tokens,
            "lr": sc.lr, "kl_coef": sc.kl_coef, "adapter": sc.adapter, "lora_r": sc.lora_r,
            "lora_alpha": sc.lora_alpha, "temperature": sc.temperature, "max_grad_norm": sc.max_grad_norm,
            "eval_every": rc.eval_every, "model": cfg.model.name}


def schedule(synthetic: Sequence[Problem], hard: Sequence[Problem], run: dict, *, seed: int) -> list[list[Problem]]:
    """The questions of each training step of one run.

    curriculum: `synthetic_steps` steps over the synthetic questions, then the hard train split;
    mixed: every step drawn from one shuffled mixture; hard: the hard train split only.
    Within a source, passes over seeded permutations (every question once before any repeats).
    A SOAR run that never promoted has no PQ: its PQ students train on the hard split alone (what
    the run gave them), not a crash; their logged synthetic share is 0."""
    steps, per_step = run["steps"], run["questions_per_step"]

    def batches(pool: Sequence[Problem], n_steps: int, salt: int) -> list[list[Problem]]:
        if n_steps and not pool:
            raise ValueError(f"method {run['method']!r} needs questions it does not have")
        return [[pool[i] for i in b] for b in question_schedule(len(pool), n_steps, per_step, seed_from(seed, salt))]

    if not synthetic and run["data"] == "pq":
        return batches(hard, steps, 1)
    if run["schedule"] == "curriculum":
        first = min(run["synthetic_steps"], steps)
        return batches(synthetic, first, 0) + batches(hard, steps - first, 1)
    if run["schedule"] == "mixed":
        return batches(list(synthetic) + list(hard), steps, 2)
    if run["schedule"] == "hard":
        return batches(hard, steps, 1)
    raise ValueError(f"unknown schedule {run['schedule']!r}")


def checkpoint_steps(steps: int, every: int) -> list[int]:
    """Steps after which a checkpoint is saved: every `every` steps and the last one."""
    return sorted({s for s in range(every, steps + 1, every)} | {steps})


def checkpoint_file(checkpoints: Path, step: int) -> Path:
    """A fresh student's checkpoint after `step`, in its run's checkpoint directory."""
    return Path(checkpoints) / f"step_{step:06d}.pt"


def keep_checkpoints(checkpoints: Path, steps: Sequence[int]) -> None:
    """Delete a run's checkpoints but those after `steps` (its window: all that evaluation reads)."""
    keep = {checkpoint_file(checkpoints, s) for s in steps}
    for f in Path(checkpoints).glob("step_*.pt"):
        if f not in keep:
            f.unlink()


def centred_average(values: Sequence[float], smoothing: int) -> np.ndarray:
    """Centred moving average: each step's value is the mean over the `smoothing // 2` steps on
    either side of it and itself (fewer at the ends of the curve, where the window is cut). Unlike
    a trailing average it does not lag, so a plateau is found where it starts."""
    v = np.asarray(values, dtype=np.float64)
    half, idx = max(0, smoothing // 2), np.arange(v.size)
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, v.size)
    total = np.concatenate([[0.0], np.cumsum(v)])
    return (total[hi] - total[lo]) / (hi - lo)


def select_checkpoint(rewards: Sequence[float], *, smoothing: int, fraction: float, synthetic_steps: int = 0) -> int:
    """The paper's checkpoint rule, one for every method. A pure function of the per-step
    training reward of one run (`rewards[0]` is step 1).

    Only the hard-set part of the curve counts: a curriculum run's first `synthetic_steps` train
    on the synthetic questions, whose reward ends in a cliff at the switch to the hard set; read
    whole, the rule would stop there. On that part: smooth the reward (`centred_average`), take
    its slope, and return the step where the plateau starts: the first step, from the steepest
    rise on, whose slope is below `fraction` of the steepest. The slope at a step is the smoothed
    reward's rise over the next `smoothing` steps, per step: a step-to-step difference of a
    noisy RL reward is mostly noise (even smoothed), and would end the rise at its first dip.
    Steps are counted over the whole run. A curve that never rises (max slope <= 0) or never
    flattens, or a run too short to have a slope on the hard set, gives the last step."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        raise ValueError("select_checkpoint needs at least one step")
    smooth = centred_average(r[synthetic_steps:], smoothing)
    span = max(1, min(smoothing, smooth.size - 1))
    slope = (smooth[span:] - smooth[:-span]) / span  # slope[i]: from hard step i+1 to i+1+span
    if slope.size == 0 or slope.max() <= 0:
        return int(r.size)
    peak = int(slope.argmax())
    for i in range(peak, slope.size):
        if slope[i] < fraction * slope[peak]:
            return int(synthetic_steps + i + 1)  # flat from hard step i+1 on
    return int(r.size)


def died(rewards: Sequence[float], *, synthetic_steps: int = 0, smoothing: int = 3, tail: int = 5) -> bool:
    """A run that learned and then collapsed: in one phase of its schedule (a curriculum's
    synthetic steps, then its hard steps; one phase otherwise), its smoothed training reward once
    rose 0.1 above the format credit (it answered some questions right) and its last `tail` steps
    average no more than that credit + 0.02 (it answers nothing right any more, only in the box's
    format). Phases are judged apart because their questions differ: a curriculum student right on
    easy synthetic questions and never on the hard ones did not die, it never lived on the hard
    ones (as Hard-Only on problems it never solves). Counted per method beside the main table,
    never averaged away."""
    floor = grading.REWARD_BOXED

    def collapsed(r: np.ndarray) -> bool:
        return r.size > tail and bool(centred_average(r, smoothing).max() > floor + 0.1
                                      and r[-tail:].mean() <= floor + 0.02)

    r = np.asarray(rewards, dtype=np.float64)
    return collapsed(r[:synthetic_steps]) or collapsed(r[synthetic_steps:])


def window_checkpoints(saved: Sequence[int], chosen: int, window: int) -> list[int]:
    """The saved checkpoints whose test scores are averaged: those in the `window` steps from the
    chosen step on (chosen <= s < chosen + window; paper: a 200-step window after the chosen
    checkpoint), or else the first one saved at or after it (the last one when none is)."""
    inside = [s for s in saved if chosen <= s < chosen + window]
    later = [s for s in saved if s >= chosen]
    return inside or [later[0] if later else max(saved)]


def choose_checkpoints(rewards: Sequence[float], saved: Sequence[int], run: dict, rc, *,
                       pool: str | None = None) -> tuple[int, list[int]]:
    """(chosen step, the saved checkpoints whose test scores are averaged) of one run: the
    checkpoint rule on its hard-set part and the window after it; with retrain.read_at, that step
    and the window after it, for every method alike; for a pool in READ_AT, the checkpoint at
    that step (the nearest saved one to it, capped at the run's length)."""
    if pool in READ_AT:
        step = min(READ_AT[pool], len(rewards))
        return step, [min(saved, key=lambda s: (abs(s - step), s))]
    if rc.read_at is not None:
        step = min(rc.read_at, len(rewards))
        return step, window_checkpoints(saved, step, rc.window)
    chosen = select_checkpoint(rewards, smoothing=rc.smoothing, fraction=rc.slope_fraction,
                               synthetic_steps=run["synthetic_steps"])
    return chosen, window_checkpoints(saved, chosen, rc.window)


def kept_checkpoints(cfg, pool: str) -> int:
    """Checkpoints a fresh student of `pool` keeps (its window: what evaluation reads): one for a
    READ_AT pool, else the window after a step in the middle of the run (the rule picks it from
    the rewards; the count differs only near the end of a run)."""
    rc = cfg.retrain
    saved = checkpoint_steps(rc.steps, rc.eval_every)
    middle = rc.read_at if rc.read_at is not None else saved[len(saved) // 2]
    return 1 if pool in READ_AT else len(window_checkpoints(saved, middle, rc.window))


def disk_use(cfg, *, params: float, promotions: int = 4) -> dict[str, float]:
    """Bytes that a profile's runs (cfg resolved) leave on disk under full fine-tuning (the
    paper's; a LoRA checkpoint is an adapter, megabytes), for a model of `params` weights whose
    compute dtype is model.dtype's on a GPU (auto: bf16):
    - checkpoint: one fresh-student checkpoint, every weight in the compute dtype;
    - retrain: the checkpoints every fresh student keeps (pools x methods x seeds, `kept_checkpoints`);
    - retrain_run_peak: besides, those a run in progress saves before choosing its window;
    - soar_state: one SOAR run's state with `promotions` promotions (PAPER.md: at most 4 were
      seen): the teacher's fp32 masters and AdamW's two fp32 moments (12 bytes a weight), the
      latest promotion's fp32 masters and the earlier ones in the compute dtype. A save writes
      the next state beside it before replacing it;
    - soar: every SOAR run's (runs.variants x runs.seeds and the sweep's cells), each with
      `promotions` (an upper bound: the no_promotion runs hold none);
    - total: retrain + soar."""
    if (cfg.student.adapter, cfg.teacher.adapter) != ("full", "full"):
        raise ValueError("disk_use counts full fine-tuning (the paper's); a LoRA checkpoint is an adapter, megabytes")
    rc, weight = cfg.retrain, pick_dtype(cfg.model.dtype, torch.device("cuda")).itemsize
    checkpoint = params * weight
    kept = sum(kept_checkpoints(cfg, pool) for pool in cfg.fail_at_k.pools) * len(rc.methods) * len(rc.seeds)
    latest, earlier = (4, promotions - 1) if promotions else (0, 0)
    state = params * (12 + latest + weight * earlier)
    runs = len(cfg.runs.variants) * len(cfg.runs.seeds) + len(cfg.sweep.taus) * len(cfg.sweep.ns)
    use = {"checkpoint": checkpoint, "retrain": kept * checkpoint,
           "retrain_run_peak": len(checkpoint_steps(rc.steps, rc.eval_every)) * checkpoint,
           "soar_state": state, "soar": runs * state}
    return use | {"total": use["retrain"] + use["soar"]}


def oracle_questions(hard_train: Sequence[Problem], official: Sequence[Problem], n: int | None,
                     *, seed: int) -> list[Problem]:
    """The Oracle's real questions: the official train set (or a seeded sample of n of them, the
    paper's 128-random-questions variant), excluding anything in the hard split."""
    held = {p.problem for p in hard_train}
    real = [p for p in official if p.problem not in held]
    if n is not None and n < len(real):
        real = random.Random(seed).sample(real, n)
    return real


def run_fingerprint(run: dict, seed: int, questions: Sequence[Problem], *, stage: str = "retrain") -> str:
    """Hash of a run's config, seed, training questions and the code of the stage that makes it
    (config.code_digest): a finished run with the same fingerprint is not trained (or evaluated)
    again."""
    import hashlib
    import json

    blob = json.dumps({"run": run, "seed": seed, "questions": [[q.id, q.problem, q.answer] for q in questions],
                       "code": config.code_digest(stage)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def weights_digest(states: Sequence[dict[str, torch.Tensor]]) -> str:
    """Hash of the tensors of some states (adapters or weights), by name and value: what an
    evaluation is of, so that samples are reused only for the same weights, however made."""
    import hashlib

    h = hashlib.sha256()
    for state in states:
        for name in sorted(state):
            t = state[name].detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def train_fresh_student(policy, synthetic: Sequence[Problem], hard: Sequence[Problem], run: dict, cfg, *,
                        seed: int, out, checkpoints, grader, progress: bool = True, pool: str | None = None) -> dict:
    """Train one fresh student from the base model on the method's schedule; log every step
    (with the ids of its questions, so the schedule can be read back) to out/metrics.jsonl, save
    the student at checkpoint_steps to checkpoints/step_XXXXXX.pt, choose the checkpoint
    (`choose_checkpoints`; pool: the hard set's pool, for READ_AT), and keep only the chosen
    window's checkpoints. A checkpoint is what evaluation loads: the student's trained weights as
    the model computes with them (Policy.compute_weights: its adapter, or every weight in bf16 on
    a GPU, half the fp32 masters; a run is never resumed mid-way, so nothing else is needed).
    A finished run with the same fingerprint is not trained again if the checkpoints of its
    choice are here: the choice is made anew from its logged rewards (the rule and its knobs may
    have changed) and out/metrics.json rewritten only if it changed; a choice that moved onto
    dropped checkpoints trains the run again (the same seeds: the same student).

    cfg: Config (student: KL, temperature, clipping; generation; retrain: the rule)."""
    plan = schedule(synthetic, hard, run, seed=seed)
    fp = run_fingerprint(run, seed, [q for b in plan for q in b])
    done, rc = out / "metrics.json", cfg.retrain
    phase = run["synthetic_steps"] if synthetic else 0  # `died`'s hard phase (a PQ run without PQ: one phase)
    if done.exists() and (old := data.read_json(done)).get("fingerprint") == fp:  # finished before
        rewards = [row["student/reward_mean"] for row in tracking.read_log(out / "metrics.jsonl")]
        chosen, window = choose_checkpoints(rewards, old["saved"], run, rc, pool=pool)
        if all(checkpoint_file(checkpoints, s).exists() for s in window):  # still here (not in git): skip
            dead = died(rewards, synthetic_steps=phase)
            if (old["chosen_step"], old["eval_checkpoints"], old.get("died")) != (chosen, window, dead):
                old = dict(old, chosen_step=chosen, eval_checkpoints=window, died=dead)
                data.write_json(done, old)
            keep_checkpoints(checkpoints, window)  # those of an earlier choice, or of a killed cleanup
            return old
    synthetic_ids, start = {q.id for q in synthetic}, time.perf_counter()
    policy.reset(seed=seed_from(seed, 0))
    optimizer, scheduler = make_optimizer(policy, lr=run["lr"], warmup_steps=run["warmup_steps"],
                                          total_steps=run["steps"])
    saved = checkpoint_steps(run["steps"], run["eval_every"])
    log = tracking.resume_records(out, 0)  # a run is redone whole (runs are short; see README)
    rewards = []
    for step, questions in enumerate(tqdm(plan, desc=f"{run['method']} seed {seed}", disable=not progress), 1):
        stats = rl_step(policy, optimizer, scheduler, questions, cfg.student,
                        samples_per_question=run["samples_per_question"], max_new_tokens=run["max_new_tokens"],
                        seed=seed_from(seed, 1, step), grader=grader, generation=cfg.generation)
        rewards.append(stats["student/reward_mean"])
        log.log({"step": step, "ids": [q.id for q in questions],
                 "synthetic": sum(q.id in synthetic_ids for q in questions), **stats})
        if step in saved:
            checkpoints.mkdir(parents=True, exist_ok=True)
            torch.save(policy.compute_weights(policy.state()), checkpoint_file(checkpoints, step))
    chosen, window = choose_checkpoints(rewards, saved, run, rc, pool=pool)
    result = {"fingerprint": fp, "method": run["method"], "rng_seed": seed, "steps": len(rewards),
              "saved": saved, "chosen_step": chosen, "eval_checkpoints": window,
              "reward_mean": float(np.mean(rewards)), "reward_last": rewards[-1],
              "died": died(rewards, synthetic_steps=phase), "run": run,
              "wall_s": time.perf_counter() - start}
    data.write_json(done, result)  # last, atomically: its presence means the run is complete
    keep_checkpoints(checkpoints, window)
    return result


def cached_questions(path, fp: str, make) -> list[Problem]:
    """Questions at `path` if they were made with fingerprint `fp` (kept beside, in .fp), else
    `make()` written there: a rerun of the stage does not sample a teacher again."""
    path, tag = Path(path), Path(path).with_suffix(".fp")
    if path.exists() and tag.exists() and tag.read_text() == fp:
        return data.load_problems(path)
    problems = make()
    data.write_jsonl(path, problems)
    tag.write_text(fp)
    return problems


def soar_files(variant: str, seed: int) -> tuple[Path, Path]:
    """(results dir, state checkpoint) of a SOAR run, with a clear error when it has not run."""
    name = paths.soar_run(variant, seed)
    out, state = paths.stage_dir("soar", name), paths.run_checkpoint("soar", name) / "state.pt"
    if not (out / "metrics.json").exists() or not state.exists():
        raise FileNotFoundError(f"SOAR run {name} has not run (no {out / 'metrics.json'} or {state}); add "
                                f"{variant!r} to runs.variants and {seed} to runs.seeds in params.yaml, or drop "
                                "the methods that need it from retrain.methods")
    return out, state


def soar_seeds(cfg) -> dict[int, int]:
    """{fresh-student seed: the seed of the SOAR runs whose PQ, teachers and Promoted Student it
    learns from}: retrain.soar_seed for every seed, or with null the SOAR seeds in turn (the i-th
    fresh seed learns from runs.seeds[i mod n]: PAPER.md's nested seeds, so that a CI over fresh
    seeds also covers the variance between SOAR runs)."""
    rc, runs = cfg.retrain, cfg.runs.seeds
    return {s: rc.soar_seed if rc.soar_seed is not None else runs[i % len(runs)] for i, s in enumerate(rc.seeds)}


def load_sources(cfg, *, grader) -> dict[int, dict[str, list[Problem]]]:
    """{SOAR seed: the non-hard questions each method needs (only those of cfg.retrain.methods)}
    for each SOAR seed the fresh students learn from (`soar_seeds`): PQ of that seed's grounded
    run and N questions of each teacher: the final teacher of its SOAR variant's run (TEACHERS;
    no_promotion for Grounded-T without promotion), or the untrained one for Base-T (one sample,
    shared by every seed: there is one base teacher). The Oracle's real questions come with each
    pool (`hard_and_oracle`)."""
    rc, needed = cfg.retrain, {method(m).data for m in cfg.retrain.methods} - {None}
    sources: dict[int, dict[str, list[Problem]]] = {}
    base_t: list[Problem] | None = None
    for soar_seed in sorted(set(soar_seeds(cfg).values())):
        own = sources[soar_seed] = {}
        if "pq" in needed:
            out, _ = soar_files("grounded", soar_seed)
            own["pq"] = [Problem.from_dict(r) for r in data.read_jsonl(out / "pq.jsonl")]
        for name in needed & set(TEACHERS):
            variant = TEACHERS[name]
            if variant is not None:
                out, _ = soar_files(variant, soar_seed)
                own[name] = data.load_problems(out / "questions.jsonl")
                continue
            if base_t is None:
                teacher_fp = config.fingerprint(cfg) + f"/{rc.questions}"
                base_t = cached_questions(
                    paths.stage_dir("retrain") / "questions" / "base_t.jsonl", teacher_fp,
                    lambda: sample_questions(load_policy(cfg.model, cfg.teacher), rc.questions, cfg.teacher,
                                             cfg.generation, seed=seed_from(cfg.seed, 5), grader=grader)[0])
            own[name] = base_t
    return sources


def hard_and_oracle(cfg, pool: str) -> tuple[list[Problem], list[Problem]]:
    """(D_train of a pool, its Oracle questions: the pool's official train set minus D_train)."""
    hard = data.load_problems(paths.hard_split(pool, "train"))
    official = worlds.of(cfg).oracle_pool(pool)
    if official is None:  # no official training set (HARP)
        return hard, []
    return hard, oracle_questions(hard, official, None, seed=cfg.seed)


def train_all(cfg, student, sources: dict[int, dict[str, list[Problem]]], *, grader, executor=None) -> list[dict]:
    """Every fresh student: pools x methods x seeds, on `executor`'s workers (soar.parallel; by
    default one after another on `student`, each run resetting it to the base), seed s learning
    from the SOAR runs of seed soar_seeds(cfg)[s] (`load_sources`). Finished runs are skipped
    (see train_fresh_student)."""
    rc, jobs, pairs = cfg.retrain, [], soar_seeds(cfg)
    for pool in cfg.fail_at_k.pools:
        hard, oracle = hard_and_oracle(cfg, pool)
        for name in rc.methods:
            run = run_config(name, cfg, pool=pool)
            for seed in rc.seeds:
                synthetic = oracle if run["data"] == "oracle" else sources[pairs[seed]].get(run["data"], [])
                if method(name).sample:  # oracle-128: N random real questions, the same for every seed
                    synthetic = oracle_questions(hard, synthetic, rc.questions, seed=seed_from(cfg.seed, 12))
                jobs.append((pool, name, seed, pairs[seed], run, synthetic, hard))
    executor = executor or parallel.InProcess()
    return executor.map(_fresh_student, jobs, local=parallel.Worker(student, grader, cfg), desc="fresh students")


def _fresh_student(worker: parallel.Worker, job: tuple) -> dict:
    """One fresh student of train_all, on a worker's student and grader."""
    pool, name, seed, soar_seed, run, synthetic, hard = job
    where = paths.retrain_run(pool, name, seed)
    res = train_fresh_student(worker.student, synthetic, hard, run, worker.cfg, seed=seed_from(worker.cfg.seed, seed),
                              out=paths.stage_dir("retrain", where), pool=pool, grader=worker.grader, progress=False,
                              checkpoints=paths.run_checkpoint("retrain", where))
    return {"pool": pool, "seed": seed, "soar_seed": soar_seed, **res}


def tested_pool(cfg, benchmark: str) -> str:
    """The pool whose fresh students a benchmark tests: its own pool's hard test split, or for an
    `evaluate.extra` benchmark the first pool's."""
    pools = cfg.fail_at_k.pools
    return benchmark if benchmark in pools else pools[0]


def test_sets(cfg) -> dict[str, tuple[str, list[Problem]]]:
    """{benchmark: (pool whose students it tests, problems)}: each pool's hard test split, and
    the `evaluate.extra` benchmarks whole (tested with the first pool's students); `limit`
    draws a seeded sample of each."""
    ec, pools = cfg.evaluate, cfg.fail_at_k.pools
    sets = {pool: (tested_pool(cfg, pool), data.load_problems(paths.hard_split(pool, "test"))) for pool in pools}
    sets |= {name: (tested_pool(cfg, name), data.load_benchmark(name)) for name in ec.extra}
    if ec.limit is not None:
        sets = {b: (pool, data.sample_problems(ps, min(ec.limit, len(ps)), seed=(cfg.seed, 11)))
                for b, (pool, ps) in sets.items()}
    return sets


def evaluate_all(cfg, student, promoted: dict[int, PromotedStudent], *,
                 grader) -> dict[str, dict[str, dict[int, list[dict]]]]:
    """Sample evaluate.n_samples answers per test problem from every model of the main table:
    the base model and the Promoted Student once per seed (seed s: `promoted`[soar_seeds(cfg)[s]],
    the PS of the SOAR run it is paired with; `promoted_students`), and every fresh student at the
    checkpoints of its window. Writes paths.eval_samples files (skipped when already written with
    the same fingerprint) and returns {benchmark: {model: {seed: records}}}."""
    ec, rc, out, pairs = cfg.evaluate, cfg.retrain, {}, soar_seeds(cfg)
    settings = {k: v for k, v in config.to_dict(ec).items() if k != "n_boot"} | {"model": cfg.model.name}
    # what each model is, by its weights: the PS's promotions, a fresh student's checkpoints
    digests: dict[Path, str] = {}  # each checkpoint read once, one at a time (paper size: GBs each)

    def weights_of(ckpts: list[Path]) -> str:
        for c in ckpts:
            if c not in digests:
                digests[c] = weights_digest([torch.load(c, map_location="cpu", mmap=True)])
        return "+".join(digests[c] for c in ckpts)

    jobs = []  # (benchmark, problems, model, seed, the PS's SOAR seed or None, checkpoints, weights tag)
    for bench, (pool, problems) in test_sets(cfg).items():
        for seed in rc.seeds:
            ps = promoted[pairs[seed]]
            jobs += [(bench, problems, BASE, seed, None, [None], ""),
                     (bench, problems, PS, seed, pairs[seed], [None], ps.digest)]
            for m in rc.methods:
                where = paths.retrain_run(pool, m, seed)
                done = data.read_json(paths.stage_dir("retrain", where) / "metrics.json")
                ckpts = [checkpoint_file(paths.run_checkpoint("retrain", where), s) for s in done["eval_checkpoints"]]
                jobs.append((bench, problems, m, seed, None, ckpts, weights_of(ckpts)))
    # one PS model in memory at a time (paper size: a student each), so the PS jobs go last, grouped
    # by SOAR seed; a PS of no promotion is the base student itself. Each job is seeded: order-free.
    held: dict[int, object] = {}

    def policy_of(soar_seed):
        if soar_seed is None or promoted[soar_seed].promotions == 0:
            return student
        if soar_seed not in held:
            held.clear()  # the previous PS goes before the next one loads
            held[soar_seed] = promoted_policy(cfg, promoted[soar_seed])
        return held[soar_seed]

    results = {}
    order = sorted(range(len(jobs)), key=lambda j: (jobs[j][4] is not None, jobs[j][4] or 0, j))
    for j in tqdm(order, desc="evaluate"):
        bench, problems, model, seed, soar_seed, ckpts, tag = jobs[j]
        path = paths.eval_samples(bench, model, seed)
        fp = run_fingerprint({"settings": settings, "model": model, "tag": tag,
                              "checkpoints": [c and c.name for c in ckpts]}, seed, problems, stage="evaluate")
        if path.exists() and (old := data.read_jsonl(path)) and old[0].get("fingerprint") == fp:
            results[j] = old
            continue
        policy = policy_of(soar_seed)
        records, start = [], time.perf_counter()
        for ckpt in ckpts:
            policy.reset(seed=0)  # the base (LoRA B = 0), or the promoted base for PS
            if ckpt is not None:
                policy.load_state(torch.load(ckpt))
            ev = evaluate_student(policy.model, policy.tokenizer, problems, n_samples=ec.n_samples, grader=grader,
                                  max_new_tokens=ec.max_new_tokens, temperature=ec.temperature,
                                  top_p=cfg.generation.top_p, seed=seed_from(cfg.seed, 9, seed),
                                  batch_size=cfg.generation.batch_size, backend=cfg.generation.backend, progress=False)
            step = None if ckpt is None else int(ckpt.stem.removeprefix("step_"))
            records += [dict(r, checkpoint=step, fingerprint=fp) for r in ev.records()]
        wall_s = time.perf_counter() - start  # the whole job's, on each of its records
        records = [dict(r, wall_s=wall_s) for r in records]
        data.write_jsonl(path, records)
        results[j] = records
    for j, (bench, _, model, seed, *_) in enumerate(jobs):  # in table order, whatever order they ran in
        out.setdefault(bench, {}).setdefault(model, {})[seed] = results[j]
    return out


@dataclass
class PromotedStudent:
    """The PS row's model: the base model with the first `promotions` promotions of the grounded
    SOAR run of `soar_seed` merged in (`promoted_policy` builds it); d_train_scores: the greedy score
    on D_train of each promoted student (after promotion 1, 2, ...), which chose it; digest: its
    weights' hash (the merged promotions), which keys its evaluation."""

    soar_seed: int
    promotions: int
    d_train_scores: list[float]
    digest: str


def best_promotion(scores: Sequence[float]) -> int:
    """How many promotions the PS holds: the promoted student (1-based) with the best greedy
    score on D_train; on ties the later one (the more taught); 0 when nothing was promoted."""
    return max(range(len(scores)), key=lambda j: (scores[j], j)) + 1 if scores else 0


def promoted_students(cfg, *, grader=None) -> dict[int, PromotedStudent]:
    """{SOAR seed: its grounded run's Promoted Student} for every SOAR seed the fresh students are
    paired with (`soar_seeds`)."""
    return {s: promoted_student(cfg, s, grader=grader) for s in sorted(set(soar_seeds(cfg).values()))}


def promoted_student(cfg, soar_seed: int, *, grader=None) -> PromotedStudent:
    """The Promoted Student (PS; PAPER.md): of the students the grounded SOAR run of `soar_seed` promoted, the
    one with the best greedy accuracy on D_train (soar.teacher.q_r_score on the whole of D_train,
    so the profile's soar.reward_metric), as it is: it never trains on real hard problems. The
    promoted student after promotion j is the base with promotions 1..j merged in. The base model
    when the run never promoted."""
    from soar.teacher import q_r_score, reward_pool

    grader = grader or worlds.of(cfg).grader(cfg.grading)
    promotions, d_train, scores = _promotions(soar_seed), reward_pool(cfg), []
    if promotions:
        policy = load_policy(cfg.model, cfg.student)
        for p in promotions:  # each promoted student in turn: merge the next promotion, score it
            policy.merge(p["state"])
            scores.append(q_r_score(policy.model, policy.tokenizer, d_train, cfg, grader=grader))
        del policy  # evaluate_all builds the chosen one when its turn comes (one student in memory)
    best = best_promotion(scores)
    return PromotedStudent(soar_seed, best, scores, weights_digest([p["state"] for p in promotions[:best]]))


def promoted_policy(cfg, ps: PromotedStudent):
    """The PS's model: a fresh base student with the PS's promotions merged in."""
    policy = load_policy(cfg.model, cfg.student)
    for p in _promotions(ps.soar_seed)[: ps.promotions]:
        policy.merge(p["state"])
    return policy


def _promotions(soar_seed: int) -> list[dict]:
    # the state also holds the teacher and its optimizer (paper size: tens of GB): mmap, read only
    # the promotions
    return torch.load(soar_files("grounded", soar_seed)[1], map_location="cpu", mmap=True,
                      weights_only=False).promotions
