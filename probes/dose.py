"""Gate 4 for C2: grounded reward (greedy gain on Q_R after an 8-step inner loop) vs the dose of
useful questions in a 16-question dataset (rest level 0), >= 4 students per dose."""
import json, random, sys, time
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from soar import addition as A, config
from soar.data import seed_from
from soar.student import evaluate_student, train_student
from soar.policy import Policy
import os
from pathlib import Path

# models and readings: results/world-probes (the readings are committed, the models are not)
OUT = Path(os.environ.get("SOAR_PROBES", "results/world-probes"))
OUT.mkdir(parents=True, exist_ok=True)

sys.path.insert(0, str(Path(__file__).parent))
from pre2 import hard_problems, probs

def run(name, useful=1, doses=(0, 2, 4, 8), students=4, hard_levels=(3, 4), tag=""):
    torch.set_num_threads(1)
    cfg = config.load("params.yaml")
    md = f"{OUT}/{name}"
    tok = AutoTokenizer.from_pretrained(md)
    g = A.ExactGrader()
    kw = dict(grader=g, max_new_tokens=12, batch_size=1024, progress=False)
    base = LlamaForCausalLM.from_pretrained(md)
    q_r = hard_problems(base, tok, hard_levels, g)[0][:128]
    base_score = evaluate_student(base, tok, q_r, n_samples=1, temperature=0.0, **kw).accuracy
    pool_u, pool_e = probs(useful, 400, 8000 + useful), probs(0, 400, 8000)
    out = {"name": name, "useful": useful, "q_r": len(q_r), "base": base_score, "rows": []}
    for d in doses:
        for k in range(students):
            rng = random.Random(seed_from(d, k, 9))
            X = rng.sample(pool_u, d) + rng.sample(pool_e, 16 - d)
            t0 = time.time()
            pol = Policy(LlamaForCausalLM.from_pretrained(md), tok, adapter="full")
            from soar.policy import make_optimizer
            from soar.student import rl_step
            opt, sch = make_optimizer(pol, lr=cfg.student.lr, warmup_steps=cfg.student.warmup_steps, total_steps=cfg.student.steps)
            for step in range(1, cfg.student.steps + 1):
                batch = random.Random(seed_from(d, k, step)).sample(X, cfg.student.questions_per_step)
                rl_step(pol, opt, sch, batch, cfg.student, max_new_tokens=12, samples_per_question=8,
                        seed=seed_from(d, k, 3, step), grader=g, generation=cfg.generation)
            gr = evaluate_student(pol.model, tok, q_r, n_samples=1, temperature=0.0, **kw).accuracy
            sa = evaluate_student(pol.model, tok, q_r, n_samples=8, temperature=1.0, seed=13, **kw).accuracy
            out["rows"].append({"dose": d, "student": k, "reward": gr - base_score, "sampled": sa})
            print(name, "dose", d, k, round(gr - base_score, 4), round(sa, 4), round(time.time() - t0), flush=True)
    json.dump(out, open(f"{OUT}/{name}{tag}_dose.json", "w"), indent=1)

if __name__ == "__main__":
    run(**json.loads(sys.argv[1]))
