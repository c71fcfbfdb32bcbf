"""P7 (docs/world-design.md): the teacher's lr on a cheap proxy. The default outer loop without its
inner loops: each dataset's reward is the share of its pairs that are correct level-2 pairs (read
exactly), optionally plus Gaussian noise (SD: the step's between-dataset SD of the proxy / snr), or
pure noise (snr 0). Everything else is soar.teacher's step 1 and 4: propose_datasets, RLOO across
each group, soar.policy.update of the teacher (AdamW cosine over the steps, the default KL).
    python probes/teacher_lr.py            # the pre-registered grid, then the noisy arms
    python probes/teacher_lr.py explore    # after P7, not pre-registered: more steps or datasets
    python probes/teacher_lr.py questions  # P9: P7's grid with the loss on the questions' tokens only
    python probes/teacher_lr.py budget     # P10: the outer steps and datasets it needs at the grounded SNR
    python probes/teacher_lr.py budget64   # P10's 64x budget (192 x 32), added while P10 ran
Writes results/world-probes/teacher_lr.json (explore: teacher_lr_explore.json; questions:
teacher_lr_questions.json; budget: teacher_lr_budget.json)."""
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from soar import addition, config, rl
from soar.data import seed_from
from soar.policy import load_policy, make_optimizer, update
from soar.teacher import propose_datasets

OUT = Path("results/world-probes/teacher_lr.json")
STONE = 2  # the level of gate 2's stepping stone


def question_only(sample, end_id: int):
    """P9: the sample cut after its `</question>` token, so the loss sees the question's tokens only."""
    ids = sample.completion_ids
    return dataclasses.replace(sample, completion_ids=ids[: ids.index(end_id) + 1] if end_id in ids else ids)


def run(lr: float, seed: int, snr: float | None, soar: dict | None = None, questions: bool = False) -> dict:
    """One proxy run; snr None: the proxy alone; 0: pure noise; else proxy + noise. soar: overrides
    of the soar section (outer_steps, groups_per_step) for the exploration after P7. questions: P9."""
    cfg = config.load("params.yaml", {"soar": soar or {}})
    sc, tc = cfg.soar, cfg.teacher
    teacher = load_policy(cfg.model, tc)
    optimizer, scheduler = make_optimizer(teacher, lr=lr, warmup_steps=tc.warmup_steps, total_steps=sc.outer_steps)
    noise = random.Random(seed_from(seed, 77, 0 if snr is None else int(snr * 1000) + 1))
    steps, end = [], teacher.tokenizer.convert_tokens_to_ids("</question>")
    for t in range(sc.outer_steps):
        try:
            datasets, _ = propose_datasets(teacher, sc.group_size * sc.groups_per_step, sc.n, tc, cfg.generation,
                                           seed=seed_from(seed, t, 0), grader=addition.ExactGrader())
        except RuntimeError:  # the teacher no longer writes the format: broken, and nothing more to read
            return {"lr": lr, "seed": seed, "snr": snr, "soar": soar or {}, "questions_only": questions,
                    "collapsed_at": t, "first": None, "last": None, "correct_last": 0.0, "moves": False,
                    "breaks": True, "steps": steps}
        readings = [[addition.read(p.problem, p.answer) for p in X.problems] for X in datasets]
        proxy = [sum(r.level == STONE and bool(r.correct) for r in rs) / len(rs) for rs in readings]
        spread = statistics.pstdev(proxy) or 1e-3
        if snr is None:
            rewards = proxy
        elif snr == 0:
            rewards = [noise.gauss(0, 1) for _ in proxy]
        else:
            rewards = [p + noise.gauss(0, spread / snr) for p in proxy]
        A = rl.rloo_advantages(torch.tensor(rewards).view(sc.groups_per_step, sc.group_size)).flatten()
        pairs = [s for X in datasets for s in X.samples]
        if questions:
            pairs = [question_only(s, end) for s in pairs]
        adv = torch.cat([A[k].repeat(len(X.samples)) for k, X in enumerate(datasets)])
        update(teacher, optimizer, scheduler, pairs, adv, kl_coef=tc.kl_coef, max_grad_norm=tc.max_grad_norm,
               micro_batch=tc.micro_batch)
        flat = [r for rs in readings for r in rs]
        steps.append({"stone_correct": sum(r.level == STONE and bool(r.correct) for r in flat) / len(flat),
                      "correct": sum(bool(r.correct) for r in flat) / len(flat),
                      "levels": [sum(r.level == lv for r in flat) / len(flat) for lv in range(5)]})
    first = statistics.mean(s["stone_correct"] for s in steps[:3])
    last = statistics.mean(s["stone_correct"] for s in steps[-3:])
    correct_last = statistics.mean(s["correct"] for s in steps[-3:])
    return {"lr": lr, "seed": seed, "snr": snr, "soar": soar or {}, "questions_only": questions,
            "first": first, "last": last, "correct_last": correct_last,
            "moves": last >= 2 * first and last >= first + 0.10, "breaks": correct_last < 0.80, "steps": steps}


