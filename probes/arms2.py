"""Gates 1-2 for C2: Hard-Only fresh student (retrain budget) and stepping-stone arms (inner loop 8+4)."""
import json, random, sys, time, dataclasses
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from soar import addition as A, config
from soar.data import seed_from
from soar.policy import Policy, make_optimizer
from soar.student import evaluate_student, rl_step
import os
from pathlib import Path

# models and readings: results/world-probes (the readings are committed, the models are not)
OUT = Path(os.environ.get("SOAR_PROBES", "results/world-probes"))
OUT.mkdir(parents=True, exist_ok=True)

sys.path.insert(0, str(Path(__file__).parent))
from pre2 import hard_problems, probs

def run(name, hard_levels=(3, 4), arm_levels=(0, 1, 2), rl_seeds=(0, 1), inner_steps=12, fresh_steps=40,
        inner_lr=None, every=4, tag=""):
    torch.set_num_threads(1)
    cfg = config.load("params.yaml")
    inner = dataclasses.replace(cfg.student, lr=inner_lr or cfg.student.lr)
    fresh = dataclasses.replace(cfg.student, warmup_steps=cfg.retrain.warmup_steps)
    md = f"{OUT}/{name}"
    tok = AutoTokenizer.from_pretrained(md)
    g = A.ExactGrader()
    kw = dict(grader=g, max_new_tokens=12, batch_size=1024, progress=False)
    base = LlamaForCausalLM.from_pretrained(md)
    hard, cand, counts = hard_problems(base, tok, hard_levels, g)
    measured, hard_train = hard[::2], hard[1::2]
    out = {"name": name, "candidates": len(cand), "hard": len(hard), "base_sampled": sum(counts) / (64 * len(cand)), "rows": []}
    def measure(model):
        gr = evaluate_student(model, tok, measured, n_samples=1, temperature=0.0, **kw)
        sa = evaluate_student(model, tok, measured, n_samples=32, temperature=1.0, seed=12, **kw)
        return gr.accuracy, sa.accuracy, sum(c > 0 for c in sa.counts) / len(measured)
    b = measure(base); out["base"] = dict(zip(("greedy", "sampled", "pass32"), b))
    print(name, "hard", len(hard), "of", len(cand), "base", b, flush=True)
    arms = {f"L{lv}": (probs(lv, 200, 7000 + lv), inner_steps, inner) for lv in arm_levels}
    if fresh_steps:
        arms["hard_only"] = (hard_train, fresh_steps, fresh)
    for rs in rl_seeds:
        for arm, (qs, steps, st) in arms.items():
            t0 = time.time()
            pol = Policy(LlamaForCausalLM.from_pretrained(md), tok, adapter="full")
            opt, sch = make_optimizer(pol, lr=st.lr, warmup_steps=st.warmup_steps, total_steps=steps)
            rng = random.Random(seed_from(rs, 2))
            rewards = []
            for step in range(1, steps + 1):
                batch = rng.choices(qs, k=8)
                s = rl_step(pol, opt, sch, batch, st, max_new_tokens=12, samples_per_question=8,
                            seed=seed_from(rs, 3, step), grader=g, generation=cfg.generation)
                rewards.append(round(s["student/reward_mean"], 3))
                if (arm != "hard_only" and step % every == 0) or step in (20, 40):
                    m = measure(pol.model)
                    out["rows"].append({"arm": arm, "rl_seed": rs, "step": step, "greedy": m[0], "sampled": m[1], "pass32": m[2]})
                    print(name, arm, rs, step, [round(x, 4) for x in m], round(time.time() - t0), flush=True)
            out["rows"][-1]["rewards"] = rewards
            print(name, arm, rs, "rewards", rewards, flush=True)
    json.dump(out, open(f"{OUT}/{name}{tag}_arms.json", "w"), indent=1)

if __name__ == "__main__":
    run(**json.loads(sys.argv[1]))
