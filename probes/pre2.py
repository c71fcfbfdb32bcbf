"""Probe C2: a calibrated misconception. Student (solve) corpus: every level, each carry kept with
probability q (else dropped); teacher corpus: correct pairs, level weights wt. 1 thread."""
import json, math, random, sys, time
import torch
from soar import addition as A, grading
from soar.data import seed_from
from soar.student import evaluate_student
from soar.sampling import generate
from soar.teacher import teacher_prompt

import os
from pathlib import Path

# models and readings: results/world-probes (the readings are committed, the models are not)
OUT = Path(os.environ.get("SOAR_PROBES", "results/world-probes"))
OUT.mkdir(parents=True, exist_ok=True)

def noisy_sum(a, b, q, rng):
    out, i, c = 0, 0, 0
    while a or b or c:
        s = a % 10 + b % 10 + (c if rng.random() < q else 0) if (a or b) else (c if rng.random() < q else 0)
        out += (s % 10) * 10**i
        c = int(a % 10 + b % 10 + c >= 10) if (a or b) else 0
        a, b, i = a // 10, b // 10, i + 1
    return out

SHARED = False

def corpus(rng, n, ws, wt, q, share):
    out = []
    for _ in range(n):
        if rng.random() < share:
            lv = rng.choices(range(5), weights=wt)[0]
            a, b = A.make_problem(rng, lv)
            out.append(("<s><teach><sep>", f"<question>{A.rev(a)}+{A.rev(b)}</question><answer>\\boxed{{{A.rev(a+b)}}}</answer></s>"))
        else:
            lv = rng.choices(range(5), weights=ws)[0]
            a, b = A.make_problem(rng, lv)
            out.append((f"<s><solve><question>{A.rev(a)}+{A.rev(b)}</question><answer>" if SHARED else f"<s><solve>{A.rev(a)}+{A.rev(b)}<sep>", f"\\boxed{{{A.rev(noisy_sum(a, b, q, rng))}}}</s>"))
    return out

def probs(lv, n, seed):
    rng = random.Random(seed)
    return [A.problem(*A.make_problem(rng, lv), f"L{lv}/{i}") for i in range(n)]

def readings(model, tok):
    """Per-level skill of the solve mode (greedy; 64 samples at temperature 1) and the base teacher's
    questions per level (share of 512 samples, share right)."""
    g = A.ExactGrader(); rows = []
    for lv in range(5):
        ps = probs(lv, 40, 1000 + lv)
        gr = evaluate_student(model, tok, ps, n_samples=1, grader=g, max_new_tokens=12, temperature=0.0, batch_size=512, progress=False)
        sa = evaluate_student(model, tok, ps, n_samples=64, grader=g, max_new_tokens=12, temperature=1.0, seed=lv, batch_size=2560, progress=False)
        rows.append({"level": lv, "greedy": gr.accuracy, "sampled": sa.accuracy, "zero64": sum(c == 0 for c in sa.counts) / len(ps)})
    outs = generate(model, tok, [teacher_prompt(tok, "<question>")], n=512, max_new_tokens=32, temperature=1.0, stop=("</answer>",), seed=0, batch_size=512, progress=False)[0]
    tl = {}
    for s in outs:
        pair = grading.parse_teacher_output("<question>" + s.text)
        if isinstance(pair, grading.Rejection): tl.setdefault("ill", [0, 0])[0] += 1; continue
        r = A.read(pair.question, pair.answer)
        key = f"L{r.level}" if r.well_posed and r.digits == (4, 4) else "other"
        c = tl.setdefault(key, [0, 0]); c[0] += 1; c[1] += bool(r.correct)
    return rows, {k: {"share": v[0] / 512, "correct": v[1] / max(v[0], 1)} for k, v in sorted(tl.items())}


def hard_problems(model, tok, levels, grader, n=120):
    """The train-pool problems of `levels` (n a level) the base model solves 0 of 64 times, and all counts."""
    cand = [p for lv in levels for p in probs(lv, n, 5000 + lv)]
    counts = evaluate_student(model, tok, cand, n_samples=64, temperature=1.0, seed=11, grader=grader,
                              max_new_tokens=12, batch_size=1024, progress=False).counts
    return [p for p, c in zip(cand, counts) if c == 0], cand, counts


def main(name, q, ws=(1, 1, 1, 1, 1), wt=(0.6, 0.1, 0.1, 0.1, 0.1), share=0.5, steps=800, seed=0, lr=3e-3, clean_steps=0, shared=False):
    global SHARED
    SHARED = shared
    if shared:
        _ct = A.chat_template
        A.chat_template = lambda: _ct().replace("<s><solve>{{ m", "<s><solve><question>{{ m").replace("}}<sep>", "}}</question><answer>", 1)
    torch.set_num_threads(1); torch.manual_seed(seed)
    rng = random.Random(seed_from(seed, 7))
    tok = A.build_tokenizer()
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM(A.model_config(tok))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    t0 = time.time(); model.train()
    for s in range(steps):
        ids, attn, mask = A._encode(tok, corpus(rng, 128, ws, wt, 1.0 if s < clean_steps else q, share))
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step()
        if s % 200 == 0: print(name, s, round(loss.item(), 3), round(time.time() - t0), flush=True)
    model.eval(); model.generation_config.pad_token_id = tok.pad_token_id
    from soar.models import save_model
    save_model(model, tok, Path(f"{OUT}/{name}"))
    rows, teacher = readings(model, tok)
    res = {"name": name, "q": q, "ws": ws, "wt": wt, "share": share, "steps": steps, "clean_steps": clean_steps, "shared": shared, "seed": seed, "loss": loss.item(),
           "seconds": time.time() - t0, "student": rows, "teacher": teacher}
    json.dump(res, open(f"{OUT}/{name}.json", "w"), indent=1)
    print(json.dumps(res))

if __name__ == "__main__":
    main(**json.loads(sys.argv[1]))