def _line(r: dict) -> str:
    if r["first"] is None:
        return f"collapsed at step {r['collapsed_at']} (no longer writes the format)"
    return (f"stone {r['first']:.3f} -> {r['last']:.3f}, correct {r['correct_last']:.2f}, moves {r['moves']}, "
            f"breaks {r['breaks']}")


def explore() -> None:
    """After P7's readings (no lr moved the teacher in 12 steps, even on the noise-free proxy): does
    it move with 4x the outer steps, or 4x the datasets a step? The proxy alone, seeds 0 and 1."""
    torch.set_num_threads(2)
    out, path = {"stone": STONE, "runs": []}, OUT.with_name("teacher_lr_explore.json")
    for lr in (5e-5, 1e-4):
        for soar in ({"outer_steps": 48}, {"groups_per_step": 8}):
            for seed in (0, 1):
                start = time.time()
                r = run(lr, seed, None, soar)
                out["runs"].append(r)
                print(f"lr {lr:g} {soar} seed {seed}: {_line(r)} ({time.time() - start:.0f} s)", flush=True)
                path.write_text(json.dumps(out, indent=1))


def budget(budgets=({"outer_steps": 48}, {"outer_steps": 48, "groups_per_step": 8}, {"outer_steps": 192})) -> None:
    """P10 (docs/world-design.md): at the grounded reward's SNR (0.17, P9) and the default lr, does a
    larger outer budget move the teacher, with either loss? Budgets in increasing cost; pure-noise
    controls only where the SNR arm moved in both seeds. Adds to the file's runs."""
    torch.set_num_threads(2)
    path = OUT.with_name("teacher_lr_budget.json")
    out = json.loads(path.read_text()) if path.exists() else {"stone": STONE, "lr": 5e-5, "snr": 0.17, "runs": []}
    for soar in budgets:
        for questions in (False, True):
            for snr in (0.17, 0):
                rows = [r for r in out["runs"] if r["soar"] == soar and r["questions_only"] == questions]
                if snr == 0 and not all(r["moves"] for r in rows):
                    continue  # the control answers only whether a move came from the signal
                for seed in (0, 1):
                    start = time.time()
                    r = run(5e-5, seed, snr, soar, questions=questions)
                    out["runs"].append(r)
                    print(f"{soar} questions-only {questions} snr {snr} seed {seed}: {_line(r)} "
                          f"({time.time() - start:.0f} s)", flush=True)
                    path.write_text(json.dumps(out))  # one line: ~200 steps a run


def main() -> None:
    if sys.argv[1:] == ["explore"]:
        return explore()
    if sys.argv[1:] == ["budget"]:
        return budget()
    if sys.argv[1:] == ["budget64"]:  # P10's 64x budget, added while P10 ran (docs/world-design.md)
        return budget(({"outer_steps": 192, "groups_per_step": 8},))
    questions = sys.argv[1:] == ["questions"]
    path = OUT.with_name("teacher_lr_questions.json") if questions else OUT
    torch.set_num_threads(2)
    lrs, seeds = (5e-5, 1e-4, 3e-4, 1e-3), (0, 1)
    out = {"stone": STONE, "questions_only": questions, "runs": []}

    def go(lr, seed, snr):
        start = time.time()
        r = run(lr, seed, snr, questions=questions)
        out["runs"].append(r)
        print(f"lr {lr:g} seed {seed} snr {snr}: {_line(r)} ({time.time() - start:.0f} s)", flush=True)
        path.write_text(json.dumps(out, indent=1))

    if questions:  # beside P9's arms, P7's (the paper's loss) on the same teacher model
        paper = []
        for lr in lrs:
            for seed in seeds:
                for snr in (None, 0):
                    paper.append(run(lr, seed, snr))
                    print(f"paper loss: lr {lr:g} seed {seed} snr {snr}: {_line(paper[-1])}", flush=True)
        out["paper_loss_runs"] = paper
    for lr in lrs:
        for seed in seeds:
            go(lr, seed, None)
            go(lr, seed, 0)
    ok = [lr for lr in lrs if all(r["moves"] and not r["breaks"] for r in out["runs"] if r["lr"] == lr and r["snr"] is None)
          and not any(r["breaks"] for r in out["runs"] if r["lr"] == lr)
          # P9 adds: with answers out of the loss, pure noise must not move the questions either
          and not (questions and any(r["moves"] for r in out["runs"] if r["lr"] == lr and r["snr"] == 0))]
    out["calibrated_lr"] = ok[0] if ok else None
    print("calibrated lr:", out["calibrated_lr"], flush=True)
    if ok:
        for snr in (1.0, 0.3, 0.17 if questions else 0.1):
            for seed in seeds:
                go(ok[0], seed, snr)
    if questions:  # P9's decision: adopted if it moves in both seeds at the grounded reward's SNR
        out["adopt"] = bool(ok) and all(r["moves"] for r in out["runs"] if r["snr"] == 0.17) \
            and sum(r["snr"] == 0.17 for r in out["runs"]) == len(seeds)
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
